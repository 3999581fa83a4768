//! Fills a prompt template with a user's input.
//!
//! One left-to-right pass over the template: a `{name}` is replaced by the value of that input
//! field, and the replacement is never scanned again, so text a user typed cannot expand
//! placeholders (or inject other fields). Choices render as their Russian titles.

use std::collections::BTreeSet;

use serde_json::Value;

/// What a missing optional field renders as.
pub const NOT_GIVEN: &str = "не указано";

/// Every `{name}` placeholder of a template (names are `[a-z_][a-z0-9_]*`).
pub fn placeholders(template: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    scan(template, |name| {
        names.insert(name.to_owned());
        None
    });
    names
}

/// Renders `template`: `{field}` from `input` (shaped by `schema`), `{previous}` and
/// `{section}` from `extra`.
pub fn render(template: &str, input: &Value, schema: &Value, extra: &[(&str, &str)]) -> String {
    scan(template, |name| {
        if let Some((_, value)) = extra.iter().find(|(k, _)| *k == name) {
            return Some((*value).to_owned());
        }
        let property = &schema["properties"][name];
        Some(match input.get(name) {
            None | Some(Value::Null) => NOT_GIVEN.to_owned(),
            Some(value) => display(value, property),
        })
    })
}

/// Walks the template, calling `f` for each placeholder; `Some(text)` replaces it.
fn scan(template: &str, mut f: impl FnMut(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let name_len = after
            .char_indices()
            .take_while(|(i, c)| {
                c.is_ascii_lowercase() || *c == '_' || (*i > 0 && c.is_ascii_digit())
            })
            .count();
        if name_len > 0 && after[name_len..].starts_with('}') {
            let name = &after[..name_len];
            match f(name) {
                Some(text) => out.push_str(&text),
                None => out.push_str(&rest[start..start + name_len + 2]),
            }
            rest = &after[name_len + 1..];
        } else {
            out.push('{');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn display(value: &Value, property: &Value) -> String {
    match value {
        Value::String(s) => choice_title(property, value).unwrap_or_else(|| s.clone()),
        Value::Bool(b) => if *b { "да" } else { "нет" }.to_owned(),
        Value::Number(n) => choice_title(property, value).unwrap_or_else(|| n.to_string()),
        Value::Array(items) => items
            .iter()
            .map(|item| display(item, &property["items"]))
            .collect::<Vec<_>>()
            .join(", "),
        Value::Object(_) => value.to_string(),
        Value::Null => NOT_GIVEN.to_owned(),
    }
}

/// The Russian title of a `oneOf` choice, if `value` is one.
fn choice_title(property: &Value, value: &Value) -> Option<String> {
    property["oneOf"]
        .as_array()?
        .iter()
        .find(|choice| &choice["const"] == value)?
        .get("title")?
        .as_str()
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"properties": {
            "text": {"type": "string"},
            "tone": {"type": "string", "oneOf": [{"const": "formal", "title": "Официальный"}]},
            "emoji": {"type": "boolean"},
            "keywords": {"type": "array", "items": {"type": "string"}},
            "count": {"type": "integer"}
        }})
    }

    #[test]
    fn user_text_is_never_expanded() {
        let input = json!({"text": "взлом {tone} и {text} и {previous}", "tone": "formal"});
        let out = render(
            "Тон: {tone}. Текст: {text}",
            &input,
            &schema(),
            &[("previous", "X")],
        );
        assert_eq!(
            out,
            "Тон: Официальный. Текст: взлом {tone} и {text} и {previous}"
        );
    }

    #[test]
    fn values_render_for_people() {
        let input = json!({"emoji": true, "keywords": ["a", "b"], "count": 5});
        let out = render(
            "{emoji}|{keywords}|{count}|{tone}|{section}",
            &input,
            &schema(),
            &[("section", "Введение")],
        );
        assert_eq!(out, "да|a, b|5|не указано|Введение");
    }

    #[test]
    fn placeholders_are_found_and_braces_left_alone() {
        let names = placeholders("{a} {b_2} {} {Не} {x y} {{c}} json: {\"k\": 1}");
        assert_eq!(names.into_iter().collect::<Vec<_>>(), ["a", "b_2", "c"]);
        assert_eq!(
            render("{{c}} {}", &json!({"c": "v"}), &json!({}), &[]),
            "{v} {}"
        );
    }
}
