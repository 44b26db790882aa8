//! Rate and concurrency limits (issue #7): atomic under concurrency, in
//! Redis and in memory; shared between instances only through Redis;
//! surviving a Redis restart and outage; leases that come back when their
//! holder dies; 429s that leave the core flow alone.

use std::time::Duration;

use futures::future::join_all;
use reportd::ids::UserId;
use reportd::stores::limits::Concurrency;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::fakes::{FakeLlm, Reply};
use crate::helpers::{Client, Settings, TestApp, TestProcess, TestRedis, eventually, sample_text};

async fn metrics(c: &Client) -> String {
    c.http.get(c.url("/metrics")).send().await.unwrap().text().await.unwrap()
}

/// The value of one counter line (0 when absent).
fn counter(metrics: &str, line_start: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// A 429 that names the limit and says when to come back.
async fn assert_limited(r: reqwest::Response, code: &str) {
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1, "Retry-After in whole seconds");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("LIMIT_"), "the detail names the setting: {body}");
}

/// 200 concurrent acquires against a limit of 5 admit exactly 5, and 200
/// concurrent requests against a burst of 20 admit exactly 20: in memory and
/// in Redis (no count-then-add race in either).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_acquires_never_exceed_the_limit() {
    let redis = TestRedis::start().await;
    for in_redis in [false, true] {
        let t = TestApp::spawn(|s| {
            let s = s
                .set("LIMIT_SSE_PER_USER", "5")
                .set("LIMIT_REQUESTS_PER_SEC", "0.01")
                .set("LIMIT_REQUESTS_BURST", "20");
            if in_redis { s.with_redis(&redis) } else { s }
        })
        .await;
        let user = UserId::parse("crowd").unwrap();
        let attempts = (0..200).map(|i| {
            let limits = t.app.limits.clone();
            let user = user.clone();
            tokio::spawn(async move { limits.acquire(Concurrency::Streams, &user, &format!("h{i}")).await })
        });
        let results: Vec<_> = join_all(attempts).await.into_iter().map(Result::unwrap).collect();
        let held: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
        assert_eq!(held.len(), 5, "in redis: {in_redis}");
        assert_eq!(t.app.limits.held(Concurrency::Streams, &user).await, 5);
        if in_redis {
            let keys = redis.keys_with_ttl().await;
            let lease = keys.iter().find(|(k, _)| k.ends_with(":rl:lease:streams:crowd")).expect("the lease set");
            assert!(*lease.1 > 0, "every key has a TTL");
        }
        drop(results);
        eventually(Duration::from_secs(5), "dropped leases are released", || async {
            t.app.limits.held(Concurrency::Streams, &user).await == 0
        })
        .await;

        let token = t.client.user("rate-crowd").await;
        let requests = (0..200).map(|_| {
            let c = t.client.clone();
            let token = token.clone();
            tokio::spawn(async move { c.get(&token, "/documents").await.status().as_u16() })
        });
        let codes: Vec<u16> = join_all(requests).await.into_iter().map(Result::unwrap).collect();
        assert_eq!(codes.iter().filter(|c| **c == 200).count(), 20, "in redis: {in_redis}");
        assert_eq!(codes.iter().filter(|c| **c == 429).count(), 180);
        if in_redis {
            let keys = redis.keys_with_ttl().await;
            assert!(keys.keys().any(|k| k.contains(":rl:rate:requests:user:")), "{keys:?}");
            assert!(keys.values().all(|ttl| *ttl > 0 || *ttl == -1), "{keys:?}");
        }
    }
}

/// An instance holding a stream slot is killed with SIGKILL: its slot is
/// taken on the other instance until the lease expires, then free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_frees_its_slot_when_its_lease_expires() {
    let redis = TestRedis::start().await;
    let llm = FakeLlm::start().await;
    let dir = TempDir::new().unwrap();
    let settings = Settings::new(dir.path())
        .with_redis(&redis)
        .with_llm(&llm.base_url)
        .set("LLM_IDLE_TIMEOUT_SECONDS", "120")
        .set("LIMIT_SSE_PER_USER", "1")
        .set("LIMIT_LEASE_SECONDS", "3");
    let mut a = TestProcess::start(&settings, dir.path(), "a").await;
    let b = TestApp::start(settings.clone()).await;
    let token = a.client.user("holder").await;

    llm.push(Reply::Hang { chunks: vec!["一直在想".into()] });
    let ask = |c: &Client, task: &str| {
        let (c, token, task) = (c.clone(), token.clone(), task.to_owned());
        async move {
            c.http
                .post(c.url("/ai/generate"))
                .bearer_auth(&token)
                .json(&json!({"task_id": task, "message": "写一段"}))
                .send()
                .await
                .unwrap()
        }
    };
    let open = ask(&a.client, "t1").await;
    assert_eq!(open.status(), 200);
    assert_limited(ask(&b.client, "t2").await, "stream_limit_reached").await;

    a.kill();
    drop(open);
    let killed_at = std::time::Instant::now();
    llm.push(Reply::text("好的"));
    let mut freed = None;
    for _ in 0..100 {
        let r = ask(&b.client, "t2").await;
        if r.status() == 200 {
            freed = Some(killed_at.elapsed());
            break;
        }
        assert_limited(r, "stream_limit_reached").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let freed = freed.expect("the dead holder's slot came back");
    assert!(freed <= Duration::from_secs(8), "within about one lease: {freed:?}");
}

