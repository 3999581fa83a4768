//! What the server writes around a model's text: a title page from the form and a contents
//! list from the headings (so neither is left to a model, nor full of placeholders the form
//! could have filled), word counts for the length check, and the disclaimers a tool's file
//! requires — appended in code, so a fallback model cannot drop them.

use serde_json::Value;

use crate::tools::Tool;
use crate::tools::catalogue::{OutputFormat, TitlePage};

/// Words in a Markdown text: runs of letters or digits, so markup, dashes and list numbers
/// «1.» count as nothing or as one.
pub fn words(text: &str) -> u64 {
    text.split(|c: char| !(c.is_alphanumeric() || c == '-' || c == '\''))
        .filter(|w| w.chars().any(char::is_alphabetic))
        .count() as u64
}

/// A form field's text, if the user gave one.
pub(crate) fn field<'a>(input: &'a Value, name: &str) -> Option<&'a str> {
    input
        .get(name)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// The title page in Markdown, ending with a thematic break (`---`): the export to DOCX
/// replaces everything up to it with a laid-out page of its own. Fields the form left empty
/// stay visible placeholders.
pub fn title_page(page: &TitlePage, input: &Value, year: &str) -> String {
    let mut lines: Vec<String> = Vec::new();
    lines.push(field(input, "university").map_or("[Учебное заведение]".into(), str::to_owned));
    if let Some(faculty) = field(input, "faculty") {
        lines.push(faculty.to_owned());
    }
    lines.push(format!("**{}**", page.kind));
    if let Some(discipline) = field(input, "discipline") {
        lines.push(format!("по дисциплине «{discipline}»"));
    }
    if let Some(topic) = field(input, "topic") {
        lines.push(format!("на тему: «{topic}»"));
    }
    let student = field(input, "student").unwrap_or("[ФИО студента]");
    let group = field(input, "group")
        .map(|g| format!(", группа {g}"))
        .unwrap_or_default();
    lines.push(format!("Выполнил(а): {student}{group}"));
    lines.push(format!(
        "Проверил(а): {}",
        field(input, "teacher").unwrap_or("[ФИО преподавателя]")
    ));
    lines.push(format!(
        "{}, {year}",
        field(input, "city").unwrap_or("[Город]")
    ));
    let mut out = lines.join("\n\n");
    out.push_str("\n\n---\n\n");
    out
}

/// «## Содержание» and a list of the text's second- and third-level headings.
pub fn contents(body: &str) -> String {
    let mut out = String::from("## Содержание\n\n");
    let mut any = false;
    for line in body.lines() {
        let (indent, title) = if let Some(t) = line.strip_prefix("### ") {
            ("  ", t)
        } else if let Some(t) = line.strip_prefix("## ") {
            ("", t)
        } else {
            continue;
        };
        let title = title.trim().trim_matches('#').trim();
        if title.is_empty() || title.eq_ignore_ascii_case("содержание") {
            continue;
        }
        out.push_str(&format!("{indent}- {title}\n"));
        any = true;
    }
    if any { out } else { String::new() }
}

/// The finished document and where its body starts: the title page (with `# topic` unless the
/// body opens with its own title), what `prepend` steps wrote, the contents, the body, then the
/// disclaimers.
pub fn assemble(tool: &Tool, input: &Value, prefix: &[String], body: &str) -> (String, usize) {
    let mut head = String::new();
    let mut body = body;
    if let Some(page) = &tool.title_page {
        let year = &crate::timestamp::now()[..4];
        head.push_str(&title_page(page, input, year));
        // The work's title comes before its contents: the model's own, or the topic.
        let trimmed = body.trim_start();
        if trimmed.starts_with("# ") {
            let (title, rest) = trimmed.split_once('\n').unwrap_or((trimmed, ""));
            head.push_str(&format!("{}\n\n", title.trim_end()));
            body = rest.trim_start();
        } else if let Some(topic) = field(input, "topic") {
            head.push_str(&format!("# {topic}\n\n"));
        }
    }
    for before in prefix {
        head.push_str(before.trim());
        head.push_str("\n\n");
    }
    if tool.contents {
        let contents = contents(body);
        if !contents.is_empty() {
            head.push_str(&contents);
            head.push('\n');
        }
    }
    let body_start = head.len();
    (with_disclaimers(tool, input, head + body), body_start)
}

