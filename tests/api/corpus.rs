//! The shared corpus of real documents (../shared/corpus/MANIFEST.json)
//! through the import endpoint. This build imports txt and md; the other
//! formats must be refused with 415 until their parsers land.

use std::path::PathBuf;

use serde_json::Value;

use crate::helpers::TestApp;

fn corpus_dir() -> PathBuf {
    std::env::var_os("REPORTD_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus"))
}

fn collapse(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_text_and_markdown_import_with_their_phrases() {
    let dir = corpus_dir();
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("MANIFEST.json"))
            .unwrap_or_else(|e| panic!("the corpus must be at {} (or REPORTD_CORPUS): {e}", dir.display())),
    )
    .unwrap();
    let t = TestApp::spawn(|s| s).await;
    let c = &t.client;
    let token = c.user("corpus").await;
    let mut imported = 0;
    for entry in manifest["files"].as_array().unwrap() {
        let file = entry["file"].as_str().unwrap();
        let format = entry["format"].as_str().unwrap();
        let bytes = std::fs::read(dir.join(file)).unwrap();
        if !matches!(format, "txt" | "md") {
            let r = c.upload(&token, "/Import_Doc/", file, bytes).await;
            assert_eq!(r.status(), 415, "{file} is refused until its format is supported");
            continue;
        }
        let task = c.import(&token, file, bytes).await;
        let done = c.wait_done(&token, &task).await;
        if entry["expect_error"] == true {
            assert_eq!(done["status"], "failed", "{file}: {done}");
            assert!(done["error"].as_str().is_some_and(|e| !e.is_empty()));
            continue;
        }
        assert_eq!(done["status"], "completed", "{file}: {done}");
        let doc = c.json(&token, &format!("/documents/{}?limit=500", done["document_id"].as_str().unwrap())).await;
        let chunks = doc["chunks"].as_array().unwrap();
        assert_eq!(chunks.len() as u64, doc["chunk_count"].as_u64().unwrap(), "{file}: all chunks fetched");
        let contents: Vec<&str> = chunks.iter().map(|c| c["content"].as_str().unwrap()).collect();
        // Chunks are trimmed slices of the text: joined without a separator
        // they lose only whitespace at their edges, joined with one only add it.
        let tight = collapse(&contents.concat());
        let spaced = collapse(&contents.join(" "));
        for phrase in entry["expect_contains"].as_array().unwrap() {
            let phrase = collapse(phrase.as_str().unwrap());
            assert!(tight.contains(&phrase) || spaced.contains(&phrase), "{file}: missing {phrase:?}");
        }
        if let Some(headings) = entry["expect_headings"].as_array() {
            let paths: Vec<&str> = chunks.iter().map(|c| c["heading_path"].as_str().unwrap()).collect();
            for h in headings {
                let h = h.as_str().unwrap();
                assert!(
                    paths.iter().any(|p| p.split(" > ").any(|part| part == h)),
                    "{file}: heading {h:?} in {paths:?}"
                );
            }
        }
        imported += 1;
    }
    assert!(imported >= 6, "the corpus has its txt and md files ({imported})");
}
