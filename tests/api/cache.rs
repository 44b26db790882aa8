//! The read cache (issue #7 item 6) on a real Redis: hits after misses,
//! invalidation by imports and deletes (also across instances and across a
//! Redis outage), per-user isolation, single-flight, and the bypasses.
//!
//! The counts are read from each app's own [`ReadCache::stats`]: the
//! Prometheus recorder is shared by every test of this binary, which run in
//! parallel.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reportd::ids::UserId;
use reportd::stores::cache::{CacheStats, CacheView, Lookup, Outcome, ReadCache};
use serde_json::{Value, json};

use crate::helpers::{Client, Settings, TestApp, TestRedis, eventually, sample_text};

fn count(cache: &ReadCache, view: CacheView, outcome: Outcome) -> u64 {
    cache.stats().get(view, outcome)
}

/// What changed in the counts of `view` between two snapshots: (hit, miss, bypass).
fn delta(before: &CacheStats, after: &CacheStats, view: CacheView) -> (u64, u64, u64) {
    let d = |o| after.get(view, o) - before.get(view, o);
    (d(Outcome::Hit), d(Outcome::Miss), d(Outcome::Bypass))
}

async fn body(c: &Client, token: &str, path: &str) -> (u16, Bytes) {
    let r = c.get(token, path).await;
    (r.status().as_u16(), r.bytes().await.unwrap())
}

async fn user_id(c: &Client, token: &str) -> String {
    c.json(token, "/auth/me").await["id"].as_str().unwrap().to_owned()
}

async fn delete(c: &Client, token: &str, doc: &str) -> u16 {
    c.http.delete(c.url(&format!("/documents/{doc}"))).bearer_auth(token).send().await.unwrap().status().as_u16()
}

fn ids(list: &Value) -> Vec<String> {
    list["items"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap().to_owned()).collect()
}

/// Imports the sample text and returns the document id.
async fn import_doc(c: &Client, token: &str) -> String {
    let task = c.imported(token).await;
    c.status(token, &task).await.1["document_id"].as_str().unwrap().to_owned()
}

/// The first read misses and fills; the same read then hits, with the same
/// bytes, for each endpoint; the entry has the key template and the TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_after_a_miss() {
    let redis = TestRedis::start().await;
    let t = TestApp::spawn(|s| s.with_redis(&redis).set("CACHE_TTL_SECONDS", "20")).await;
    let (c, cache) = (&t.client, &t.app.cache);
    let token = c.user("cache-hit").await;
    let user = user_id(c, &token).await;
    let doc = import_doc(c, &token).await;

    for (view, path) in [
        (CacheView::List, "/documents".to_string()),
        (CacheView::Doc, format!("/documents/{doc}")),
        (CacheView::Search, "/documents/search?q=%E7%81%AB%E6%98%9F".to_string()),
    ] {
        let before = cache.stats();
        let (code, first) = body(c, &token, &path).await;
        assert_eq!(code, 200, "{path}");
        assert_eq!(delta(&before, &cache.stats(), view), (0, 1, 0), "{path}: a miss");
        let r = c.get(&token, &path).await;
        assert_eq!(r.headers()["content-type"], "application/json");
        let second = r.bytes().await.unwrap();
        assert_eq!(delta(&before, &cache.stats(), view), (1, 1, 0), "{path}: then a hit");
        assert_eq!(first, second, "a hit answers the same bytes");
        // Equivalent parameters share the entry (defaults applied).
        if view == CacheView::List {
            let (_, third) = body(c, &token, "/documents?limit=20&offset=0").await;
            assert_eq!(third, first);
            assert_eq!(delta(&before, &cache.stats(), view), (2, 1, 0));
        }
    }
    let search: Value = c.json(&token, "/documents/search?q=%E7%81%AB%E6%98%9F").await;
    assert!(!search["items"].as_array().unwrap().is_empty(), "{search}");

    let keys = redis.keys_with_ttl().await;
    let version_key = format!("langextract:test:cache:{user}:v");
    let version_ttl = keys[&version_key];
    assert!(version_ttl > 86_000_000 && version_ttl <= 86_400_000, "version TTL {version_ttl}");
    let mut conn = redis.conn().await;
    let version: String = redis::cmd("GET").arg(&version_key).query_async(&mut conn).await.unwrap();
    let mut seen = Vec::new();
    for (key, ttl) in &keys {
        let Some(rest) = key.strip_prefix(&format!("langextract:test:cache:{user}:{version}:")) else { continue };
        let (what, digest) = rest.split_once(':').unwrap();
        assert_eq!(digest.len(), 64, "{key}");
        assert!(digest.bytes().all(|b| b.is_ascii_hexdigit()), "{key}");
        assert!(*ttl > 0 && *ttl <= 20_000, "{key} has TTL {ttl}");
        seen.push(what.to_owned());
    }
    seen.sort();
    assert_eq!(seen, ["doc", "list", "search"]);

    let metrics = c.http.get(c.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for line in [
        r#"reportd_cache_requests_total{endpoint="list",outcome="hit"}"#,
        r#"reportd_cache_requests_total{endpoint="search",outcome="miss"}"#,
    ] {
        assert!(metrics.contains(line), "{line} in /metrics");
    }
}

