//! Recognising a format by content and name, what every parser produces (a
//! [`ParsedDocument`]: a title and sections, each a heading path and the
//! text under it), and [`parse_document`], which hands bytes to the parser
//! of their format. Parsers run in a child process (see [`super::isolate`]).

use serde::{Deserialize, Serialize};

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
}

/// Why an upload was refused before it became a task (415).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsupported {
    #[error("files of type .{0} are not supported (txt, md, html, docx, pdf)")]
    Extension(String),
    #[error("the file's content is {found}, which does not match its name")]
    Mismatch { found: &'static str },
    #[error("the file is named .{0} but its content is not a {0} file")]
    NotThatFormat(&'static str),
    #[error("the file is not a supported document (its content looks binary)")]
    Binary,
}

fn extension(filename: &str) -> Option<String> {
    let name = filename.rsplit(['/', '\\']).next().unwrap_or(filename);
    // Windows drops trailing dots and spaces from names: `x.txt ` and
    // `x.txt.` are `x.txt` there, and are judged so here.
    let name = name.trim_end_matches([' ', '.']);
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
        // A binary format is recognised by its signature, not by its name
        // alone (an empty file is let through: its task fails as empty).
        (None, Format::Pdf | Format::Docx) if !bytes.is_empty() => {
            return Err(Unsupported::NotThatFormat(by_name.as_str()));
        }
        (_, by_name) => by_name,
    };
    if matches!(format, Format::Txt | Format::Md | Format::Html) && super::decode::looks_binary(bytes) {
        return Err(Unsupported::Binary);
    }
    Ok(format)
}

/// Text under one heading path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    /// Headings from the outermost in, e.g. `["第一章", "1.2 背景"]`.
    pub headings: Vec<String>,
    pub text: String,
}

/// A document reduced to what is stored: a title and sections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParsedDocument {
    pub title: Option<String>,
    pub sections: Vec<Section>,
}

/// What kind of unreadable file a [`ParseError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParseErrorKind {
    /// Nothing in the file (0 bytes, or only whitespace).
    Empty,
    /// The file is readable but holds no text (e.g. a scanned PDF).
    NoText,
    /// The file is encrypted or password-protected.
    Encrypted,
    /// The file is damaged or not what its format says.
    Corrupt,
    /// The file unpacks to more than the import allows (zip or XML bombs).
    TooLarge,
    /// The text could not be decoded.
    Encoding,
}

/// Why a supported file could not be turned into text. `message` is shown
/// to the user as the task's `error`, so it is a full sentence that says
/// which of the kinds above it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    pub kind: ParseErrorKind,
    pub message: String,
}

impl ParseError {
    pub fn new(kind: ParseErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }
}

/// Reports how far a parser has got, as a fraction from 0.0 to 1.0 (by pages
/// or bytes). Calls are cheap; a parser may call it as often as it likes.
pub type Progress<'a> = &'a mut dyn FnMut(f32);

/// Turns the bytes of a file of `format` into a document. CPU-bound and, for
/// some formats, at the mercy of the file: call it in a parse worker
/// ([`super::isolate`]), never on the server's threads.
pub fn parse_document(format: Format, bytes: &[u8], progress: Progress<'_>) -> Result<ParsedDocument, ParseError> {
    match format {
        Format::Txt => super::text::parse(bytes, false, progress),
        Format::Md => super::text::parse(bytes, true, progress),
        Format::Html => super::html::parse(bytes, progress),
        Format::Docx => super::docx::parse(bytes, progress),
        Format::Pdf => super::pdf::parse(bytes, progress),
    }
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
        assert_eq!(sniff("a.pdf", b"%PDF-1.4"), Ok(Format::Pdf));
        assert_eq!(sniff("a.docx", b"PK\x03\x04rest"), Ok(Format::Docx));
        assert_eq!(sniff("page.htm", b"<p>x</p>"), Ok(Format::Html));
        assert_eq!(sniff("x.txt ", b"hello"), Ok(Format::Txt), "a trailing space is ignored");
        assert_eq!(sniff("x.md.", b"# hi"), Ok(Format::Md), "a trailing dot is ignored");
        assert_eq!(sniff("x.pdf . ", b"%PDF-1.7"), Ok(Format::Pdf));
        assert!(matches!(sniff("x.exe ", b"MZ"), Err(Unsupported::Extension(_))));
        assert_eq!(sniff("a.pdf", b"just text"), Err(Unsupported::NotThatFormat("pdf")));
        assert_eq!(sniff("a.docx", b"\xd0\xcf\x11\xe0 an old .doc"), Err(Unsupported::NotThatFormat("docx")));
        assert_eq!(sniff("empty.pdf", b""), Ok(Format::Pdf), "an empty file becomes a task that fails as empty");
    }
}