/// With the limits in Redis two instances share one budget; with them in
/// memory each instance has its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_a_limit_only_through_redis() {
    let redis = TestRedis::start().await;
    for shared in [true, false] {
        let dir = TempDir::new().unwrap();
        let settings = Settings::new(dir.path())
            .with_redis(&redis)
            .set("REDIS_RATE_LIMIT_ENABLED", if shared { "1" } else { "0" })
            .set("LIMIT_REQUESTS_PER_SEC", "0.01")
            .set("LIMIT_REQUESTS_BURST", "4");
        let a = TestApp::start(settings.clone()).await;
        let b = TestApp::start(settings).await;
        let token = a.client.user(if shared { "shared-budget" } else { "own-budget" }).await;
        for _ in 0..4 {
            assert_eq!(a.client.get(&token, "/documents").await.status(), 200);
        }
        assert_limited(a.client.get(&token, "/documents").await, "request_rate_limited").await;
        let on_b = b.client.get(&token, "/documents").await.status();
        if shared {
            assert_eq!(on_b, 429, "B sees what A spent");
        } else {
            assert_eq!(on_b, 200, "B has its own budget");
        }
    }
}

/// Redis restarted (empty, scripts gone): the limits go on in Redis.
/// Redis stopped: they go on in memory; answers are 200 or 429, never 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_survive_a_redis_restart_and_an_outage() {
    let mut redis = TestRedis::start().await;
    let t =
        TestApp::spawn(|s| s.with_redis(&redis).set("LIMIT_REQUESTS_PER_SEC", "0.01").set("LIMIT_REQUESTS_BURST", "3"))
            .await;
    let c = &t.client;
    let token = c.user("restart").await;
    let burst = |n: usize| {
        let token = token.clone();
        async move {
            let mut codes = Vec::new();
            for _ in 0..n {
                codes.push(c.get(&token, "/documents").await.status().as_u16());
            }
            codes
        }
    };
    assert_eq!(burst(4).await, [200, 200, 200, 429]);

    redis.restart().await;
    // The first command after the restart may meet the dropped connection
    // and fall back for a moment; a new user's budget is then all in Redis.
    let fresh = c.user("restart-2").await;
    let back_on_redis = || async { c.readyz().await.1["features"]["rate_limit"]["backend"] == "redis" };
    eventually(Duration::from_secs(10), "the service is back on Redis", back_on_redis).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    eventually(Duration::from_secs(10), "the service is back on Redis", back_on_redis).await;
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(c.get(&fresh, "/documents").await.status().as_u16());
    }
    assert_eq!(codes, [200, 200, 200, 429, 429], "a fresh budget in the fresh Redis");
    let keys = redis.keys_with_ttl().await;
    assert!(keys.keys().any(|k| k.contains(":rl:rate:requests:")), "decided in Redis (script reloaded): {keys:?}");

    redis.stop();
    let codes = burst(8).await;
    assert!(codes.iter().all(|c| *c == 200 || *c == 429), "{codes:?}");
    assert!(codes.contains(&429), "still limited, in memory: {codes:?}");
    assert!(codes.iter().filter(|c| **c == 200).count() <= 3, "{codes:?}");
    let m = metrics(c).await;
    assert!(counter(&m, "reportd_state_fallback_total{feature=\"rate_limit\"") > 0, "the fallback is counted");
}

