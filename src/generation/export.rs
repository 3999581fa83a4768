//! A completed session's text as a file: the Markdown as stored, plain text, or a Word document
//! laid out after ГОСТ 7.32 (Times New Roman 14, 1.5 spacing, margins 30/15/20/20 mm, page
//! numbers, a TOC field for a «Содержание» section), with a title page from the form for the
//! academic tools.
//!
//! Pure: no database, no HTTP. The route in `routes.rs` reads the session and runs
//! [`render`] on the blocking pool (building a DOCX is CPU work).

use docx_rs::{
    AbstractNumbering, AlignmentType, BreakType, Docx, FieldCharType, Footer, Hyperlink,
    HyperlinkType, IndentLevel, InstrText, InstrToC, Level, LevelJc, LevelOverride, LevelText,
    LineSpacing, NumberFormat, Numbering, NumberingId, PageMargin, Paragraph, Run, RunFonts,
    SpecialIndentType, Start, Style, StyleType, Table, TableCell, TableRow, WidthType,
};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use pulldown_cmark::{Event, HeadingLevel, Options, Parser, Tag, TagEnd};
use serde_json::Value;

/// What the client asked the file to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Docx,
    Md,
    Txt,
}

impl Format {
    /// Every value `?format=` takes, in the order the documentation lists them.
    pub const ALL: [Format; 3] = [Format::Docx, Format::Md, Format::Txt];

    pub fn parse(value: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.as_str() == value)
    }

    /// The query value, which is also the file extension.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Docx => "docx",
            Format::Md => "md",
            Format::Txt => "txt",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Docx => {
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
            }
            Format::Md => "text/markdown; charset=utf-8",
            Format::Txt => "text/plain; charset=utf-8",
        }
    }
}

/// The text a session's result carries, if it is text at all: a string (most tools), or an
/// object with `text` (greeting cards, spell check with its edits). A picture's result has no
/// `text` and is not exportable.
pub fn text_of(result: &Value) -> Option<&str> {
    match result {
        Value::String(text) => Some(text),
        Value::Object(fields) => fields.get("text").and_then(Value::as_str),
        _ => None,
    }
}

/// A session's text with what the file is made from.
pub struct Document<'a> {
    pub tool_id: &'a str,
    /// The tool's Russian name, or its id when the tool is gone from the catalogue.
    pub tool_name: &'a str,
    /// The kind of work a title page names («РЕФЕРАТ»), for tools with `title_page`.
    pub title_kind: Option<&'a str>,
    pub markdown: &'a str,
    /// The form the session ran with (title page fields).
    pub input: &'a Value,
    /// The session's `created_at`, RFC 3339 (the title page's year, the file name's date).
    pub created_at: &'a str,
}

/// The file's bytes.
pub fn render(format: Format, document: &Document<'_>) -> anyhow::Result<Vec<u8>> {
    match format {
        Format::Md => Ok(document.markdown.as_bytes().to_vec()),
        Format::Txt => Ok(plain_text(document.markdown).into_bytes()),
        Format::Docx => docx(document),
    }
}

/// RFC 5987 `attr-char`s are left as they are; everything else is percent-encoded.
const ATTR: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The `Content-Disposition` value (RFC 6266): an ASCII `filename` from the tool id for old
/// clients, and `filename*` with the tool's Russian name.
pub fn content_disposition(document: &Document<'_>, format: Format) -> String {
    let date = document.created_at.get(..10).unwrap_or("");
    let ascii: String = document
        .tool_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
        .collect();
    let ext = format.as_str();
    let name = format!("{} {date}.{ext}", document.tool_name);
    format!(
        "attachment; filename=\"{ascii}-{date}.{ext}\"; filename*=UTF-8''{}",
        utf8_percent_encode(&name, ATTR)
    )
}

fn options() -> Options {
    Options::ENABLE_TABLES | Options::ENABLE_TASKLISTS | Options::ENABLE_STRIKETHROUGH
}

/// The Markdown as plain text, no markup left and the structure kept by lines: headings on
/// their own line, blocks apart by a blank line, list items after «— » or their number (nested
/// ones indented), task items after «[x] »/«[ ] », table rows with tab-separated cells, links as
/// «text (url)», code blocks as they are.
pub fn plain_text(markdown: &str) -> String {
    let mut text = Plain::default();
    for event in Parser::new_ext(markdown, options()) {
        text.event(event);
    }
    text.flush();
    let mut out = text.out.trim_end().to_owned();
    out.push('\n');
    out
}

#[derive(Default)]
struct Plain {
    out: String,
    line: String,
    /// A blank line is owed before the next block.
    gap: bool,
    /// Per open list: the next number, or `None` for bullets.
    lists: Vec<Option<u64>>,
    links: Vec<(String, usize)>,
    /// Table cells of the row being read, and the cell being read.
    cells: Vec<String>,
    cell: Option<String>,
    code: bool,
}

impl Plain {
    fn push(&mut self, s: &str) {
        match &mut self.cell {
            Some(cell) => cell.push_str(s),
            None => self.line.push_str(s),
        }
    }

    fn flush(&mut self) {
        if !self.line.trim().is_empty() {
            self.out.push_str(self.line.trim_end());
            self.out.push('\n');
        }
        self.line.clear();
    }

    fn block(&mut self) {
        self.flush();
        if self.gap && !self.out.is_empty() {
            self.out.push('\n');
        }
        self.gap = false;
    }

    fn indent(&self) -> String {
        "  ".repeat(self.lists.len().saturating_sub(1))
    }

