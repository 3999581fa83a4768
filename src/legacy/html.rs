//! An article's Markdown as HTML for a WordPress post: rendered with `pulldown-cmark`
//! (tables, strikethrough), then sanitised with `ammonia` to the tags a post may hold.
//!
//! The model's text is untrusted: raw HTML in it is escaped or dropped, links keep only
//! http/https/mailto targets and get `rel="noopener noreferrer nofollow"`. A leading `# Title`
//! is dropped — WordPress prints the post title itself — any other H1 is demoted to H2, so
//! the post has one title, and H5/H6 become H4 (a post's headings are H2–H4).

use std::collections::HashSet;

use pulldown_cmark::{Event, HeadingLevel, Options, Parser, Tag, TagEnd};

/// The tags a post may contain.
const TAGS: &[&str] = &[
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "p",
    "br",
    "hr",
    "ul",
    "ol",
    "li",
    "strong",
    "em",
    "del",
    "a",
    "blockquote",
    "code",
    "pre",
    "table",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
];

/// Renders `markdown` to sanitised post HTML.
pub fn render(markdown: &str) -> String {
    let options = Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH;
    let mut events: Vec<Event<'_>> = Parser::new_ext(markdown, options).collect();
    strip_title(&mut events);
    let events = events.into_iter().map(|event| match event {
        Event::Start(Tag::Heading {
            level,
            id,
            classes,
            attrs,
        }) => Event::Start(Tag::Heading {
            level: post_level(level),
            id,
            classes,
            attrs,
        }),
        Event::End(TagEnd::Heading(level)) => Event::End(TagEnd::Heading(post_level(level))),
        // Raw HTML from the model is shown as text, never interpreted.
        Event::Html(html) | Event::InlineHtml(html) => Event::Text(html),
        other => other,
    });
    let mut html = String::with_capacity(markdown.len() * 5 / 4);
    pulldown_cmark::html::push_html(&mut html, events);
    sanitise(&html)
}

/// A heading's level in a post: H2–H4.
fn post_level(level: HeadingLevel) -> HeadingLevel {
    match level {
        HeadingLevel::H1 => HeadingLevel::H2,
        HeadingLevel::H5 | HeadingLevel::H6 => HeadingLevel::H4,
        other => other,
    }
}

/// Drops a leading H1 (the title) and everything inside it.
fn strip_title(events: &mut Vec<Event<'_>>) {
    if !matches!(
        events.first(),
        Some(Event::Start(Tag::Heading {
            level: HeadingLevel::H1,
            ..
        }))
    ) {
        return;
    }
    let end = events
        .iter()
        .position(|e| matches!(e, Event::End(TagEnd::Heading(HeadingLevel::H1))));
    if let Some(end) = end {
        events.drain(..=end);
    }
}

fn sanitise(html: &str) -> String {
    let tags: HashSet<&str> = TAGS.iter().copied().collect();
    ammonia::Builder::default()
        .tags(tags)
        .generic_attributes(HashSet::new())
        .tag_attributes(
            [("a", ["href"].into_iter().collect::<HashSet<_>>())]
                .into_iter()
                .collect(),
        )
        .url_schemes(["http", "https", "mailto"].into_iter().collect())
        .link_rel(Some("noopener noreferrer nofollow"))
        .clean(html)
        .to_string()
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn headings_paragraphs_lists_and_tables() {
        let html = render(
            "# Заголовок\n\nВведение **жирное**.\n\n## Раздел\n\n- один\n- два\n\n\
             | a | b |\n|---|---|\n| 1 | 2 |\n\n### Подраздел\n\n1. x\n",
        );
        assert!(!html.contains("<h1"), "{html}");
        assert!(!html.contains("Заголовок"), "the title is dropped: {html}");
        assert!(
            html.starts_with("<p>Введение <strong>жирное</strong>.</p>"),
            "{html}"
        );
        for tag in [
            "<h2>Раздел</h2>",
            "<ul>",
            "<li>один</li>",
            "<table>",
            "<td>1</td>",
            "<h3>",
            "<ol>",
        ] {
            assert!(html.contains(tag), "{tag} in {html}");
        }
    }

    #[test]
    fn headings_stay_within_h2_to_h4() {
        let html = render("Вступление\n\n# Второй\n\nтекст\n\n##### Мелкий\n\n###### Совсем");
        assert!(html.contains("<h2>Второй</h2>"), "{html}");
        assert!(html.contains("<h4>Мелкий</h4>"), "{html}");
        assert!(html.contains("<h4>Совсем</h4>"), "{html}");
        for tag in ["<h1", "<h5", "<h6"] {
            assert!(!html.contains(tag), "{tag} in {html}");
        }
    }

    #[test]
    fn scripts_styles_frames_and_documents_never_pass() {
        let html = render(
            "<html><body><script>alert(1)</script><style>p{}</style>\
             <iframe src=\"https://evil\"></iframe></body></html>\n\n\
             Текст <script>alert(2)</script> и <img src=x onerror=alert(3)>\n\n\
             [ссылка](javascript:alert(4)) [хорошая](https://example.com/a?b=1)",
        );
        for bad in [
            "<script",
            "<style",
            "<iframe",
            "<html",
            "<body",
            "<img",
            "href=\"javascript",
        ] {
            assert!(!html.contains(bad), "{bad} in {html}");
        }
        assert!(
            html.contains(
                "<a href=\"https://example.com/a?b=1\" rel=\"noopener noreferrer nofollow\">хорошая</a>"
            ),
            "{html}"
        );
    }

    #[test]
    fn code_and_quotes_are_kept() {
        let html = render("> цитата\n\n```\nlet x = 1;\n```\n\n`код`");
        assert!(html.contains("<blockquote>"), "{html}");
        assert!(
            html.contains("<pre><code>let x = 1;\n</code></pre>"),
            "{html}"
        );
        assert!(html.contains("<code>код</code>"), "{html}");
    }
}
