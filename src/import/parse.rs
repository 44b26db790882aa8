//! Recognising a format by content and name, and turning text into sections
//! (a heading path and the text under it) and sections into chunks.

use pulldown_cmark::{Event, HeadingLevel, Options, Parser, Tag, TagEnd};
use serde::Serialize;
use text_splitter::{ChunkConfig, MarkdownSplitter, TextSplitter};

use crate::db::NewChunk;

/// Largest chunk, in characters.
pub const CHUNK_CHARS: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Txt,
    Md,
    Html,
    Docx,
    Pdf,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Txt => "txt",
            Self::Md => "md",
            Self::Html => "html",
            Self::Docx => "docx",
            Self::Pdf => "pdf",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Txt, Self::Md, Self::Html, Self::Docx, Self::Pdf].into_iter().find(|f| f.as_str() == s)
    }

    /// Formats this build can import.
    pub fn is_importable(self) -> bool {
        matches!(self, Self::Txt | Self::Md)
    }
}

/// Why an upload was refused before it became a task (415).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsupported {
    #[error("files of type .{0} are not supported (txt, md)")]
    Extension(String),
    #[error("the file's content is {found}, which does not match its name")]
    Mismatch { found: &'static str },
    #[error("{0} files cannot be imported yet (txt, md)")]
    NotYet(&'static str),
    #[error("the file is not a supported document (its content looks binary)")]
    Binary,
}

fn extension(filename: &str) -> Option<String> {
    let name = filename.rsplit(['/', '\\']).next().unwrap_or(filename);
    let (stem, ext) = name.rsplit_once('.')?;
    (!stem.is_empty()).then(|| ext.to_ascii_lowercase())
}

/// What the bytes are, whatever the name says.
fn content_kind(bytes: &[u8]) -> Option<Format> {
    let head = &bytes[..bytes.len().min(1024)];
    // The PDF header may follow some junk within the first 1024 bytes.
    if head.starts_with(b"%PDF-") || (head.windows(5).any(|w| w == b"%PDF-") && super::decode::looks_binary(bytes)) {
        return Some(Format::Pdf);
    }
    if head.starts_with(b"PK\x03\x04") {
        return Some(Format::Docx);
    }
    let text = String::from_utf8_lossy(head).trim_start_matches('\u{feff}').trim_start().to_ascii_lowercase();
    if text.starts_with("<!doctype html") || text.starts_with("<html") {
        return Some(Format::Html);
    }
    None
}

/// Decides the format of an upload from its content first, then its name.
pub fn sniff(filename: &str, bytes: &[u8]) -> Result<Format, Unsupported> {
    let by_name = match extension(filename).as_deref() {
        None | Some("txt" | "text") => Format::Txt,
        Some("md" | "markdown") => Format::Md,
        Some("html" | "htm") => Format::Html,
        Some("docx") => Format::Docx,
        Some("pdf") => Format::Pdf,
        Some(other) => return Err(Unsupported::Extension(other.chars().take(16).collect())),
    };
    let format = match (content_kind(bytes), by_name) {
        (Some(Format::Html), Format::Txt | Format::Md | Format::Html) => Format::Html,
        (Some(found), by_name) if found != by_name => {
            return Err(Unsupported::Mismatch { found: found.as_str() });
        }
        (_, by_name) => by_name,
    };
    if matches!(format, Format::Txt | Format::Md) && super::decode::looks_binary(bytes) {
        return Err(Unsupported::Binary);
    }
    if !format.is_importable() {
        return Err(Unsupported::NotYet(format.as_str()));
    }
    Ok(format)
}

/// Text under one heading path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Headings from the outermost in, e.g. `["第一章", "1.2 背景"]`.
    pub headings: Vec<String>,
    pub text: String,
}

/// A document reduced to what is stored: a title and sections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedDocument {
    pub title: Option<String>,
    pub sections: Vec<Section>,
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

/// Splits every section into chunks of at most [`CHUNK_CHARS`] characters,
/// at the most meaningful boundary available (headings, paragraphs,
/// sentences — Chinese ones included — then words).
pub fn chunk(doc: &ParsedDocument, markdown: bool) -> Vec<NewChunk> {
    let config = || ChunkConfig::new(CHUNK_CHARS);
    let md = markdown.then(|| MarkdownSplitter::new(config()));
    let plain = TextSplitter::new(config());
    let mut out = Vec::new();
    for section in &doc.sections {
        let heading_path = section.headings.join(" > ");
        let pieces: Vec<&str> = match &md {
            Some(md) => md.chunks(&section.text).collect(),
            None => plain.chunks(&section.text).collect(),
        };
        out.extend(
            pieces
                .into_iter()
                .filter(|c| !c.trim().is_empty())
                .map(|c| NewChunk { heading_path: heading_path.clone(), content: c.to_owned() }),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing_trusts_content_over_names() {
        assert_eq!(sniff("a.txt", b"hello"), Ok(Format::Txt));
        assert_eq!(sniff("notes", b"hello"), Ok(Format::Txt));
        assert_eq!(sniff("a.MD", b"# x"), Ok(Format::Md));
        assert_eq!(sniff("a.txt", b"%PDF-1.4 ..."), Err(Unsupported::Mismatch { found: "pdf" }));
        assert_eq!(sniff("a.md", b"PK\x03\x04...."), Err(Unsupported::Mismatch { found: "docx" }));
        assert!(matches!(sniff("a.exe", b"MZ"), Err(Unsupported::Extension(_))));
        assert_eq!(sniff("a.txt", b"\x00\x01\x02\x03binary"), Err(Unsupported::Binary));
        assert_eq!(sniff("a.pdf", b"%PDF-1.4"), Err(Unsupported::NotYet("pdf")));
    }

    #[test]
    fn markdown_sections_carry_their_heading_path() {
        let doc =
            parse_markdown("intro\n\n# 第一章\n\ntext one\n\n## 1.2 背景\n\nmore [link](x)\n\n# 第二章\n\nlast\n");
        assert_eq!(doc.title.as_deref(), Some("第一章"));
        let paths: Vec<String> = doc.sections.iter().map(|s| s.headings.join(" > ")).collect();
        assert_eq!(paths, ["", "第一章", "第一章 > 1.2 背景", "第二章"]);
        assert!(doc.sections[2].text.contains("more [link](x)"), "markdown source is kept");
        let chunks = chunk(&doc, true);
        assert_eq!(chunks.len(), 4);
        assert_eq!(chunks[2].heading_path, "第一章 > 1.2 背景");
    }

    #[test]
    fn long_text_is_split_without_losing_characters() {
        let sentence = "这是一个用于测试分块的中文句子。";
        let text = sentence.repeat(300);
        let chunks = chunk(&parse_plain(&text), false);
        assert!(chunks.len() > 1);
        assert!(chunks.iter().all(|c| c.content.chars().count() <= CHUNK_CHARS));
        let joined: String = chunks.iter().map(|c| c.content.as_str()).collect();
        assert_eq!(joined, text);
    }
}
