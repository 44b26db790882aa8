//! Plain text and Markdown: decoding (see [`super::decode`]) and cutting
//! the text into sections at its headings.
//!
//! Everything here is linear in the size of the file: pulldown-cmark reads
//! the Markdown once, heading text is collected only up to a bound, and a
//! section's heading path is built once, when the section is kept.

use pulldown_cmark::{Event, HeadingLevel, Options, Parser, Tag, TagEnd};

use super::chunk::{MAX_HEADING_CHARS, clean_line};
use super::decode;
use super::parse::{ParseError, ParseErrorKind, ParsedDocument, Progress, Section};

/// Heading text collected from the Markdown events, in bytes. Enough for
/// [`MAX_HEADING_CHARS`] characters after white space and control
/// characters are dropped, in any script; the rest of a longer heading is
/// never copied.
const MAX_RAW_HEADING_BYTES: usize = 4 * MAX_HEADING_CHARS + 256;

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

/// Plain text: one section without headings, with Unix line ends and no NULs.
pub fn parse_plain(text: &str) -> ParsedDocument {
    ParsedDocument {
        title: None,
        sections: vec![Section { headings: vec![], text: decode::clean_text(text).into_owned() }],
    }
}

/// Markdown: the source is kept as written (links, code and all) and cut at
/// its headings (ATX and setext, outside code blocks), each section knowing
/// the path of headings above it. The first level-1 heading is the title.
///
/// A heading directly followed by another heading has no text of its own;
/// rather than becoming a section that holds nothing but its heading line,
/// it stays at the start of the next section's text (whose path usually
/// contains it anyway). A heading at the very end keeps its own section.
pub fn parse_markdown(source: &str) -> ParsedDocument {
    let source = decode::clean_text(source);
    let source: &str = &source;
    let mut stack: Vec<(HeadingLevel, String)> = Vec::new();
    let mut sections = Vec::new();
    let mut paths = PathBudget::new(source.len());
    // The current section's text starts at `section_start`; its own text,
    // after its heading, at `body_start`.
    let (mut section_start, mut body_start) = (0, 0);
    let mut heading: Option<HeadingText> = None;
    let mut title = None;
    for (event, range) in Parser::new_ext(source, Options::ENABLE_TABLES).into_offset_iter() {
        match event {
            Event::Start(Tag::Heading { level, .. }) => heading = Some(HeadingText::new(level, range.start)),
            Event::Text(t) | Event::Code(t) => {
                if let Some(h) = &mut heading {
                    h.push(&t);
                }
            }
            Event::SoftBreak | Event::HardBreak => {
                if let Some(h) = &mut heading {
                    h.push(" ");
                }
            }
            Event::End(TagEnd::Heading(_)) => {
                let Some(h) = heading.take() else {
                    continue;
                };
                let (level, start, text) = h.finish();
                if !source[body_start..start].trim().is_empty() {
                    paths.push_section(&mut sections, &stack, &source[section_start..start]);
                    section_start = start;
                }
                while stack.last().is_some_and(|(l, _)| *l >= level) {
                    stack.pop();
                }
                if title.is_none() && level == HeadingLevel::H1 && !text.is_empty() {
                    title = Some(text.clone());
                }
                stack.push((level, text));
                body_start = range.end;
            }
            _ => {}
        }
    }
    if !source[section_start..].trim().is_empty() {
        paths.push_section(&mut sections, &stack, &source[section_start..]);
    }
    ParsedDocument { title, sections }
}

/// The text of a heading being read, kept to [`MAX_RAW_HEADING_BYTES`].
struct HeadingText {
    level: HeadingLevel,
    start: usize,
    raw: String,
    cut: bool,
}

impl HeadingText {
    fn new(level: HeadingLevel, start: usize) -> Self {
        Self { level, start, raw: String::new(), cut: false }
    }

    fn push(&mut self, s: &str) {
        if self.cut {
            return;
        }
        let room = MAX_RAW_HEADING_BYTES - self.raw.len();
        if s.len() <= room {
            self.raw.push_str(s);
        } else {
            self.raw.push_str(&s[..s.floor_char_boundary(room)]);
            self.cut = true;
        }
    }

    /// The level, where the heading starts in the source, and its text on
    /// one line, cleaned and cut (with `…`) like every heading.
    fn finish(mut self) -> (HeadingLevel, usize, String) {
        if self.cut {
            self.raw.push('…');
        }
        (self.level, self.start, clean_line(&self.raw, MAX_HEADING_CHARS))
    }
}

/// Keeps the heading paths of the sections a parse produces within a
/// multiple of the source, whatever its shape. Each heading is short by now,
/// but a file of tiny sections under long headings would repeat those
/// headings in every section. Beyond the budget a section's path is only its
/// own heading, which its text contains, so the total stays linear in the
/// source. [`super::chunk::bound`] then applies the stricter, even limit that
/// decides what is stored.
struct PathBudget {
    left: usize,
}