/// An import that completes and a delete that is acknowledged are seen by
/// the very next read, on every endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_and_deletes_invalidate() {
    let redis = TestRedis::start().await;
    let t = TestApp::spawn(|s| s.with_redis(&redis)).await;
    let (c, cache) = (&t.client, &t.app.cache);
    let token = c.user("cache-inval").await;
    let first = import_doc(c, &token).await;

    let q = "/documents/search?q=Mars";
    assert_eq!(ids(&c.json(&token, "/documents").await), [first.as_str()]);
    let hits_before: Value = c.json(&token, q).await;
    assert_eq!(c.json(&token, "/documents").await["total"], 1);
    assert!(count(cache, CacheView::List, Outcome::Hit) >= 1, "the list is cached");

    // The poll that says `completed` is followed by a list that has it.
    let second = import_doc(c, &token).await;
    let list = c.json(&token, "/documents").await;
    assert_eq!(list["total"], 2, "{list}");
    assert!(ids(&list).contains(&second));
    let hits_after: Value = c.json(&token, q).await;
    assert!(hits_after["items"].as_array().unwrap().len() > hits_before["items"].as_array().unwrap().len());

    // Cache the document, then delete it: gone from all three at once.
    assert_eq!(body(c, &token, &format!("/documents/{second}")).await.0, 200);
    assert_eq!(body(c, &token, &format!("/documents/{second}")).await.0, 200);
    assert_eq!(delete(c, &token, &second).await, 204);
    assert_eq!(ids(&c.json(&token, "/documents").await), [first.as_str()]);
    assert_eq!(body(c, &token, &format!("/documents/{second}")).await.0, 404);
    let hits: Value = c.json(&token, q).await;
    assert!(hits["items"].as_array().unwrap().iter().all(|h| h["document_id"] != second.as_str()), "{hits}");
    // And a 404 is never cached: a document is found once it exists.
    assert_eq!(body(c, &token, &format!("/documents/{second}")).await.0, 404);
}

/// Two users asking the same thing never share an entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_never_sees_another_users_cached_reads() {
    let redis = TestRedis::start().await;
    let t = TestApp::spawn(|s| s.with_redis(&redis)).await;
    let c = &t.client;
    let alice = c.user("cache-alice").await;
    let bob = c.user("cache-bob").await;
    let doc = import_doc(c, &alice).await;

    let q = "/documents/search?q=Mars&limit=5";
    for _ in 0..2 {
        assert_eq!(c.json(&alice, "/documents?limit=10").await["total"], 1);
        assert!(!c.json(&alice, q).await["items"].as_array().unwrap().is_empty());
        assert_eq!(body(c, &alice, &format!("/documents/{doc}")).await.0, 200);
    }
    let hits = count(&t.app.cache, CacheView::List, Outcome::Hit);
    assert!(hits >= 1, "alice's list is cached");
    for _ in 0..2 {
        assert_eq!(c.json(&bob, "/documents?limit=10").await, json!({"items": [], "total": 0}));
        assert_eq!(c.json(&bob, q).await, json!({"items": []}));
        let (code, not_found) = body(c, &bob, &format!("/documents/{doc}")).await;
        assert_eq!(code, 404);
        let never: Value = serde_json::from_slice(&not_found).unwrap();
        assert_eq!(never["code"], "document_not_found");
    }
}