    fn event(&mut self, event: Event<'_>) {
        match event {
            Event::Start(tag) => self.start(tag),
            Event::End(tag) => self.end(tag),
            Event::Text(t) if self.code => {
                self.out.push_str(&t);
            }
            Event::Text(t) | Event::Code(t) | Event::InlineHtml(t) | Event::Html(t) => {
                self.push(&t)
            }
            Event::InlineMath(t) | Event::DisplayMath(t) => self.push(&t),
            Event::SoftBreak | Event::HardBreak => {
                if self.cell.is_some() {
                    self.push(" ");
                } else {
                    self.flush();
                    self.line = self.indent();
                    if !self.lists.is_empty() {
                        self.line.push_str("  ");
                    }
                }
            }
            Event::TaskListMarker(done) => {
                self.line = self.indent();
                self.line.push_str(if done { "[x] " } else { "[ ] " });
            }
            Event::Rule => {
                self.block();
                self.gap = true;
            }
            Event::FootnoteReference(t) => self.push(&format!("[{t}]")),
        }
    }

    fn start(&mut self, tag: Tag<'_>) {
        match tag {
            Tag::Paragraph => {
                if self.lists.is_empty() {
                    self.block();
                } else if !self.line.trim().is_empty() && !is_prefix(&self.line) {
                    self.flush();
                    self.line = format!("{}  ", self.indent());
                }
            }
            Tag::Heading { .. } | Tag::BlockQuote(_) | Tag::Table(_) => self.block(),
            Tag::CodeBlock(_) => {
                self.block();
                self.code = true;
            }
            Tag::List(start) => {
                if self.lists.is_empty() {
                    self.block();
                } else {
                    self.flush();
                }
                self.lists.push(start);
            }
            Tag::Item => {
                self.flush();
                let prefix = match self.lists.last_mut() {
                    Some(Some(n)) => {
                        *n += 1;
                        format!("{}. ", *n - 1)
                    }
                    _ => "— ".to_owned(),
                };
                self.line = self.indent() + &prefix;
            }
            Tag::TableCell => self.cell = Some(String::new()),
            Tag::Link { dest_url, .. } => {
                let at = self.line.len();
                self.links.push((dest_url.into_string(), at));
            }
            _ => {}
        }
    }

    fn end(&mut self, tag: TagEnd) {
        match tag {
            TagEnd::Paragraph if self.lists.is_empty() => {
                self.flush();
                self.gap = true;
            }
            TagEnd::Heading(_) | TagEnd::BlockQuote(_) | TagEnd::Table => {
                self.flush();
                self.gap = true;
            }
            TagEnd::CodeBlock => {
                self.code = false;
                if !self.out.ends_with('\n') {
                    self.out.push('\n');
                }
                self.gap = true;
            }
            TagEnd::List(_) => {
                self.flush();
                self.lists.pop();
                if self.lists.is_empty() {
                    self.gap = true;
                }
            }
            TagEnd::Item => self.flush(),
            TagEnd::TableCell => {
                let cell = self.cell.take().unwrap_or_default();
                self.cells.push(cell.trim().to_owned());
            }
            TagEnd::TableHead | TagEnd::TableRow => {
                self.flush();
                self.out.push_str(&self.cells.join("\t"));
                self.out.push('\n');
                self.cells.clear();
            }
            TagEnd::Link => {
                if let Some((url, at)) = self.links.pop() {
                    let shown = match &self.cell {
                        Some(cell) => cell.clone(),
                        None => self.line.get(at..).unwrap_or("").to_owned(),
                    };
                    if !url.is_empty() && !shown.ends_with(url.as_str()) {
                        self.push(&format!(" ({url})"));
                    }
                }
            }
            _ => {}
        }
    }
}

/// A list item's prefix with nothing after it yet.
fn is_prefix(line: &str) -> bool {
    let rest = line.trim();
    rest == "—"
        || rest == "[x]"
        || rest == "[ ]"
        || rest
            .strip_suffix('.')
            .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()))
}

/// For the academic tools, the Markdown without the title block the server wrote at its top
/// (everything up to and including a thematic break within the first 40 lines): the DOCX
/// has its own title page.
pub fn without_title_block(markdown: &str) -> &str {
    let mut offset = 0;
    for line in markdown.split_inclusive('\n').take(40) {
        offset += line.len();
        if is_thematic_break(line) {
            return &markdown[offset..];
        }
    }
    markdown
}

fn is_thematic_break(line: &str) -> bool {
    let marks: String = line.chars().filter(|c| !c.is_whitespace()).collect();
    let indent = line.len() - line.trim_start().len();
    indent < 4
        && marks.len() >= 3
        && ["-", "*", "_"]
            .iter()
            .any(|m| marks.chars().all(|c| c.to_string() == *m))
}

// Page geometry in twentieths of a point (twips): A4, margins 30/15/20/20 mm.
const PAGE_WIDTH: u32 = 11906;
const PAGE_HEIGHT: u32 = 16838;
const MARGIN_LEFT: i32 = 1701;
const MARGIN_RIGHT: i32 = 850;
const MARGIN_VERTICAL: i32 = 1134;
/// The text column's width.
const TEXT_WIDTH: usize = (PAGE_WIDTH as i32 - MARGIN_LEFT - MARGIN_RIGHT) as usize;
/// 1.25 cm.
const FIRST_LINE: i32 = 709;
/// 1.5 lines, in 240ths of a line.
const ONE_AND_HALF: i32 = 360;
const BODY_SIZE: usize = 28;
const FONT: &str = "Times New Roman";
const MONO: &str = "Courier New";
/// The body text's style. docx-rs always writes an empty `Normal` of its own, so the body's
/// layout (justified, first-line indent) lives in a style based on it.
const BODY: &str = "BodyText";
const BULLETS: usize = 2;
const DECIMALS: usize = 3;

