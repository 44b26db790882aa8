//! Redis high availability with real processes (issue #11): a master with a
//! replica under three sentinels, and a three-master cluster with replicas.
//! Two reportd instances carry a steady workload — polls on both, imports,
//! conversation turns — while a master is SIGKILLed and its replica takes
//! over. Every poll must answer 200 through the gap (from memory or from a
//! replica), no status may go backwards, every import must complete, the
//! conversation must go on, and both instances must come back to Redis on
//! the new master by themselves. The gap is printed (`--nocapture`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::fakes::FakeLlm;
use crate::helpers::{Client, Settings, TestCluster, TestProcess, TestSentinels, sample_text};
use crate::sse::SseReader;

/// One answer of a poll: which instance, which task, when, and what.
#[derive(Debug, Clone)]
struct Poll {
    instance: &'static str,
    task: String,
    at: Duration,
    code: u16,
    status: String,
    progress: u64,
}

fn rank(status: &str) -> u8 {
    match status {
        "pending" => 0,
        "processing" => 1,
        "completed" | "failed" => 2,
        _ => 9,
    }
}

/// Polls every task on both instances, over and over, until `stop`.
fn spawn_pollers(
    clients: Vec<(&'static str, Client)>,
    token: String,
    tasks: Arc<std::sync::Mutex<Vec<String>>>,
    started: Instant,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Poll>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let round: Vec<String> = tasks.lock().unwrap().clone();
            for task in &round {
                for (instance, client) in &clients {
                    let (code, body) = client.status(&token, task).await;
                    seen.push(Poll {
                        instance,
                        task: task.clone(),
                        at: started.elapsed(),
                        code,
                        status: body["status"].as_str().unwrap_or("").to_owned(),
                        progress: body["progress"].as_u64().unwrap_or(0),
                    });
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        seen
    })
}

/// A turn of the writing assistant: it must answer 200 and end with `done`.
async fn turn(c: &Client, token: &str, task: &str, message: &str) {
    let r = c
        .http
        .post(c.url("/ai/generate"))
        .bearer_auth(token)
        .json(&json!({"task_id": task, "message": message}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "turn `{message}`: {}", r.text().await.unwrap_or_default());
    let events = tokio::time::timeout(Duration::from_secs(60), SseReader::new(r).rest()).await.expect("turn ended");
    assert_eq!(events.last().map(|e| e.event.as_str()), Some("done"), "turn `{message}`: {events:?}");
}

/// The value of a counter or gauge on `/metrics` (summed over its series).
async fn metric(c: &Client, name: &str) -> f64 {
    let text = c.http.get(c.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `/readyz`'s Redis view, when the instance is back on Redis after a
/// failover and `back` accepts its topology.
async fn back_on_redis(c: &Client, back: &dyn Fn(&Value) -> bool) -> bool {
    let (code, ready) = c.readyz().await;
    code == 200
        && ready["status"] == "ready"
        && ready["redis"]["connected"] == true
        && ready["redis"]["topology"]["failovers_seen"].as_u64() >= Some(1)
        && back(&ready["redis"]["topology"])
}

/// What a failover cost, for the report.
struct Gap {
    /// From the master's death until both instances were back on Redis.
    back: Duration,
    polls: usize,
    polls_in_gap: usize,
    replica_reads: f64,
    /// B's `/metrics` after the failover.
    metrics: String,
}

/// The workload around one failover: `kill` kills a master (and says which),
/// `back` recognises the topology after the failover.
async fn survive_a_failover(
    settings: Settings,
    dir: &TempDir,
    kill: impl AsyncFnOnce() -> String,
    back: impl Fn(&Value) -> bool,
) -> Gap {
    let a = TestProcess::start(&settings, dir.path(), "a").await;
    let b = TestProcess::start(&settings, dir.path(), "b").await;
    let token = a.client.user("ha").await;

    // Imports made before: completed, their status in Redis (and in A's
    // memory by dual write, not in B's).
    let mut before = Vec::new();
    for i in 0..6 {
        before.push(a.client.import(&token, &format!("before-{i}.txt"), sample_text()).await);
    }
    for task in &before {
        assert_eq!(a.client.wait_done(&token, task).await["status"], "completed");
    }
    turn(&a.client, &token, "ha-report", "第一轮：火星").await;

    let tasks = Arc::new(std::sync::Mutex::new(before.clone()));
    let mut kinds: BTreeMap<String, String> = before.iter().map(|t| (t.clone(), "before".to_owned())).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let pollers = spawn_pollers(
        vec![("a", a.client.clone()), ("b", b.client.clone())],
        token.clone(),
        tasks.clone(),
        started,
        stop.clone(),
    );
    // Imports running when the master dies (each stage takes a while).
    for (i, c) in [&a.client, &b.client, &a.client, &b.client].into_iter().enumerate() {
        let task = c.import(&token, &format!("during-{i}.txt"), sample_text()).await;
        kinds.insert(task.clone(), format!("during-{i}"));
        tasks.lock().unwrap().push(task);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let killed = kill().await;
    let died = started.elapsed();
    eprintln!("killed the master {killed} at {died:?}");
    // Work goes on during the gap: an import on each instance, a turn on B.
    for (i, c) in [&a.client, &b.client].into_iter().enumerate() {
        let task = c.import(&token, &format!("gap-{i}.txt"), sample_text()).await;
        kinds.insert(task.clone(), format!("gap-{i}"));
        tasks.lock().unwrap().push(task);
    }
    turn(&b.client, &token, "ha-report", "第二轮：木星").await;

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if back_on_redis(&a.client, &back).await && back_on_redis(&b.client, &back).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "both instances back on Redis within 60 s: a {:?} b {:?}",
            a.client.readyz().await,
            b.client.readyz().await
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let back_at = started.elapsed();

    // Imports made after, on each instance.
    for (i, c) in [&a.client, &b.client].into_iter().enumerate() {
        let task = c.import(&token, &format!("after-{i}.txt"), sample_text()).await;
        kinds.insert(task.clone(), format!("after-{i}"));
        tasks.lock().unwrap().push(task);
    }
    let all: Vec<String> = tasks.lock().unwrap().clone();
    for task in &all {
        for c in [&a.client, &b.client] {
            let done = c.wait_done(&token, task).await;
            assert_eq!(done["status"], "completed", "{task}: {done}");
        }
    }
    // Polls go on a little on the new master, then stop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let polls = pollers.await.unwrap();

    // Every poll answered 200, and no task went backwards on either instance.
    let failed: Vec<&Poll> = polls.iter().filter(|p| p.code != 200).collect();
    let failed_tasks: std::collections::BTreeSet<String> =
        failed.iter().map(|p| format!("{} on {} ({})", p.task, p.instance, kinds[&p.task])).collect();
    assert!(
        failed.is_empty(),
        "{} of {} polls failed: {failed_tasks:?}, first: {:?}",
        failed.len(),
        polls.len(),
        &failed[..1]
    );
    let mut last: BTreeMap<(&str, &str), (u8, u64)> = BTreeMap::new();
    for p in &polls {
        let now = (rank(&p.status), p.progress);
        assert!(now.0 < 9, "unknown status: {p:?}");
        if let Some(prev) = last.insert((p.instance, &p.task), now) {
            assert!(now >= prev, "a task went backwards on {}: {prev:?} then {p:?}", p.instance);
        }
    }
    // The conversation goes on, on either instance, with what came before.
    turn(&a.client, &token, "ha-report", "第三轮：土星").await;
    let session = b.client.json(&token, "/ai/sessions/generate/ha-report").await;
    let text = session.to_string();
    for round in ["第一轮：火星", "第三轮：土星"] {
        assert!(text.contains(round), "{round} in the conversation: {session}");
    }

    let replica_reads = metric(&a.client, "reportd_state_replica_reads_total").await
        + metric(&b.client, "reportd_state_replica_reads_total").await;
    for c in [&a.client, &b.client] {
        assert!(metric(c, "reportd_redis_failovers_seen_total").await >= 1.0);
    }
    let polls_in_gap = polls.iter().filter(|p| p.at >= died && p.at <= back_at).count();
    let metrics = b.client.http.get(b.client.url("/metrics")).send().await.unwrap().text().await.unwrap();
    Gap { back: back_at - died, polls: polls.len(), polls_in_gap, replica_reads, metrics }
}

fn report(what: &str, gap: &Gap) {
    eprintln!(
        "{what}: both instances back on Redis {:.2} s after the master died; {} polls, {} of them in the gap, \
         all 200; {} reads served by a replica",
        gap.back.as_secs_f64(),
        gap.polls,
        gap.polls_in_gap,
        gap.replica_reads
    );
}

fn workload_settings(dir: &TempDir, llm: &FakeLlm) -> Settings {
    Settings::new(dir.path()).with_llm(&llm.base_url).set("IMPORT_STAGE_DELAY_MS", "150")
}

/// Sentinel: the master dies, the sentinels promote the replica, and both
/// instances follow it without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sentinel_failover_keeps_every_poll_answering_and_both_instances_follow_the_new_master() {
    let mut sentinels = TestSentinels::start().await;
    let llm = FakeLlm::start().await;
    let dir = TempDir::new().unwrap();
    let settings = workload_settings(&dir, &llm).with_sentinels(&sentinels);
    let old = sentinels.master_port().await;
    let new_master = Arc::new(std::sync::Mutex::new(None::<u16>));
    let seen = new_master.clone();
    let gap = survive_a_failover(
        settings,
        &dir,
        async || {
            let killed = sentinels.kill_master().await;
            format!("127.0.0.1:{killed}")
        },
        move |topology| {
            let master = topology["master"].as_str().unwrap_or("");
            let moved = !master.is_empty() && master != format!("127.0.0.1:{old}");
            if moved {
                *seen.lock().unwrap() = master.rsplit(':').next().and_then(|p| p.parse().ok());
            }
            moved && topology["mode"] == "sentinel"
        },
    )
    .await;
    let promoted = sentinels.wait_for_new_master(old, Duration::from_secs(30)).await;
    assert_eq!(*new_master.lock().unwrap(), Some(promoted), "the instances use the master the sentinels name");
    assert!(gap.replica_reads > 0.0, "B found A's tasks on the replica during the gap");
    let topology = format!("reportd_redis_topology{{mode=\"sentinel\",master=\"127.0.0.1:{promoted}\"}} 1");
    assert!(gap.metrics.lines().any(|l| l == topology), "{topology} in\n{}", gap.metrics);
    report("sentinel failover", &gap);
}

/// Cluster: one of three masters dies, its replica takes its slots over,
/// and the service carries on as with Sentinel.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_failover_keeps_every_poll_answering_and_both_instances_carry_on() {
    let mut cluster = TestCluster::start().await;
    let llm = FakeLlm::start().await;
    let dir = TempDir::new().unwrap();
    let settings = workload_settings(&dir, &llm).with_cluster(&cluster);
    let gap = survive_a_failover(
        settings,
        &dir,
        async || {
            let killed = cluster.kill_master(0).await;
            format!("127.0.0.1:{killed}")
        },
        |topology| {
            topology["mode"] == "cluster" && topology["slots_covered"] == 16384 && topology["cluster_state"] == "ok"
        },
    )
    .await;
    for line in ["reportd_redis_cluster_slots_covered 16384", "reportd_redis_replica_reads_available 1"] {
        assert!(gap.metrics.lines().any(|l| l == line), "{line} in\n{}", gap.metrics);
    }
    assert!(gap.replica_reads > 0.0, "B found A's tasks on a replica during the gap");
    report("cluster failover", &gap);
}
