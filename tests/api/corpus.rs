//! The shared corpus of real documents (../shared/corpus/MANIFEST.json)
//! through the import endpoint: every file imports, every `expect_contains`
//! phrase is found in its chunks and every `expect_headings` entry in its
//! heading paths; the files the manifest expects to fail end `failed` with
//! an error that says why.

use serde_json::Value;

use crate::helpers::{TestApp, corpus_file, corpus_manifest};

fn collapse(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The document's text again: consecutive chunks of one section overlap
/// (each may start with the end of the one before), so the overlap is cut
/// before they are joined.
fn rejoin(chunks: &[Value]) -> (String, String) {
    let mut tight = String::new();
    let mut spaced = String::new();
    let mut previous: Option<(&str, &str)> = None;
    for chunk in chunks {
        let (path, content) = (chunk["heading_path"].as_str().unwrap(), chunk["content"].as_str().unwrap());
        let mut rest = content;
        if let Some((prev_path, prev)) = previous
            && prev_path == path
        {
            let overlap = content
                .char_indices()
                .rev()
                .map(|(i, c)| i + c.len_utf8())
                .find(|&end| prev.ends_with(&content[..end]))
                .unwrap_or(0);
            rest = &content[overlap..];
        }
        tight.push_str(rest);
        spaced.push(' ');
        spaced.push_str(rest);
        previous = Some((path, content));
    }
    (collapse(&tight), collapse(&spaced))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_corpus_file_imports_with_its_phrases_and_headings() {
    let manifest = corpus_manifest();
    let t = TestApp::spawn(|s| s).await;
    let c = &t.client;
    let token = c.user("corpus").await;
    let mut formats = std::collections::BTreeMap::<String, usize>::new();
    for entry in manifest["files"].as_array().unwrap() {
        let file = entry["file"].as_str().unwrap();
        let format = entry["format"].as_str().unwrap();
        let bytes = corpus_file(file);
        let task = c.import(&token, file, bytes).await;
        let done = c.wait_done(&token, &task).await;
        if entry["expect_error"] == true {
            assert_eq!(done["status"], "failed", "{file}: {done}");
            let error = done["error"].as_str().unwrap_or_default().to_lowercase();
            let says = match entry["error_kind"].as_str() {
                Some("encrypted") => "encrypted",
                Some("empty-file") => "empty",
                Some("no-text-layer") => "no text",
                other => panic!("{file}: unknown error kind {other:?}"),
            };
            assert!(error.contains(says), "{file}: the error says {says:?}: {error}");
            continue;
        }
        assert_eq!(done["status"], "completed", "{file}: {done}");
        let doc_id = done["document_id"].as_str().unwrap();
        let mut chunks = Vec::new();
        loop {
            let page = c.json(&token, &format!("/documents/{doc_id}?limit=100&offset={}", chunks.len())).await;
            let items = page["chunks"].as_array().unwrap();
            if items.is_empty() {
                assert_eq!(chunks.len() as u64, page["chunk_count"].as_u64().unwrap(), "{file}: all chunks fetched");
                break;
            }
            chunks.extend(items.iter().cloned());
        }
        let (tight, spaced) = rejoin(&chunks);
        for phrase in entry["expect_contains"].as_array().unwrap() {
            let phrase = collapse(phrase.as_str().unwrap());
            assert!(tight.contains(&phrase) || spaced.contains(&phrase), "{file}: missing {phrase:?}");
        }
        let paths: Vec<&str> = chunks.iter().map(|c| c["heading_path"].as_str().unwrap()).collect();
        for h in entry["expect_headings"].as_array().into_iter().flatten() {
            let h = h.as_str().unwrap();
            // The manifest matches html headings by prefix (Wikipedia puts an
            // edit link after each heading), the others exactly.
            let found = paths
                .iter()
                .any(|p| p.split(" > ").any(|part| if format == "html" { part.starts_with(h) } else { part == h }));
            assert!(found, "{file}: heading {h:?} in {paths:?}");
        }
        *formats.entry(format.to_owned()).or_default() += 1;
    }
    for format in ["txt", "md", "html", "docx", "pdf"] {
        assert!(
            formats.get(format).is_some_and(|n| *n > 0),
            "the corpus has {format} files that imported: {formats:?}"
        );
    }
}