fn fonts(name: &str) -> RunFonts {
    RunFonts::new()
        .ascii(name)
        .hi_ansi(name)
        .east_asia(name)
        .cs(name)
}

/// The Word document: styles, numbering, page setup, footer, then the optional title page and
/// the body.
pub fn docx(document: &Document<'_>) -> anyhow::Result<Vec<u8>> {
    let academic = document.title_kind.is_some();
    let markdown = xml_safe(document.markdown);
    let markdown = if academic {
        without_title_block(&markdown)
    } else {
        &markdown
    };
    let mut body = Body {
        contents: contents_entries(markdown),
        ..Body::default()
    };
    for event in Parser::new_ext(markdown, options()) {
        body.event(event);
    }
    body.close_paragraph();
    if body.blocks.is_empty() {
        // Word wants at least one paragraph in a body.
        body.blocks.push(Block::Paragraph(Box::default()));
    }

    let page_number = Paragraph::new().align(AlignmentType::Center).add_run(
        Run::new()
            .add_field_char(FieldCharType::Begin, false)
            .add_instr_text(InstrText::PAGE(docx_rs::InstrPAGE {}))
            .add_field_char(FieldCharType::Separate, false)
            .add_text("1")
            .add_field_char(FieldCharType::End, false),
    );
    let mut doc = Docx::new()
        .page_size(PAGE_WIDTH, PAGE_HEIGHT)
        .page_margin(
            PageMargin::new()
                .left(MARGIN_LEFT)
                .right(MARGIN_RIGHT)
                .top(MARGIN_VERTICAL)
                .bottom(MARGIN_VERTICAL)
                .header(567)
                .footer(567),
        )
        .default_fonts(fonts(FONT))
        .default_size(BODY_SIZE)
        .default_line_spacing(LineSpacing::new().line(ONE_AND_HALF).after(0))
        .footer(Footer::new().add_paragraph(page_number));
    for style in styles() {
        doc = doc.add_style(style);
    }
    doc = doc
        .add_abstract_numbering(levels(BULLETS))
        .add_abstract_numbering(levels(DECIMALS));
    for numbering in body.numberings.drain(..) {
        doc = doc.add_numbering(numbering);
    }
    if academic {
        doc = doc
            .title_pg()
            .first_footer(Footer::new().add_paragraph(Paragraph::new()));
        for paragraph in title_page(document) {
            doc = doc.add_paragraph(paragraph);
        }
    }
    for block in body.blocks {
        doc = match block {
            Block::Paragraph(p) => doc.add_paragraph(*p),
            Block::Table(t) => doc.add_table(*t),
        };
    }
    let title = body
        .title
        .filter(|t| !t.trim().is_empty())
        .unwrap_or_else(|| document.tool_name.to_owned());
    let mut xml = doc.build();
    xml.doc_props.core = core_properties(title.trim(), document.created_at).into_bytes();
    let mut bytes = std::io::Cursor::new(Vec::new());
    xml.pack(&mut bytes)?;
    Ok(bytes.into_inner())
}

/// `docProps/core.xml` written here: docx-rs has no setter for the title, and its default
/// names the creator "unknown". No user data beyond the title goes in.
fn core_properties(title: &str, created_at: &str) -> String {
    let when = xml_escape(created_at);
    format!(
        r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><cp:coreProperties xmlns:cp="http://schemas.openxmlformats.org/package/2006/metadata/core-properties" xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:dcterms="http://purl.org/dc/terms/" xmlns:dcmitype="http://purl.org/dc/dcmitype/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><dc:title>{}</dc:title><dc:creator>Easy Writer</dc:creator><dc:language>ru-RU</dc:language><dcterms:created xsi:type="dcterms:W3CDTF">{when}</dcterms:created><dcterms:modified xsi:type="dcterms:W3CDTF">{when}</dcterms:modified></cp:coreProperties>"#,
        xml_escape(title)
    )
}

/// Whether XML 1.0 can carry `c` at all (a model's output may hold stray control characters,
/// and Word refuses a document with one).
fn xml_char(c: char) -> bool {
    ((c as u32) >= 0x20 || matches!(c, '\t' | '\n' | '\r')) && !matches!(c, '\u{FFFE}' | '\u{FFFF}')
}

fn xml_safe(text: &str) -> String {
    text.chars().filter(|&c| xml_char(c)).collect()
}

fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c if !xml_char(c) => {}
            c => out.push(c),
        }
    }
    out
}