/// Twenty identical concurrent misses run the query once: through the
/// store with a slow query (counted), and over HTTP (one miss, the rest hits).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_misses_runs_one_query() {
    let redis = TestRedis::start().await;
    let t = TestApp::spawn(|s| s.with_redis(&redis)).await;
    let (c, cache) = (&t.client, t.app.cache.clone());
    let token = c.user("cache-burst").await;
    let user = UserId::parse(&user_id(c, &token).await).unwrap();

    let queries = Arc::new(AtomicUsize::new(0));
    let burst = (0..20).map(|_| {
        let (cache, queries, user) = (cache.clone(), queries.clone(), user.clone());
        tokio::spawn(async move {
            cache
                .serve(&user, Lookup::search("burst", 10, None), || async {
                    queries.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok::<_, Infallible>(Bytes::from_static(b"{\"items\":[]}"))
                })
                .await
                .unwrap()
        })
    });
    for answer in futures::future::join_all(burst).await {
        assert_eq!(answer.unwrap(), Bytes::from_static(b"{\"items\":[]}"));
    }
    assert_eq!(queries.load(Ordering::SeqCst), 1, "one query for twenty concurrent misses");

    // Over HTTP, on a real search.
    import_doc(c, &token).await;
    let before = cache.stats();
    let burst = (0..20).map(|_| {
        let (c, token) = (c.clone(), token.clone());
        tokio::spawn(async move { body(&c, &token, "/documents/search?q=Mars&limit=7").await })
    });
    let answers: Vec<(u16, Bytes)> = futures::future::join_all(burst).await.into_iter().map(Result::unwrap).collect();
    assert!(answers.iter().all(|a| a == &answers[0] && a.0 == 200));
    assert_eq!(delta(&before, &cache.stats(), CacheView::Search), (19, 1, 0), "one miss, the rest hits");
}

/// With `REDIS_CACHE_ENABLED=0` nothing is cached: every read is a bypass
/// and no cache key is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flag_off_bypasses() {
    let redis = TestRedis::start().await;
    let t = TestApp::spawn(|s| s.with_redis(&redis).set("REDIS_CACHE_ENABLED", "0")).await;
    let (c, cache) = (&t.client, &t.app.cache);
    let token = c.user("cache-off").await;
    let doc = import_doc(c, &token).await;
    for _ in 0..3 {
        assert_eq!(c.json(&token, "/documents").await["total"], 1);
        assert!(!c.json(&token, "/documents/search?q=Mars").await["items"].as_array().unwrap().is_empty());
    }
    assert_eq!(count(cache, CacheView::List, Outcome::Bypass), 3);
    assert_eq!(count(cache, CacheView::Search, Outcome::Bypass), 3);
    assert_eq!(count(cache, CacheView::List, Outcome::Hit) + count(cache, CacheView::List, Outcome::Miss), 0);
    assert_eq!(delete(c, &token, &doc).await, 204);
    assert_eq!(c.json(&token, "/documents").await["total"], 0);
    let keys = redis.keys_with_ttl().await;
    assert!(keys.keys().all(|k| !k.contains(":cache:")), "no cache key with the flag off: {keys:?}");
}

