//! Search: `GET /documents/search` over the caller's own chunks, with
//! Chinese segmented by jieba and English matched case-insensitively.
//!
//! The documents below are small enough to check by hand which chunk should
//! come first for each query.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{Client, TestApp, corpus_file, corpus_manifest};

const PLANETS: &str = "\
# 行星

## 火星

火星是太阳系的第四颗行星，表面覆盖着氧化铁，因此呈现红色。

## 火星的大气

大气层非常稀薄，主要成分是二氧化碳。

## Jupiter

Jupiter is the largest planet in the Solar System. Its Great Red Spot is a storm larger than Earth.
";

const UNIVERSITIES: &str = "\
# 大学

## 北京大学

北京大学创建于1898年，初名京师大学堂，是中国近代第一所国立综合性大学。

## 清华大学

清华大学坐落于北京西北郊的清华园。

## Programming

The Python programming language emphasizes readability. PYTHON scripts are easy to write.
";

/// Imports `text` as `filename` for `token` and returns the document id.
async fn import(c: &Client, token: &str, filename: &str, text: &str) -> String {
    let task = c.import(token, filename, text.as_bytes().to_vec()).await;
    let done = c.wait_done(token, &task).await;
    assert_eq!(done["status"], "completed", "{done}");
    done["document_id"].as_str().unwrap().to_owned()
}

/// `GET /documents/search` with the given query parameters.
async fn search_raw(c: &Client, token: &str, params: &[(&str, &str)]) -> (StatusCode, Value) {
    let url = reqwest::Url::parse_with_params(&c.url("/documents/search"), params).unwrap();
    let r = c.http.get(url).bearer_auth(token).send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap())
}

/// The items of a successful search for `q`.
async fn search(c: &Client, token: &str, q: &str) -> Vec<Value> {
    search_with(c, token, &[("q", q)]).await
}

async fn search_with(c: &Client, token: &str, params: &[(&str, &str)]) -> Vec<Value> {
    let (status, body) = search_raw(c, token, params).await;
    assert_eq!(status, 200, "{params:?}: {body}");
    body["items"].as_array().unwrap().clone()
}