/// Body Text (justified, first-line indent), Heading1–3 (named as Word's built-ins, with outline
/// levels, so the navigation pane lists them), Code, and Table text.
fn styles() -> Vec<Style> {
    let heading = |level: usize, size: usize, align: AlignmentType| {
        Style::new(format!("Heading{level}"), StyleType::Paragraph)
            .name(format!("heading {level}"))
            .based_on("Normal")
            .next(BODY)
            .q_format(true)
            .bold()
            .size(size)
            .fonts(fonts(FONT))
            .align(align)
            .indent(Some(0), Some(SpecialIndentType::FirstLine(0)), None, None)
            .line_spacing(LineSpacing::new().line(ONE_AND_HALF).before(240).after(120))
            .outline_lvl(level - 1)
    };
    let toc = |level: usize, left: i32| {
        Style::new(format!("TOC{level}"), StyleType::Paragraph)
            .name(format!("toc {level}"))
            .based_on(BODY)
            .next(BODY)
            .align(AlignmentType::Left)
            .indent(
                Some(left),
                Some(SpecialIndentType::FirstLine(0)),
                None,
                None,
            )
    };
    vec![
        Style::new(BODY, StyleType::Paragraph)
            .name("Body Text")
            .based_on("Normal")
            .next(BODY)
            .q_format(true)
            .fonts(fonts(FONT))
            .size(BODY_SIZE)
            .align(AlignmentType::Both)
            .indent(
                None,
                Some(SpecialIndentType::FirstLine(FIRST_LINE)),
                None,
                None,
            )
            .line_spacing(LineSpacing::new().line(ONE_AND_HALF).after(0)),
        heading(1, 32, AlignmentType::Center),
        heading(2, 28, AlignmentType::Left),
        heading(3, 28, AlignmentType::Left),
        toc(2, 0),
        toc(3, 357),
        Style::new("Code", StyleType::Paragraph)
            .name("Code")
            .based_on("Normal")
            .fonts(fonts(MONO))
            .size(24)
            .align(AlignmentType::Left)
            .indent(Some(0), Some(SpecialIndentType::FirstLine(0)), None, None)
            .line_spacing(LineSpacing::new().line(240).after(0)),
        Style::new("TableText", StyleType::Paragraph)
            .name("Table Text")
            .based_on("Normal")
            .size(24)
            .align(AlignmentType::Left)
            .indent(Some(0), Some(SpecialIndentType::FirstLine(0)), None, None)
            .line_spacing(LineSpacing::new().line(240).after(0)),
    ]
}

/// Nine levels of bullets or of decimal numbers, each indented 0.63 cm more.
fn levels(id: usize) -> AbstractNumbering {
    let mut numbering = AbstractNumbering::new(id);
    for level in 0..9 {
        let (format, text) = if id == BULLETS {
            ("bullet", ["–", "◦", "▪"][level % 3].to_owned())
        } else {
            ("decimal", format!("%{}.", level + 1))
        };
        let left = FIRST_LINE + 357 * (level as i32 + 1);
        numbering = numbering.add_level(
            Level::new(
                level,
                Start::new(1),
                NumberFormat::new(format),
                LevelText::new(text),
                LevelJc::new("left"),
            )
            .indent(
                Some(left),
                Some(SpecialIndentType::Hanging(357)),
                None,
                None,
            ),
        );
    }
    numbering
}

enum Block {
    Paragraph(Box<Paragraph>),
    Table(Box<Table>),
}

/// Runs the body's Markdown events into Word paragraphs and tables.
#[derive(Default)]
struct Body {
    blocks: Vec<Block>,
    paragraph: Option<Paragraph>,
    /// The first `#` heading's text: the document's title.
    title: Option<String>,
    heading: Option<HeadingLevel>,
    heading_text: String,
    bold: u32,
    italic: u32,
    strike: u32,
    /// The open link's target and its runs so far.
    link: Option<(String, Vec<Run>)>,
    /// Per open list: its `w:num` id and whether it is numbered.
    lists: Vec<(usize, bool)>,
    numberings: Vec<Numbering>,
    quote: i32,
    code: bool,
    table: Option<TableState>,
    /// The headings a «Содержание» section lists (level 2 or 3, text), for its TOC field.
    contents: Vec<(usize, String)>,
    /// The «Содержание» heading has just ended: a list right after it is the contents.
    contents_next: bool,
    /// Depth of the contents list being replaced by the TOC field.
    skipping: usize,
}

#[derive(Default)]
struct TableState {
    rows: Vec<TableRow>,
    cells: Vec<TableCell>,
    head: bool,
    columns: usize,
}

impl Body {
    fn event(&mut self, event: Event<'_>) {
        if self.skipping > 0 {
            match event {
                Event::Start(Tag::List(_)) => self.skipping += 1,
                Event::End(TagEnd::List(_)) => {
                    self.skipping -= 1;
                    if self.skipping == 0 {
                        self.table_of_contents();
                    }
                }
                _ => {}
            }
            return;
        }
        if let Event::Start(tag) = &event {
            if matches!(tag, Tag::List(_)) && self.contents_next && self.lists.is_empty() {
                self.contents_next = false;
                self.skipping = 1;
                return;
            }
            self.contents_next = false;
        }
        match event {
            Event::Start(tag) => self.start(tag),
            Event::End(tag) => self.end(tag),
            Event::Text(text) if self.code => {
                for line in text.lines() {
                    self.close_paragraph();
                    self.blocks.push(Block::Paragraph(Box::new(
                        Paragraph::new()
                            .style("Code")
                            .add_run(Run::new().add_text(line)),
                    )));
                }
            }
            Event::Text(text) | Event::InlineHtml(text) | Event::Html(text) => {
                self.text(&text, false)
            }
            Event::InlineMath(text) | Event::DisplayMath(text) => self.text(&text, false),
            Event::Code(text) => self.text(&text, true),
            Event::SoftBreak => self.text(" ", false),
            Event::HardBreak => self.run(Run::new().add_break(BreakType::TextWrapping)),
            Event::TaskListMarker(done) => self.text(if done { "☒ " } else { "☐ " }, false),
            Event::Rule => {
                self.close_paragraph();
                self.blocks.push(Block::Paragraph(Box::default()));
            }
            Event::FootnoteReference(text) => self.text(&format!("[{text}]"), false),
        }
    }

