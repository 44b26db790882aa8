//! Plain text and Markdown: decoding (see [`super::decode`]) and cutting
//! the text into sections at its headings.

use pulldown_cmark::{Event, HeadingLevel, Options, Parser, Tag, TagEnd};

use super::decode;
use super::parse::{ParseError, ParseErrorKind, ParsedDocument, Progress, Section};

/// Decodes `bytes` and parses them as Markdown (`markdown`) or plain text.
pub fn parse(bytes: &[u8], markdown: bool, progress: Progress<'_>) -> Result<ParsedDocument, ParseError> {
    let decoded = decode::decode_text(bytes).map_err(|e| {
        let kind = match e {
            decode::DecodeError::Empty => ParseErrorKind::Empty,
            _ => ParseErrorKind::Encoding,
        };
        ParseError::new(kind, e.to_string())
    })?;
    progress(0.3);
    let doc = if markdown { parse_markdown(&decoded.text) } else { parse_plain(&decoded.text) };
    progress(1.0);
    Ok(doc)
}

/// Plain text: one section without headings.
pub fn parse_plain(text: &str) -> ParsedDocument {
    ParsedDocument { title: None, sections: vec![Section { headings: vec![], text: normalise(text) }] }
}

/// Markdown: the source is kept as written (links, code and all) and cut at
/// its headings, each section knowing the path of headings above it. The
/// first level-1 heading is the title.
pub fn parse_markdown(source: &str) -> ParsedDocument {
    let source = normalise(source);
    let mut stack: Vec<(HeadingLevel, String)> = Vec::new();
    let mut sections = Vec::new();
    let mut section_start = 0;
    let mut section_path: Vec<String> = Vec::new();
    let mut in_heading: Option<(HeadingLevel, usize, String)> = None;
    let mut title = None;
    for (event, range) in Parser::new_ext(&source, Options::ENABLE_TABLES).into_offset_iter() {
        match event {
            Event::Start(Tag::Heading { level, .. }) => in_heading = Some((level, range.start, String::new())),
            Event::Text(t) | Event::Code(t) => {
                if let Some((_, _, text)) = &mut in_heading {
                    text.push_str(&t);
                }
            }
            Event::End(TagEnd::Heading(_)) => {
                let Some((level, start, text)) = in_heading.take() else {
                    continue;
                };
                let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
                push_section(&mut sections, &section_path, &source[section_start..start]);
                while stack.last().is_some_and(|(l, _)| *l >= level) {
                    stack.pop();
                }
                if title.is_none() && level == HeadingLevel::H1 && !text.is_empty() {
                    title = Some(text.clone());
                }
                stack.push((level, text));
                section_path = stack.iter().map(|(_, t)| t.clone()).filter(|t| !t.is_empty()).collect();
                section_start = start;
            }
            _ => {}
        }
    }
    push_section(&mut sections, &section_path, &source[section_start..]);
    ParsedDocument { title, sections }
}

fn push_section(sections: &mut Vec<Section>, path: &[String], text: &str) {
    if !text.trim().is_empty() {
        sections.push(Section { headings: path.to_vec(), text: text.to_owned() });
    }
}

/// Unix line ends, no NULs (PostgreSQL refuses them in TEXT).
fn normalise(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\r', "\n").replace('\0', "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_sections_carry_their_heading_path() {
        let doc =
            parse_markdown("intro\n\n# 第一章\n\ntext one\n\n## 1.2 背景\n\nmore [link](x)\n\n# 第二章\n\nlast\n");
        assert_eq!(doc.title.as_deref(), Some("第一章"));
        let paths: Vec<String> = doc.sections.iter().map(|s| s.headings.join(" > ")).collect();
        assert_eq!(paths, ["", "第一章", "第一章 > 1.2 背景", "第二章"]);
        assert!(doc.sections[2].text.contains("more [link](x)"), "markdown source is kept");
    }
}