fn headings(items: &[Value]) -> Vec<&str> {
    items.iter().map(|i| i["heading_path"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn the_right_chunk_comes_first_in_chinese_and_english() {
    let t = TestApp::spawn(|s| s).await;
    let c = &t.client;
    let token = c.user("alice").await;
    let planets = import(c, &token, "planets.md", PLANETS).await;
    let universities = import(c, &token, "universities.md", UNIVERSITIES).await;

    for (q, first) in [
        ("二氧化碳", "行星 > 火星的大气"),
        ("大气层 稀薄", "行星 > 火星的大气"),
        ("氧化铁 红色", "行星 > 火星"),
        ("京师大学堂", "大学 > 北京大学"),
        ("清华园在哪里", "大学 > 清华大学"),
        ("largest planet", "行星 > Jupiter"),
        ("great red spot", "行星 > Jupiter"),
        ("python readability", "大学 > Programming"),
    ] {
        let items = search(c, &token, q).await;
        assert!(!items.is_empty(), "{q}: no result");
        assert_eq!(items[0]["heading_path"], first, "{q}: {:?}", headings(&items));
        let scores: Vec<f64> = items.iter().map(|i| i["score"].as_f64().unwrap()).collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{q}: not ranked: {scores:?}");
        assert!(scores.iter().all(|s| *s > 0.0), "{q}: {scores:?}");
    }

    // Every item has exactly the fields of SPEC §5, from the right document.
    let items = search(c, &token, "木星 Jupiter").await;
    let item = items[0].as_object().unwrap();
    let mut keys: Vec<&str> = item.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["chunk_id", "document_id", "heading_path", "score", "snippet"]);
    assert_eq!(item["document_id"], planets.as_str());
    let doc = c.json(&token, &format!("/documents/{planets}")).await;
    assert!(doc["chunks"].as_array().unwrap().iter().any(|ch| ch["id"] == item["chunk_id"]));

    // Two-character Chinese words match, including inside a longer word
    // (北京 in 北京大学) and in a heading.
    let beijing = search(c, &token, "北京").await;
    assert_eq!(headings(&beijing).len(), 2, "{beijing:?}");
    assert!(beijing.iter().all(|i| i["document_id"] == universities.as_str()));
    assert!(beijing.iter().all(|i| i["snippet"].as_str().unwrap().contains("<mark>北京")), "{beijing:?}");
    let mars = search(c, &token, "火星").await;
    assert_eq!(headings(&mars), ["行星 > 火星", "行星 > 火星的大气"], "{mars:?}");
    let snippet = mars[0]["snippet"].as_str().unwrap();
    assert!(snippet.contains("<mark>火星</mark>是太阳系"), "{snippet}");

    // English ignores case, in the query and in the text, and the snippet
    // marks the text as written.
    for q in ["python", "PYTHON", "PyThOn"] {
        let items = search(c, &token, q).await;
        assert_eq!(headings(&items), ["大学 > Programming"], "{q}");
        let snippet = items[0]["snippet"].as_str().unwrap();
        assert!(snippet.contains("<mark>Python</mark>") && snippet.contains("<mark>PYTHON</mark>"), "{snippet}");
    }
    // A word inside another English word does not match.
    assert!(search(c, &token, "rog").await.is_empty());

    // limit caps the items; any limit from 1 to 100 is accepted.
    assert_eq!(search_with(c, &token, &[("q", "火星"), ("limit", "1")]).await.len(), 1);
    assert_eq!(search_with(c, &token, &[("q", "火星"), ("limit", "100")]).await.len(), 2);

    // A query without a single word finds nothing, without an error.
    assert!(search(c, &token, "？！…").await.is_empty());
}

#[tokio::test]
async fn snippets_are_html_escaped_around_their_marks() {
    let t = TestApp::spawn(|s| s).await;
    let c = &t.client;
    let token = c.user("carol").await;
    import(c, &token, "escape.txt", "A <b>bold</b> claim & Saturn's \"rings\".\n").await;
    let items = search(c, &token, "saturn").await;
    assert_eq!(items.len(), 1);
    assert_eq!(
        items[0]["snippet"],
        "A &lt;b&gt;bold&lt;/b&gt; claim &amp; <mark>Saturn</mark>&#39;s &quot;rings&quot;."
    );
    // Query syntax of the index is plain text to the endpoint.
    for q in ["\"", "saturn*", "NEAR(saturn rings)", "rings:", "(", "NOT saturn", "saturn AND"] {
        let (status, body) = search_raw(c, &token, &[("q", q)]).await;
        assert_eq!(status, 200, "{q}: {body}");
    }
}

#[tokio::test]
async fn users_only_ever_find_their_own_chunks() {
    let t = TestApp::spawn(|s| s).await;
    let c = &t.client;
    let alice = c.user("alice").await;
    let bob = c.user("bob").await;
    let alices = import(c, &alice, "planets.md", PLANETS).await;
    let bobs = import(c, &bob, "bob.txt", "火星车在火星表面行驶。The Mars rover drives on Mars.\n").await;

    let found = search(c, &bob, "火星").await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["document_id"], bobs.as_str());
    assert!(search(c, &bob, "二氧化碳").await.is_empty());
    assert!(search(c, &alice, "rover").await.is_empty());

    // Naming another user's document finds nothing, alone or next to one's own.
    assert!(search_with(c, &bob, &[("q", "火星"), ("document_ids", &alices)]).await.is_empty());
    let mixed = format!("{alices},{bobs}");
    let found = search_with(c, &bob, &[("q", "火星"), ("document_ids", &mixed)]).await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["document_id"], bobs.as_str());
    // An id that exists nowhere is no error either.
    assert!(search_with(c, &bob, &[("q", "火星"), ("document_ids", "no-such-doc")]).await.is_empty());
}