/// One user floods the poll endpoint: 429s for them, nothing for another
/// user's polls, and their own import completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_flood_is_limited_and_disturbs_nobody() {
    let t = TestApp::spawn(|s| {
        s.set("LIMIT_POLLS_PER_SEC", "5").set("LIMIT_POLLS_BURST", "5").set("IMPORT_STAGE_DELAY_MS", "200")
    })
    .await;
    let c = &t.client;
    let flooder = c.user("flooder").await;
    let calm = c.user("calm").await;
    let task = c.import(&flooder, "a.txt", sample_text()).await;
    let other = c.import(&calm, "b.txt", sample_text()).await;

    let flood = (0..60).map(|_| {
        let (c, token, task) = (c.clone(), flooder.clone(), task.clone());
        tokio::spawn(async move { c.get(&token, &format!("/imports/{task}")).await })
    });
    let responses: Vec<reqwest::Response> = join_all(flood).await.into_iter().map(Result::unwrap).collect();
    let limited: Vec<_> = responses.into_iter().filter(|r| r.status() == 429).collect();
    assert!(limited.len() >= 50, "{} limited", limited.len());
    for r in limited.into_iter().take(3) {
        assert_limited(r, "poll_rate_limited").await;
    }
    // Another user's polls, and the flooder's other requests, go on.
    for _ in 0..5 {
        assert_eq!(c.status(&calm, &other).await.0, 200);
    }
    assert_eq!(c.get(&flooder, "/documents").await.status(), 200, "polls have their own budget");
    // The flooder's import completes; polling at the allowed rate works.
    let mut last = Value::Null;
    for _ in 0..200 {
        let r = c.get(&flooder, &format!("/check_import_status/{task}")).await;
        if r.status() == 429 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        }
        last = r.json().await.unwrap();
        if last["status"] == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(last["status"], "completed", "{last}");
    let m = metrics(c).await;
    assert!(counter(&m, "reportd_limit_decisions_total{limit=\"polls\",outcome=\"rejected\"}") >= 50, "{m}");
    assert!(counter(&m, "reportd_limit_decisions_total{limit=\"polls\",outcome=\"allowed\"}") >= 5);
}

async fn login(c: &Client, username: &str, forwarded_for: Option<&str>) -> reqwest::Response {
    let mut req = c.http.post(c.url("/auth/login")).json(&json!({"username": username, "password": "wrong password"}));
    if let Some(ip) = forwarded_for {
        req = req.header("x-forwarded-for", ip);
    }
    req.send().await.unwrap()
}