    fn start(&mut self, tag: Tag<'_>) {
        match tag {
            Tag::Paragraph => {
                // A loose list item's paragraph continues the item's numbered paragraph.
                if self
                    .paragraph
                    .as_ref()
                    .is_some_and(|p| !p.children.is_empty())
                {
                    self.close_paragraph();
                }
                if self.paragraph.is_none() {
                    self.open(self.body_paragraph());
                }
            }
            Tag::Heading { level, .. } => {
                self.close_paragraph();
                let style = match level {
                    HeadingLevel::H1 => "Heading1",
                    HeadingLevel::H2 => "Heading2",
                    _ => "Heading3",
                };
                self.heading = Some(level);
                self.heading_text.clear();
                self.open(Paragraph::new().style(style).keep_next(true));
            }
            Tag::BlockQuote(_) => {
                self.close_paragraph();
                self.quote += 1;
            }
            Tag::CodeBlock(_) => {
                self.close_paragraph();
                self.code = true;
            }
            Tag::List(start) => {
                self.close_paragraph();
                let id = self.numberings.len() + 2;
                let level = self.lists.len();
                let abstract_id = if start.is_some() { DECIMALS } else { BULLETS };
                let first = start.unwrap_or(1).min(u64::from(u32::MAX)) as usize;
                self.numberings.push(
                    Numbering::new(id, abstract_id)
                        .add_override(LevelOverride::new(level).start(first)),
                );
                self.lists.push((id, start.is_some()));
            }
            Tag::Item => {
                self.close_paragraph();
                if let Some(&(id, _)) = self.lists.last() {
                    let level = self.lists.len() - 1;
                    self.open(
                        Paragraph::new()
                            .style(BODY)
                            .numbering(NumberingId::new(id), IndentLevel::new(level)),
                    );
                }
            }
            Tag::Table(alignments) => {
                self.close_paragraph();
                self.table = Some(TableState {
                    columns: alignments.len().max(1),
                    ..TableState::default()
                });
            }
            Tag::TableHead => {
                if let Some(table) = &mut self.table {
                    table.head = true;
                }
            }
            Tag::TableCell => self.open(Paragraph::new().style("TableText")),
            Tag::Emphasis => self.italic += 1,
            Tag::Strong => self.bold += 1,
            Tag::Strikethrough => self.strike += 1,
            Tag::Link { dest_url, .. } => self.link = Some((dest_url.into_string(), Vec::new())),
            _ => {}
        }
    }