#[tokio::test]
async fn the_document_filter_narrows_and_a_deleted_document_vanishes() {
    let t = TestApp::spawn(|s| s).await;
    let c = &t.client;
    let token = c.user("dave").await;
    let planets = import(c, &token, "planets.md", PLANETS).await;
    let universities = import(c, &token, "universities.md", UNIVERSITIES).await;

    // 大学 is only in the universities, Jupiter only in the planets.
    let both = search(c, &token, "大学 Jupiter").await;
    let docs: std::collections::BTreeSet<&str> = both.iter().map(|i| i["document_id"].as_str().unwrap()).collect();
    assert_eq!(docs.len(), 2, "{both:?}");

    let only = search_with(c, &token, &[("q", "大学 Jupiter"), ("document_ids", &planets)]).await;
    assert!(!only.is_empty());
    assert!(only.iter().all(|i| i["document_id"] == planets.as_str()), "{only:?}");
    let listed = format!(" {universities} , {planets},");
    assert_eq!(search_with(c, &token, &[("q", "大学 Jupiter"), ("document_ids", &listed)]).await.len(), both.len());

    let r = c.http.delete(c.url(&format!("/documents/{universities}"))).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert!(search(c, &token, "北京").await.is_empty());
    assert!(search(c, &token, "python").await.is_empty());
    let left = search(c, &token, "大学 Jupiter").await;
    assert!(!left.is_empty() && left.iter().all(|i| i["document_id"] == planets.as_str()), "{left:?}");
}

#[tokio::test]
async fn bad_parameters_answer_422_json() {
    let t = TestApp::spawn(|s| s).await;
    let c = &t.client;
    let token = c.user("erin").await;
    let long = "火".repeat(201);
    let many: Vec<String> = (0..51).map(|i| format!("d{i}")).collect();
    let many = many.join(",");
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![], "invalid_query"),
        (vec![("q", "")], "invalid_query"),
        (vec![("q", "   ")], "invalid_query"),
        (vec![("q", &long)], "invalid_query"),
        (vec![("q", "mars"), ("limit", "0")], "invalid_query"),
        (vec![("q", "mars"), ("limit", "101")], "invalid_query"),
        (vec![("q", "mars"), ("limit", "-1")], "invalid_query"),
        (vec![("q", "mars"), ("limit", "ten")], "invalid_query"),
        (vec![("q", "mars"), ("document_ids", "ok,bad:id")], "invalid_id"),
        (vec![("q", "mars"), ("document_ids", "a b")], "invalid_id"),
        (vec![("q", "mars"), ("document_ids", ",")], "invalid_query"),
        (vec![("q", "mars"), ("document_ids", &many)], "invalid_query"),
    ];
    for (params, code) in cases {
        let (status, body) = search_raw(c, &token, &params).await;
        assert_eq!(status, 422, "{params:?}: {body}");
        assert_eq!(body["code"], code, "{params:?}: {body}");
        assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()), "{body}");
    }
    // 200 characters is still accepted.
    let (status, _) = search_raw(c, &token, &[("q", &"火".repeat(200))]).await;
    assert_eq!(status, 200);
    // Without a token: 401.
    let r = c.http.get(c.url("/documents/search?q=mars")).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phrases_of_the_real_corpus_find_their_document() {
    let manifest = corpus_manifest();
    let t = TestApp::spawn(|s| s).await;
    let c = &t.client;
    let token = c.user("corpus").await;
    // Every text and Markdown file of the corpus is imported first, so that
    // each phrase competes with all the others' chunks.
    let mut phrases: Vec<(String, String, String)> = Vec::new();
    for entry in manifest["files"].as_array().unwrap() {
        let file = entry["file"].as_str().unwrap();
        if !matches!(entry["format"].as_str(), Some("txt" | "md")) || entry["expect_error"] == true {
            continue;
        }
        let text = corpus_file(file);
        let task = c.import(&token, file, text).await;
        let done = c.wait_done(&token, &task).await;
        assert_eq!(done["status"], "completed", "{file}: {done}");
        let doc = done["document_id"].as_str().unwrap().to_owned();
        for phrase in entry["expect_contains"].as_array().into_iter().flatten() {
            phrases.push((file.to_owned(), doc.clone(), phrase.as_str().unwrap().to_owned()));
        }
    }
    assert!(phrases.len() >= 15, "the corpus has text files with phrases: {}", phrases.len());
    for (file, doc, phrase) in &phrases {
        let items = search_with(c, &token, &[("q", phrase), ("limit", "3")]).await;
        let snippets: Vec<&str> = items.iter().map(|i| i["snippet"].as_str().unwrap()).collect();
        assert!(!items.is_empty(), "{file}: {phrase:?} found nothing");
        assert_eq!(items[0]["document_id"], doc.as_str(), "{file}: {phrase:?} is not first: {snippets:?}");
        assert!(snippets[0].contains("<mark>"), "{file}: {phrase:?}: {snippets:?}");
    }
}
