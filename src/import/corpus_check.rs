//! Test support: one parser against the shared corpus of real documents
//! (`../shared/corpus`, or `REPORTD_CORPUS`), as its MANIFEST.json says.
//! The end-to-end corpus test runs every file through the service; this
//! runs one format through its parser alone, for quicker diagnosis.

use super::parse::{ParseError, ParseErrorKind, ParsedDocument, Progress};

/// Checks every corpus file of `format` with `parse`: a file expected to
/// fail fails with the kind the manifest names, any other parses and holds
/// every expected phrase (whitespace runs compared as one space) and every
/// expected heading (`heading_prefix`: a heading need only start with it).
/// Returns how many files were checked.
pub fn check_format(
    format: &str,
    parse: fn(&[u8], Progress<'_>) -> Result<ParsedDocument, ParseError>,
    heading_prefix: bool,
) -> usize {
    let dir = std::env::var_os("REPORTD_CORPUS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus"));
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("MANIFEST.json"))
            .unwrap_or_else(|e| panic!("the corpus must be at {} (or REPORTD_CORPUS): {e}", dir.display())),
    )
    .unwrap();
    let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut failures = Vec::new();
    let mut checked = 0;
    for entry in manifest["files"].as_array().unwrap().iter().filter(|e| e["format"] == format) {
        checked += 1;
        let name = entry["file"].as_str().unwrap();
        let bytes = std::fs::read(dir.join(name)).unwrap();
        let started = std::time::Instant::now();
        let result = parse(&bytes, &mut |_| {});
        // Generous even for a debug build.
        assert!(started.elapsed().as_secs() < 60, "{name} took {:?}", started.elapsed());
        if entry["expect_error"] == true {
            let expected = match entry["error_kind"].as_str() {
                Some("encrypted") => ParseErrorKind::Encrypted,
                Some("empty-file") => ParseErrorKind::Empty,
                Some("no-text-layer") => ParseErrorKind::NoText,
                other => panic!("{name}: unknown error kind {other:?}"),
            };
            match result {
                Err(e) if e.kind == expected => {}
                other => failures.push(format!("{name}: expected {expected:?}, got {other:?}")),
            }
            continue;
        }
        let doc = match result {
            Ok(doc) => doc,
            Err(e) => {
                failures.push(format!("{name}: failed: {e:?}"));
                continue;
            }
        };
        let text = squash(&doc.sections.iter().map(|s| s.text.as_str()).collect::<Vec<_>>().join("\n\n"));
        for phrase in entry["expect_contains"].as_array().unwrap() {
            let phrase = squash(phrase.as_str().unwrap());
            if !text.contains(&phrase) {
                failures.push(format!("{name}: missing {phrase:?}"));
            }
        }
        let headings: Vec<&String> = doc.sections.iter().flat_map(|s| &s.headings).collect();
        for heading in entry["expect_headings"].as_array().into_iter().flatten() {
            let heading = heading.as_str().unwrap();
            if !headings.iter().any(|h| if heading_prefix { h.starts_with(heading) } else { *h == heading }) {
                failures.push(format!("{name}: heading {heading:?} not found"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    checked
}