    fn end(&mut self, tag: TagEnd) {
        match tag {
            TagEnd::Paragraph | TagEnd::Item => self.close_paragraph(),
            TagEnd::Heading(level) => {
                if level == HeadingLevel::H1 && self.title.is_none() {
                    self.title = Some(self.heading_text.clone());
                }
                self.contents_next = is_contents(&self.heading_text) && !self.contents.is_empty();
                self.heading = None;
                self.close_paragraph();
            }
            TagEnd::BlockQuote(_) => {
                self.close_paragraph();
                self.quote -= 1;
            }
            TagEnd::CodeBlock => self.code = false,
            TagEnd::List(_) => {
                self.close_paragraph();
                self.lists.pop();
            }
            TagEnd::TableCell => {
                let paragraph = self.paragraph.take().unwrap_or_default();
                if let Some(table) = &mut self.table {
                    table.cells.push(
                        TableCell::new()
                            .width(TEXT_WIDTH / table.columns, WidthType::Dxa)
                            .add_paragraph(paragraph),
                    );
                }
            }
            TagEnd::TableHead | TagEnd::TableRow => {
                if let Some(table) = &mut self.table {
                    let mut cells = std::mem::take(&mut table.cells);
                    // A GFM row may have fewer cells than the header; Word wants full rows.
                    while cells.len() < table.columns {
                        cells.push(
                            TableCell::new()
                                .width(TEXT_WIDTH / table.columns, WidthType::Dxa)
                                .add_paragraph(Paragraph::new().style("TableText")),
                        );
                    }
                    table.rows.push(TableRow::new(cells));
                    table.head = false;
                }
            }
            TagEnd::Table => {
                if let Some(table) = self.table.take() {
                    let width = TEXT_WIDTH / table.columns;
                    self.blocks.push(Block::Table(Box::new(
                        Table::new(table.rows)
                            .set_grid(vec![width; table.columns])
                            .width(TEXT_WIDTH, WidthType::Dxa),
                    )));
                    // Word runs two adjacent tables together; a paragraph keeps them apart.
                    self.blocks.push(Block::Paragraph(Box::default()));
                }
            }
            TagEnd::Emphasis => self.italic = self.italic.saturating_sub(1),
            TagEnd::Strong => self.bold = self.bold.saturating_sub(1),
            TagEnd::Strikethrough => self.strike = self.strike.saturating_sub(1),
            TagEnd::Link => {
                if let Some((url, runs)) = self.link.take() {
                    if linkable(&url) {
                        let mut link = Hyperlink::new(url, HyperlinkType::External);
                        for run in runs {
                            link = link.add_run(run.color("0563C1").underline("single"));
                        }
                        self.ensure_paragraph();
                        if let Some(p) = self.paragraph.take() {
                            self.paragraph = Some(p.add_hyperlink(link));
                        }
                    } else {
                        for run in runs {
                            self.run(run);
                        }
                        if !url.is_empty() {
                            self.text(&format!(" ({url})"), false);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// A Word TOC field over headings 2–3 in place of the contents list, its cached entries the
    /// document's own headings (Word fills in page numbers when the field is updated).
    fn table_of_contents(&mut self) {
        let entries = std::mem::take(&mut self.contents);
        let last = entries.len().saturating_sub(1);
        for (i, (level, text)) in entries.into_iter().enumerate() {
            let style = if level <= 2 { "TOC2" } else { "TOC3" };
            let mut paragraph = Paragraph::new().style(style);
            if i == 0 {
                paragraph = paragraph.add_run(
                    Run::new()
                        .add_field_char(FieldCharType::Begin, false)
                        .add_instr_text(InstrText::TOC(
                            InstrToC::new().heading_styles_range(2, 3).hyperlink(),
                        ))
                        .add_field_char(FieldCharType::Separate, false),
                );
            }
            paragraph = paragraph.add_run(Run::new().add_text(text));
            if i == last {
                paragraph = paragraph.add_run(Run::new().add_field_char(FieldCharType::End, false));
            }
            self.blocks.push(Block::Paragraph(Box::new(paragraph)));
        }
    }

    fn body_paragraph(&self) -> Paragraph {
        if self.quote > 0 {
            Paragraph::new()
                .style(BODY)
                .indent(Some(FIRST_LINE * self.quote), None, None, None)
        } else {
            Paragraph::new().style(BODY)
        }
    }

    fn open(&mut self, paragraph: Paragraph) {
        self.close_paragraph();
        self.paragraph = Some(paragraph);
    }

    fn ensure_paragraph(&mut self) {
        if self.paragraph.is_none() {
            self.paragraph = Some(self.body_paragraph());
        }
    }

    fn close_paragraph(&mut self) {
        if let Some(paragraph) = self.paragraph.take() {
            self.blocks.push(Block::Paragraph(Box::new(paragraph)));
        }
    }

    fn text(&mut self, text: &str, code: bool) {
        if self.heading.is_some() {
            self.heading_text.push_str(text);
        }
        let mut run = Run::new().add_text(text);
        if self.bold > 0 || self.table.as_ref().is_some_and(|t| t.head) {
            run = run.bold();
        }
        if self.italic > 0 {
            run = run.italic();
        }
        if self.strike > 0 {
            run = run.strike();
        }
        if code {
            run = run.fonts(fonts(MONO));
        }
        match &mut self.link {
            Some((_, runs)) => runs.push(run),
            None => self.run(run),
        }
    }

    fn run(&mut self, run: Run) {
        self.ensure_paragraph();
        if let Some(p) = self.paragraph.take() {
            self.paragraph = Some(p.add_run(run));
        }
    }
}

fn is_contents(heading: &str) -> bool {
    let heading = heading.trim().to_lowercase();
    heading == "содержание" || heading == "оглавление"
}

/// The level-2 and level-3 headings after a «Содержание» (or «Оглавление») heading, or none
/// when there is no such heading.
fn contents_entries(markdown: &str) -> Vec<(usize, String)> {
    let mut entries = Vec::new();
    let mut seen = false;
    let mut current: Option<(usize, String)> = None;
    for event in Parser::new_ext(markdown, options()) {
        match event {
            Event::Start(Tag::Heading { level, .. }) => {
                current = Some((level as usize, String::new()));
            }
            Event::Text(t) | Event::Code(t) => {
                if let Some((_, text)) = &mut current {
                    text.push_str(&t);
                }
            }
            Event::End(TagEnd::Heading(_)) => {
                if let Some((level, text)) = current.take() {
                    if seen && (2..=3).contains(&level) && !text.trim().is_empty() {
                        entries.push((level, text.trim().to_owned()));
                    } else if is_contents(&text) {
                        seen = true;
                    }
                }
            }
            _ => {}
        }
    }
    entries
}

/// A link target Word accepts as an external relationship: an absolute web or mail address in
/// plain ASCII (Word refuses to open a document with a malformed one).
fn linkable(url: &str) -> bool {
    (url.starts_with("https://") || url.starts_with("http://") || url.starts_with("mailto:"))
        && url
            .chars()
            .all(|c| c.is_ascii_graphic() && !"\"<>\\^`{|}".contains(c))
}

/// A field of the form, trimmed, when it has text, without characters XML cannot hold.
fn field(input: &Value, name: &str) -> Option<String> {
    super::document::field(input, name).map(xml_safe)
}

/// The ГОСТ title page from the form, ending with a page break; missing fields become visible
/// placeholders in brackets.
pub fn title_page(document: &Document<'_>) -> Vec<Paragraph> {
    let input = document.input;
    let centred = |text: &str| {
        Paragraph::new()
            .style(BODY)
            .align(AlignmentType::Center)
            .indent(Some(0), Some(SpecialIndentType::FirstLine(0)), None, None)
            .add_run(Run::new().add_text(text))
    };
    let blank = || Paragraph::new().style(BODY);
    let mut page = vec![centred(
        &field(input, "university").unwrap_or_else(|| "[Учебное заведение]".to_owned()),
    )];
    if let Some(faculty) = field(input, "faculty") {
        page.push(centred(&faculty));
    }
    page.extend((0..8).map(|_| blank()));
    let kind = document.title_kind.unwrap_or_default();
    page.push(
        Paragraph::new()
            .style(BODY)
            .align(AlignmentType::Center)
            .indent(Some(0), Some(SpecialIndentType::FirstLine(0)), None, None)
            .add_run(Run::new().add_text(kind).bold().size(32)),
    );
    if let Some(discipline) = field(input, "discipline") {
        page.push(centred(&format!("по дисциплине «{discipline}»")));
    }
    if let Some(topic) = field(input, "topic") {
        page.push(centred(&format!("на тему: «{topic}»")));
    }
    page.extend((0..6).map(|_| blank()));
    // The city and year sit at the bottom of the page in a frame, whatever the lines above take.
    let year = document.created_at.get(..4).unwrap_or("");
    let city = field(input, "city").unwrap_or_else(|| "[Город]".to_owned());
    page.push(
        centred(&format!("{city}, {year}"))
            .frame_width(TEXT_WIDTH as u32)
            .wrap("around")
            .h_anchor("margin")
            .v_anchor("margin")
            .x_align("center")
            .y_align("bottom"),
    );
    let right = |text: &str| {
        Paragraph::new()
            .style(BODY)
            .align(AlignmentType::Right)
            .indent(Some(0), Some(SpecialIndentType::FirstLine(0)), None, None)
            .add_run(Run::new().add_text(text))
    };
    let mut student = format!(
        "Выполнил(а): {}",
        field(input, "student").unwrap_or_else(|| "[ФИО студента]".to_owned())
    );
    if let Some(group) = field(input, "group") {
        student.push_str(&format!(", группа {group}"));
    }
    page.push(right(&student));
    page.push(
        right(&format!(
            "Проверил(а): {}",
            field(input, "teacher").unwrap_or_else(|| "[ФИО преподавателя]".to_owned())
        ))
        .add_run(Run::new().add_break(BreakType::Page)),
    );
    page
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn document<'a>(tool_id: &'a str, markdown: &'a str, input: &'a Value) -> Document<'a> {
        Document {
            tool_id,
            tool_name: "Реферат",
            title_kind: match tool_id {
                "abstract" => Some("РЕФЕРАТ"),
                "report" => Some("ДОКЛАД"),
                "essay_academic" => Some("ЭССЕ"),
                _ => None,
            },
            markdown,
            input,
            created_at: "2026-03-05T10:00:00Z",
        }
    }

    fn page_text(document: &Document<'_>) -> String {
        title_page(document)
            .iter()
            .map(Paragraph::raw_text)
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn plain_text_drops_markup_and_keeps_structure() {
        let md = "# Заголовок\nТекст с **жирным**, *курсивом* и ~~зачёркнутым~~.\n\n\
                  - один\n- два\n  - вложенный\n\n1. первый\n2. второй\n\n\
                  - [x] сделано\n- [ ] не сделано\n\n\
                  | Понятие | Пример |\n|---|---|\n| А | `б` |\n\n\
                  См. [сайт](https://example.com) и <https://example.org>.\n\n\
                  ```\nlet x = 1;\n  y\n```\n";
        let text = plain_text(md);
        assert_eq!(
            text,
            "Заголовок\n\nТекст с жирным, курсивом и зачёркнутым.\n\n\
             — один\n— два\n  — вложенный\n\n1. первый\n2. второй\n\n\
             [x] сделано\n[ ] не сделано\n\n\
             Понятие\tПример\nА\tб\n\n\
             См. сайт (https://example.com) и https://example.org.\n\n\
             let x = 1;\n  y\n"
        );
        for mark in ["#", "**", "|", "`", "~~"] {
            assert!(!text.contains(mark), "{mark} left in {text}");
        }
    }

    #[test]
    fn ordered_lists_count_from_their_start_and_loose_items_stay_items() {
        let text = plain_text("3. три\n\n4. четыре\n\n   ещё абзац\n");
        assert_eq!(text, "3. три\n4. четыре\n  ещё абзац\n");
    }

    #[test]
    fn the_title_block_is_dropped_only_near_the_top() {
        let md = "**Университет**\nСтудент\n\n---\n\n# Тема\n";
        assert_eq!(without_title_block(md), "\n# Тема\n");
        let late = format!("{}---\nконец\n", "строка\n\n".repeat(30));
        assert_eq!(without_title_block(&late), late);
        assert_eq!(without_title_block("# Тема\nтекст\n"), "# Тема\nтекст\n");
    }

    #[test]
    fn the_title_page_takes_every_field_of_the_form() {
        let input = json!({
            "topic": "Реформы Петра I", "discipline": "История",
            "university": "МГУ имени М. В. Ломоносова", "faculty": "Исторический факультет",
            "student": "Иванов И. И.", "group": "101", "teacher": "Петров П. П.", "city": "Москва"
        });
        let text = page_text(&document("abstract", "", &input));
        for expected in [
            "МГУ имени М. В. Ломоносова",
            "Исторический факультет",
            "РЕФЕРАТ",
            "по дисциплине «История»",
            "на тему: «Реформы Петра I»",
            "Выполнил(а): Иванов И. И., группа 101",
            "Проверил(а): Петров П. П.",
            "Москва, 2026",
        ] {
            assert!(text.contains(expected), "{expected} missing in {text}");
        }
        assert!(!text.contains('['), "no placeholder in {text}");
    }

    #[test]
    fn a_bare_form_gets_placeholders_and_the_kind_follows_the_tool() {
        let input = json!({"topic": "Тема"});
        let text = page_text(&document("report", "", &input));
        for expected in [
            "[Учебное заведение]",
            "ДОКЛАД",
            "[ФИО студента]",
            "[ФИО преподавателя]",
            "[Город], 2026",
        ] {
            assert!(text.contains(expected), "{expected} missing in {text}");
        }
        assert!(!text.contains("группа"));
        assert!(!text.contains("по дисциплине"));
        assert!(page_text(&document("essay_academic", "", &input)).contains("ЭССЕ"));
    }

    #[test]
    fn the_file_name_has_an_ascii_form_and_the_russian_name() {
        let input = json!({});
        let header = content_disposition(&document("abstract", "", &input), Format::Docx);
        assert_eq!(
            header,
            "attachment; filename=\"abstract-2026-03-05.docx\"; \
             filename*=UTF-8''%D0%A0%D0%B5%D1%84%D0%B5%D1%80%D0%B0%D1%82%202026-03-05.docx"
        );
    }

    #[test]
    fn results_are_text_or_an_object_with_text() {
        assert_eq!(text_of(&json!("текст")), Some("текст"));
        assert_eq!(
            text_of(&json!({"text": "открытка", "image_url": "/x"})),
            Some("открытка")
        );
        assert_eq!(text_of(&json!({"image_id": "1", "url": "/x"})), None);
        assert_eq!(text_of(&Value::Null), None);
    }

    #[test]
    fn a_docx_is_a_zip_with_the_document_and_its_title() {
        let input = json!({});
        let md = "# Заголовок & <тест>\n\nТекст [ссылка](https://example.com/a?b=1&c=2) \
                  и [плохая](javascript:alert) [кириллица](https://пример.рф).\n\n\
                  > цитата\n\n| a | b |\n|---|---|\n| 1 |\n\n---\n\n```\ncode\n```\n";
        let bytes = docx(&document("notes", md, &input)).unwrap();
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
        let mut part = |name: &str| {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut archive.by_name(name).unwrap(), &mut text).unwrap();
            text
        };
        let rels = part("word/_rels/document.xml.rels");
        assert!(rels.contains("https://example.com/a?b=1&amp;c=2"), "{rels}");
        assert!(!rels.contains("javascript") && !rels.contains("пример"));
        let xml = part("word/document.xml");
        assert!(xml.contains("<w:hyperlink "));
        assert!(xml.contains(" (javascript:alert)") && xml.contains(" (https://пример.рф)"));
        assert!(xml.contains("Заголовок &amp; "));
        assert!(xml.contains(r#"<w:pStyle w:val="Code" />"#));
        assert!(
            xml.contains(r#"<w:ind w:left="709""#),
            "the quote is indented"
        );
        let core = core_properties("Заголовок & <тест>", "2026-03-05T10:00:00Z");
        assert!(core.contains("<dc:title>Заголовок &amp; &lt;тест&gt;</dc:title>"));
    }

    #[test]
    fn an_academic_docx_replaces_the_title_block_with_its_title_page() {
        let input = json!({"topic": "Тема", "student": "Иванов И. И."});
        let md = "**[Учебное заведение]**\n\nСтудент: [ФИО]\n\n---\n\n# Тема\n\n\
                  ## Содержание\n\n1. Введение\n   1. Часть\n\n## Введение\n\nТекст.\n\n### 1.1. Часть\n";
        let bytes = docx(&document("abstract", md, &input)).unwrap();
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
        let mut xml = String::new();
        std::io::Read::read_to_string(&mut archive.by_name("word/document.xml").unwrap(), &mut xml)
            .unwrap();
        assert!(
            !xml.contains("Студент: [ФИО]"),
            "the server's block is gone"
        );
        assert!(xml.contains("Выполнил(а): Иванов И. И."));
        assert!(xml.contains("<w:titlePg />"));
        let page_break = xml.find(r#"<w:br w:type="page" />"#).unwrap();
        assert!(page_break < xml.find(">Содержание<").unwrap());
        // The contents list became a TOC field whose cached entries are the headings after it.
        assert!(xml.contains(r#"<w:instrText>TOC \o &quot;2-3&quot; \h</w:instrText>"#));
        assert!(xml.contains(r#"<w:pStyle w:val="TOC2" />"#));
        assert!(!xml.contains("<w:numPr>"), "the model's list is gone");
        assert_eq!(
            contents_entries(md),
            [(2, "Введение".to_owned()), (3, "1.1. Часть".to_owned())]
        );
    }

    #[test]
    fn odd_markdown_still_makes_a_document() {
        let input = json!({});
        for md in [
            "",
            "   \n",
            "- # заголовок в пункте\n- ```\n  код в пункте\n  ```\n",
            "> - цитата со списком\n>   1. и вложенным\n>\n> | a |\n> |---|\n> | b |\n",
            "<div>html</div>\n\n<b>inline</b> text\n",
            "| a | b | c |\n|---|:-:|--:|\n| 1 | 2 | 3 | 4 |\n| |\n",
            "[пустая]() ![картинка](x.png) [^1]\n\n[^1]: сноска\n",
            "1. \n2. [ ] задача\n\n***\n___\n",
            "\u{0}\u{1}управляющие\u{b}символы\n",
        ] {
            let bytes = docx(&document("abstract", md, &input)).unwrap();
            assert_eq!(&bytes[..2], b"PK", "{md:?}");
            let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
            let mut xml = String::new();
            std::io::Read::read_to_string(
                &mut archive.by_name("word/document.xml").unwrap(),
                &mut xml,
            )
            .unwrap();
            assert!(
                !xml.chars()
                    .any(|c| (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r')),
                "{md:?}"
            );
            let _ = plain_text(md);
        }
    }
}