/// `text` with the tool's disclaimers that apply to `input`, each once.
pub fn with_disclaimers(tool: &Tool, input: &Value, mut text: String) -> String {
    for disclaimer in tool.disclaimers.iter().filter(|d| d.applies(input)) {
        let note = disclaimer.text.trim();
        if text.contains(note) {
            continue;
        }
        let trimmed = text.trim_end().len();
        text.truncate(trimmed);
        match tool.output_format {
            OutputFormat::Markdown => text.push_str(&format!("\n\n---\n\n*{note}*\n")),
            _ => text.push_str(&format!("\n\n{note}")),
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn words_are_counted_without_markup() {
        assert_eq!(words("## Глава 1. Начало\n\n- **Один** — два, три.\n"), 5);
        assert_eq!(words("1.1. Северо-запад и т. д."), 4);
        assert_eq!(words(""), 0);
    }

    #[test]
    fn the_title_page_uses_the_form_and_marks_what_is_missing() {
        let page = TitlePage {
            kind: "РЕФЕРАТ".into(),
        };
        let full = title_page(
            &page,
            &json!({"university": "МГУ", "faculty": "Исторический факультет", "topic": "Реформы",
                    "discipline": "История", "student": "Иванов И. И.", "group": "101",
                    "teacher": "Петров П. П.", "city": "Москва"}),
            "2026",
        );
        for expected in [
            "МГУ",
            "Исторический факультет",
            "**РЕФЕРАТ**",
            "по дисциплине «История»",
            "на тему: «Реформы»",
            "Выполнил(а): Иванов И. И., группа 101",
            "Проверил(а): Петров П. П.",
            "Москва, 2026",
        ] {
            assert!(full.contains(expected), "{expected} in {full}");
        }
        assert!(!full.contains('['), "{full}");
        assert!(full.ends_with("\n\n---\n\n"));
        let empty = title_page(&page, &json!({"topic": "Реформы"}), "2026");
        assert!(empty.contains("[Учебное заведение]") && empty.contains("[ФИО студента]"));
        assert!(empty.contains("[Город], 2026"));
    }

    #[test]
    fn assembly_puts_the_title_before_the_contents_and_the_note_last() {
        let catalogue =
            crate::tools::Catalogue::load(&crate::tools::catalogue::Source::Embedded).unwrap();
        let essay = catalogue.tool("essay_academic").unwrap();
        let input = json!({"topic": "Свобода", "discipline": "Философия"});
        let (text, start) = assemble(
            essay,
            &input,
            &[],
            "# Свобода воли\n\n## Введение\n\nТекст.",
        );
        let order: Vec<usize> = [
            "**ЭССЕ**",
            "# Свобода воли",
            "## Содержание",
            "- Введение",
            "## Введение",
        ]
        .iter()
        .map(|s| text.find(s).unwrap_or_else(|| panic!("{s} in {text}")))
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert_eq!(&text[start..], "## Введение\n\nТекст.");
        assert_eq!(text.matches("# Свобода").count(), 1, "one title: {text}");

        let contract = catalogue.tool("contract_generate").unwrap();
        let (text, start) = assemble(contract, &json!({}), &[], "# ДОГОВОР\n\nТекст.");
        assert_eq!(start, 0);
        assert!(text.ends_with("проверьте его с юристом.*\n"), "{text}");
    }

    #[test]
    fn contents_lists_the_headings_in_order() {
        let body = "## Введение\n\nТекст.\n\n## Глава 1. Истоки\n\n### 1.1. Начало\n\nТекст.\n";
        assert_eq!(
            contents(body),
            "## Содержание\n\n- Введение\n- Глава 1. Истоки\n  - 1.1. Начало\n"
        );
        assert_eq!(contents("Без заголовков."), "");
    }
}
