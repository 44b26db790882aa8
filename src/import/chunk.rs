//! Sections into chunks: the pieces that are stored, searched and cited.
//!
//! PLACEHOLDER (being rewritten): the landed text-splitter version, which is
//! not linear in line length and has no overlap.

use serde::{Deserialize, Serialize};
use text_splitter::{ChunkConfig, TextSplitter};

use super::parse::ParsedDocument;

/// Chunk size and overlap, in characters (`CHUNK_SIZE_CHARS`, `CHUNK_OVERLAP_CHARS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkSettings {
    pub size: usize,
    pub overlap: usize,
}

impl Default for ChunkSettings {
    fn default() -> Self {
        Self { size: 1000, overlap: 100 }
    }
}

/// One chunk of a document, in document order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkText {
    /// The headings above it joined with `" > "` (empty without headings).
    pub heading_path: String,
    pub content: String,
}

/// Bounds what a parser produced before it is chunked and stored: the title
/// and each heading are cut to a bounded length, the heading path to a
/// bounded depth and length, and control characters are removed from them.
pub fn bound(doc: ParsedDocument) -> ParsedDocument {
    doc
}

/// Splits every section into chunks of at most `settings.size` characters.
pub fn chunk(doc: &ParsedDocument, settings: &ChunkSettings) -> Vec<ChunkText> {
    let plain = TextSplitter::new(ChunkConfig::new(settings.size));
    let mut out = Vec::new();
    for section in &doc.sections {
        let heading_path = section.headings.join(" > ");
        out.extend(
            plain
                .chunks(&section.text)
                .filter(|c| !c.trim().is_empty())
                .map(|c| ChunkText { heading_path: heading_path.clone(), content: c.to_owned() }),
        );
    }
    out
}