impl PathBudget {
    fn new(source_len: usize) -> Self {
        Self { left: source_len.saturating_mul(2).saturating_add(1 << 20) }
    }

    fn push_section(&mut self, sections: &mut Vec<Section>, stack: &[(HeadingLevel, String)], text: &str) {
        let mut headings = stack.iter().map(|(_, h)| h).filter(|h| !h.is_empty());
        let bytes: usize = headings.clone().map(|h| h.len()).sum();
        let headings: Vec<String> = if bytes <= self.left {
            self.left -= bytes;
            headings.cloned().collect()
        } else {
            headings.next_back().cloned().into_iter().collect()
        };
        sections.push(Section { headings, text: text.to_owned() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(doc: &ParsedDocument) -> Vec<String> {
        doc.sections.iter().map(|s| s.headings.join(" > ")).collect()
    }

    #[test]
    fn markdown_sections_carry_their_heading_path() {
        let doc =
            parse_markdown("intro\n\n# 第一章\n\ntext one\n\n## 1.2 背景\n\nmore [link](x)\n\n# 第二章\n\nlast\n");
        assert_eq!(doc.title.as_deref(), Some("第一章"));
        assert_eq!(paths(&doc), ["", "第一章", "第一章 > 1.2 背景", "第二章"]);
        assert!(doc.sections[2].text.contains("more [link](x)"), "markdown source is kept");
    }

    #[test]
    fn headings_in_code_fences_are_text() {
        let doc =
            parse_markdown("## 快速上手\n\n```shell\n# on linux or macos\n$ pip install x\n```\n\n## 协议\n\nApache\n");
        assert_eq!(paths(&doc), ["快速上手", "协议"]);
        assert!(doc.sections[0].text.contains("# on linux or macos"));
    }

    #[test]
    fn a_heading_without_text_stays_with_the_next_section() {
        let doc = parse_markdown("# Title\n\n## Part\n\nbody\n\n## Empty\n## Last\n");
        assert_eq!(paths(&doc), ["Title > Part", "Title > Last"]);
        assert!(doc.sections[0].text.starts_with("# Title\n\n## Part"));
        assert_eq!(doc.sections[1].text, "## Empty\n## Last\n");
        // Nothing of the source is lost.
        let joined: String = doc.sections.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(
            joined.split_whitespace().collect::<Vec<_>>(),
            "# Title ## Part body ## Empty ## Last".split(' ').collect::<Vec<_>>()
        );
    }

    #[test]
    fn setext_headings_and_inline_code_are_headings() {
        let doc = parse_markdown("Title\n=====\n\ntext\n\nThe `prepare` step\n------------------\n\nmore\n");
        assert_eq!(doc.title.as_deref(), Some("Title"));
        assert_eq!(paths(&doc), ["Title", "Title > The prepare step"]);
    }

    #[test]
    fn plain_text_is_one_section_with_unix_line_ends() {
        let doc = parse_plain("# not a heading\r\nline\0 two\r");
        assert_eq!(doc.sections.len(), 1);
        assert!(doc.sections[0].headings.is_empty());
        assert_eq!(doc.sections[0].text, "# not a heading\nline two\n");
    }

    #[test]
    fn long_headings_are_cut_while_parsing() {
        let source = format!("# {}\n\nbody\n", "题".repeat(200_000));
        let doc = parse_markdown(&source);
        let title = doc.title.unwrap();
        assert_eq!(title.chars().count(), MAX_HEADING_CHARS);
        assert!(title.ends_with('…'));
        assert_eq!(doc.sections[0].headings, [title]);
    }

    #[test]
    fn tiny_sections_under_long_headings_stay_linear() {
        let long = "长".repeat(199);
        let mut source = String::new();
        for level in 1..=5 {
            source.push_str(&format!("{} {long}\n", "#".repeat(level)));
        }
        for _ in 0..100_000 {
            source.push_str("###### a\nb\n");
        }
        let doc = parse_markdown(&source);
        assert_eq!(doc.sections.len(), 100_000);
        let path_bytes: usize = doc.sections.iter().flat_map(|s| &s.headings).map(String::len).sum();
        assert!(path_bytes <= 2 * source.len() + (1 << 20) + source.len(), "{path_bytes}");
        assert!(doc.sections.iter().all(|s| s.headings.last().map(String::as_str) == Some("a")));
    }

    #[test]
    fn markdown_is_parsed_in_linear_time() {
        // A 4 MB line and 4 MB of headings: quadratic work would take minutes.
        for source in ["火星是太阳系的行星".repeat(160_000), "# 标题\n正文。\n".repeat(200_000)] {
            let started = std::time::Instant::now();
            let doc = parse_markdown(&source);
            assert!(!doc.sections.is_empty());
            assert!(started.elapsed() < std::time::Duration::from_secs(60), "{:?}", started.elapsed());
        }
    }
}