/// Guessing from one address is slowed to the configured rate, whatever
/// `X-Forwarded-For` an untrusted client sends; behind a trusted proxy the
/// forwarded address counts, and the per-username limit still holds.
#[tokio::test]
async fn login_guessing_is_slowed_per_address_and_per_name() {
    let t = TestApp::spawn(|s| s.set("LIMIT_LOGINS_PER_MIN", "5")).await;
    let c = &t.client;
    assert_eq!(c.register("victim", "correct horse battery").await.status(), 201);
    // The registration was the first of five attempts from this address.
    for i in 0..4 {
        assert_eq!(login(c, "victim", Some(&format!("10.9.8.{i}"))).await.status(), 401);
    }
    for i in 0..3 {
        assert_limited(login(c, "victim", Some(&format!("10.7.7.{i}"))).await, "login_rate_limited").await;
        assert_limited(login(c, &format!("other{i}"), None).await, "login_rate_limited").await;
    }

    // Behind a trusted proxy, each forwarded address has its own budget …
    let proxied = TestApp::spawn(|s| s.set("LIMIT_LOGINS_PER_MIN", "5").set("TRUSTED_PROXIES", "127.0.0.1/32")).await;
    let c = &proxied.client;
    assert_eq!(c.register("target", "correct horse battery").await.status(), 201);
    for i in 0..5 {
        // … but one username is guessed at most five times a minute.
        assert_eq!(login(c, "target", Some(&format!("198.51.100.{i}"))).await.status(), 401);
    }
    assert_limited(login(c, "TARGET", Some("198.51.100.99")).await, "login_rate_limited").await;
    assert_eq!(login(c, "someone", Some("198.51.100.99")).await.status(), 401, "a fresh address and name");
    // The real login of a user whose name is not under attack works.
    let ok = c
        .http
        .post(c.url("/auth/login"))
        .header("x-forwarded-for", "203.0.113.5")
        .json(&json!({"username": "target", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 429, "the name under attack is limited for everyone until its budget refills");
}

/// `LIMIT_SSE_PER_USER` open streams; the slot of a stream whose client
/// went away is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_streams_are_limited_and_released_when_the_client_goes() {
    let llm = FakeLlm::start().await;
    let t = TestApp::spawn(|s| {
        s.with_llm(&llm.base_url).set("LLM_IDLE_TIMEOUT_SECONDS", "120").set("LIMIT_SSE_PER_USER", "2")
    })
    .await;
    let c = &t.client;
    let token = c.user("streamer").await;
    let ask = |task: &str| {
        c.http.post(c.url("/ai/generate")).bearer_auth(&token).json(&json!({"task_id": task, "message": "写"})).send()
    };
    llm.push(Reply::Hang { chunks: vec!["一".into()] });
    llm.push(Reply::Hang { chunks: vec!["二".into()] });
    let first = ask("s1").await.unwrap();
    let second = ask("s2").await.unwrap();
    assert_eq!((first.status().as_u16(), second.status().as_u16()), (200, 200));
    assert_limited(ask("s3").await.unwrap(), "stream_limit_reached").await;
    let resume = c.get(&token, "/ai/streams/generate-00000000000000000000000000000000").await;
    assert_limited(resume, "stream_limit_reached").await;

    drop(first);
    llm.push(Reply::text("好"));
    eventually(Duration::from_secs(5), "the slot of a gone client is free", || async {
        ask("s4").await.unwrap().status() == 200
    })
    .await;
    let user = UserId::parse(c.json(&token, "/auth/me").await["id"].as_str().unwrap()).unwrap();
    eventually(Duration::from_secs(5), "finished streams hold nothing", || async {
        t.app.limits.held(Concurrency::Streams, &user).await == 1
    })
    .await;
    drop(second);
}

/// The fairness finding: one user's many rapid uploads filled the import
/// queue and another user's tiny file waited behind all of them. Now each
/// user has `LIMIT_IMPORTS_PER_USER` imports waiting or running; the rest
/// are refused at once (429, before their body is read), the slots come
/// back when imports end (failed ones too), and another user's import
/// goes through while the first user is still uploading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_slots_per_user_keep_the_queue_fair() {
    let t = TestApp::spawn(|s| {
        s.set("LIMIT_IMPORTS_PER_USER", "2").set("IMPORT_WORKERS", "2").set("IMPORT_STAGE_DELAY_MS", "150")
    })
    .await;
    let c = &t.client;
    let greedy = c.user("greedy").await;
    let modest = c.user("modest").await;

    let burst = (0..20).map(|i| {
        let (c, token) = (c.clone(), greedy.clone());
        tokio::spawn(async move { c.upload(&token, "/Import_Doc/", &format!("g{i}.txt"), sample_text()).await })
    });
    let responses: Vec<reqwest::Response> = join_all(burst).await.into_iter().map(Result::unwrap).collect();
    let (accepted, refused): (Vec<_>, Vec<_>) = responses.into_iter().partition(|r| r.status() == 202);
    assert_eq!(accepted.len(), 2, "two waiting or running at once");
    for r in refused.into_iter().take(2) {
        assert_limited(r, "import_limit_reached").await;
    }

    // The greedy user keeps uploading as fast as they are let in …
    let keep_uploading = {
        let (c, token) = (c.clone(), greedy.clone());
        tokio::spawn(async move {
            let mut done = 0;
            while done < 6 {
                let r = c.upload(&token, "/Import_Doc/", "more.txt", sample_text()).await;
                match r.status().as_u16() {
                    202 => done += 1,
                    429 => tokio::time::sleep(Duration::from_millis(50)).await,
                    other => panic!("unexpected {other}"),
                }
            }
        })
    };
    // … and the modest user's 27-byte file is imported meanwhile.
    let task = c.import(&modest, "tiny.txt", b"a tiny file of 27 bytes....".to_vec()).await;
    assert_eq!(c.wait_done(&modest, &task).await["status"], "completed");
    assert!(!keep_uploading.is_finished(), "the modest import did not wait for the greedy user's queue");
    keep_uploading.await.unwrap();

    // A failed import frees its slot too.
    let user = UserId::parse(c.json(&greedy, "/auth/me").await["id"].as_str().unwrap()).unwrap();
    eventually(Duration::from_secs(30), "the greedy user's imports end", || async {
        t.app.limits.held(Concurrency::Imports, &user).await == 0
    })
    .await;
    let broken = c.import(&greedy, "broken.pdf", b"%PDF-1.7 not really".to_vec()).await;
    assert_eq!(c.wait_done(&greedy, &broken).await["status"], "failed");
    eventually(Duration::from_secs(5), "the failed import's slot is free", || async {
        t.app.limits.held(Concurrency::Imports, &user).await == 0
    })
    .await;
}
