//! pdf documents. PLACEHOLDER: being written.

use super::parse::{ParseError, ParseErrorKind, ParsedDocument, Progress};

/// Parses a pdf file into sections.
pub fn parse(bytes: &[u8], progress: Progress<'_>) -> Result<ParsedDocument, ParseError> {
    let _ = (bytes, progress);
    Err(ParseError::new(ParseErrorKind::Corrupt, "pdf import is not available yet"))
}
