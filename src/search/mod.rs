//! Full-text search over the user's chunks. PLACEHOLDER: being written.

/// The text stored in a chunk's search column: its heading path and content
/// segmented into words, space-joined and lower-cased.
pub fn index_text(heading_path: &str, content: &str) -> String {
    format!("{heading_path} {content}").to_lowercase()
}