/// The flag is turned off at run time, a document deleted, the flag turned
/// on again: the entries cached before must not answer (the bump that could
/// not be written while the flag was off is made once it is on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_while_the_flag_is_off_is_not_hidden_by_old_entries() {
    let redis = TestRedis::start().await;
    let t = TestApp::spawn(|s| s.with_redis(&redis)).await;
    let (c, cache) = (&t.client, &t.app.cache);
    t.app.create_user("cache-root", "root password 1".into(), true).await.unwrap();
    let admin = c.login("cache-root", "root password 1").await;
    let token = c.user("cache-flag").await;
    let user = UserId::parse(&user_id(c, &token).await).unwrap();
    let doc = import_doc(c, &token).await;
    assert_eq!(c.json(&token, "/documents").await["total"], 1);
    assert_eq!(c.json(&token, "/documents").await["total"], 1);
    assert!(count(cache, CacheView::List, Outcome::Hit) >= 1);

    let set_flag = |value: Value| {
        let c = c.clone();
        let admin = admin.clone();
        async move {
            let r = c
                .http
                .put(c.url("/admin/flags"))
                .bearer_auth(&admin)
                .json(&json!({"REDIS_CACHE_ENABLED": value}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    };
    set_flag(json!(false)).await;
    assert_eq!(delete(c, &token, &doc).await, 204);
    assert!(cache.is_pending(&user), "the bump is owed");
    set_flag(json!(null)).await;
    assert_eq!(c.json(&token, "/documents").await["total"], 0, "never the entry cached before the delete");
    assert!(!cache.is_pending(&user), "the owed bump was made");
    // And the cache serves again.
    let before = cache.stats();
    c.json(&token, "/documents").await;
    c.json(&token, "/documents").await;
    assert_eq!(delta(&before, &cache.stats(), CacheView::List), (2, 0, 0), "hits again");
}

/// Redis stopped: every read answers 200 from the database, quickly, never
/// 500. Redis frozen (so that it keeps its data) during a delete: once it
/// answers again, the entry cached before the delete is never served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_bypasses_and_never_serves_stale() {
    let mut redis = TestRedis::start().await;
    let t = TestApp::spawn(|s| s.with_redis(&redis)).await;
    let (c, cache) = (&t.client, &t.app.cache);
    let token = c.user("cache-outage").await;
    let user = UserId::parse(&user_id(c, &token).await).unwrap();
    let keep = import_doc(c, &token).await;
    let gone = import_doc(c, &token).await;
    for _ in 0..2 {
        assert_eq!(c.json(&token, "/documents").await["total"], 2);
    }
    assert!(count(cache, CacheView::List, Outcome::Hit) >= 1);

    // Frozen: the delete's bump times out; the answer is still a 204.
    redis.freeze();
    let started = Instant::now();
    assert_eq!(delete(c, &token, &gone).await, 204);
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    assert!(cache.is_pending(&user));
    for _ in 0..3 {
        assert_eq!(ids(&c.json(&token, "/documents").await), [keep.as_str()]);
    }
    redis.thaw();
    eventually(Duration::from_secs(10), "redis used again", || async {
        c.readyz().await.1["features"]["cache"]["backend"] == "redis"
    })
    .await;
    // The entry with both documents is still in Redis, under the old version.
    assert_eq!(ids(&c.json(&token, "/documents").await), [keep.as_str()]);
    eventually(Duration::from_secs(5), "the owed bump is made", || async { !cache.is_pending(&user) }).await;
    assert_eq!(ids(&c.json(&token, "/documents").await), [keep.as_str()]);

    // Stopped: 200 from the database on every endpoint.
    redis.stop();
    let bypass_before = count(cache, CacheView::List, Outcome::Bypass);
    for path in ["/documents".to_string(), format!("/documents/{keep}"), "/documents/search?q=Mars".to_string()] {
        for _ in 0..3 {
            let started = Instant::now();
            let (code, _) = body(c, &token, &path).await;
            assert_eq!(code, 200, "{path}");
            assert!(started.elapsed() < Duration::from_secs(2), "{path} took {:?}", started.elapsed());
        }
    }
    assert!(count(cache, CacheView::List, Outcome::Bypass) >= bypass_before + 3);
    let again = c.import(&token, "c.txt", sample_text()).await;
    assert_eq!(c.wait_done(&token, &again).await["status"], "completed");
    assert_eq!(c.json(&token, "/documents").await["total"], 2);
}

/// Two instances on one Redis and one database: a delete on A is seen by a
/// list on B at once, and an import on A too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_delete_on_one_list_on_the_other() {
    let redis = TestRedis::start().await;
    let dir = tempfile::TempDir::new().unwrap();
    let a = TestApp::start(Settings::new(dir.path()).with_redis(&redis)).await;
    let b = TestApp::start(Settings::new(dir.path()).with_redis(&redis)).await;
    let token = a.client.user("cache-two").await;
    let first = import_doc(&a.client, &token).await;
    let second = import_doc(&a.client, &token).await;

    for _ in 0..2 {
        assert_eq!(b.client.json(&token, "/documents").await["total"], 2);
        assert_eq!(body(&b.client, &token, &format!("/documents/{second}")).await.0, 200);
    }
    assert!(count(&b.app.cache, CacheView::List, Outcome::Hit) >= 1, "B serves the list from the cache");
    assert!(count(&b.app.cache, CacheView::Doc, Outcome::Hit) >= 1);

    assert_eq!(delete(&a.client, &token, &second).await, 204);
    assert_eq!(ids(&b.client.json(&token, "/documents").await), [first.as_str()]);
    assert_eq!(body(&b.client, &token, &format!("/documents/{second}")).await.0, 404);

    let third = import_doc(&a.client, &token).await;
    let list = b.client.json(&token, "/documents").await;
    assert_eq!(list["total"], 2);
    assert!(ids(&list).contains(&third));
}
