//! Self-tests of the Redis topologies the harness starts (issue #11): a
//! Redis Cluster serves keys in every master's slots and survives the loss
//! of a master, and Redis under Sentinel survives the loss of its master,
//! with the data written before. They use no reportd code; the failover
//! tests of the service itself build on the same harness.
//!
//! Each prints how long the topology took to start and how long each
//! failover took (run with `--nocapture`): the service's own failover tests
//! have to wait that long.

use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::helpers::{REDIS_PASSWORD, Settings, TestCluster, TestRedis, TestSentinels, connect};

/// One key per master, found by asking each master directly: a master
/// answers a command on a key of its own slots and refuses (`MOVED`) any
/// other. Returns (master port, key, value).
async fn keys_on_every_master(cluster: &TestCluster, masters: &[u16]) -> Vec<(u16, String, String)> {
    let mut found: Vec<(u16, String, String)> = Vec::new();
    for n in 0..1000 {
        let key = format!("topology:key:{n}");
        let mut owners = Vec::new();
        for &port in masters {
            let answer: redis::RedisResult<i64> =
                redis::cmd("EXISTS").arg(&key).query_async(&mut cluster.conn_to(port).await).await;
            if answer.is_ok() {
                owners.push(port);
            }
        }
        assert_eq!(owners.len(), 1, "exactly one master owns {key}: {owners:?}");
        if !found.iter().any(|(port, _, _)| *port == owners[0]) {
            found.push((owners[0], key, format!("value-{n}")));
        }
        if found.len() == masters.len() {
            return found;
        }
    }
    panic!("1000 keys did not cover every master: {found:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_serves_keys_in_every_masters_slots() {
    let began = Instant::now();
    let cluster = TestCluster::start().await;
    eprintln!("TestCluster::start took {:?}", began.elapsed());
    assert_eq!(cluster.nodes().len(), 6);
    let masters = cluster.masters().await;
    assert_eq!(masters.len(), 3, "{masters:?}");
    let keys = keys_on_every_master(&cluster, &masters).await;
    let mut conn = cluster.cluster_conn().await;
    for (_, key, value) in &keys {
        let _: () = redis::cmd("SET").arg(key).arg(value).query_async(&mut conn).await.unwrap();
    }
    for (port, key, value) in &keys {
        let read: String = redis::cmd("GET").arg(key).query_async(&mut conn).await.unwrap();
        assert_eq!(&read, value, "{key} through the cluster client");
        // The client sent it to the master that owns it, not anywhere.
        let there: String = redis::cmd("GET").arg(key).query_async(&mut cluster.conn_to(*port).await).await.unwrap();
        assert_eq!(&there, value, "{key} on its master {port}");
    }
    let settings = Settings::sqlite(TempDir::new().unwrap().path()).with_cluster(&cluster);
    assert_eq!(settings.0["REDIS_CLUSTER_NODES"], cluster.nodes().join(","));
    assert_eq!(settings.0["REDIS_PASSWORD"], REDIS_PASSWORD);
    assert!(!settings.0.contains_key("REDIS_URL"), "one way to name Redis: {settings:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_cluster_master_is_replaced_by_its_replica_with_the_data() {
    let began = Instant::now();
    let mut cluster = TestCluster::start().await;
    eprintln!("TestCluster::start took {:?}", began.elapsed());
    let masters = cluster.masters().await;
    let keys = keys_on_every_master(&cluster, &masters).await;
    let mut conn = cluster.cluster_conn().await;
    for (_, key, value) in &keys {
        let _: () = redis::cmd("SET").arg(key).arg(value).query_async(&mut conn).await.unwrap();
    }
    // The cluster client sends WAIT to every master, on the connections
    // that carried the writes, and answers with the fewest replicas that
    // acknowledged: 1 means every write reached its master's replica.
    let acked: i64 = redis::cmd("WAIT").arg(1).arg(1000).query_async(&mut conn).await.unwrap();
    assert_eq!(acked, 1, "every master's replica has the writes");

    let killed = cluster.kill_master(0).await;
    assert_eq!(killed, masters[0], "master 0 is the one that owns slot 0");
    let failover = Instant::now();
    let promoted = cluster.wait_for_promotion(killed, Duration::from_secs(30)).await;
    eprintln!("cluster failover: {killed} killed, {promoted} serves its slots after {:?}", failover.elapsed());
    assert!(!masters.contains(&promoted), "a replica was promoted: {promoted} not in {masters:?}");
    let now = cluster.masters().await;
    assert_eq!(now.len(), 3, "{now:?}");
    assert_eq!(now[0], promoted, "the promoted node owns slot 0 now");

    // The client made before the failover follows the new slot map.
    let read = Instant::now();
    for (_, key, value) in &keys {
        let got: String = redis::cmd("GET").arg(key).query_async(&mut conn).await.unwrap();
        assert_eq!(&got, value, "{key} through the client made before the failover");
    }
    eprintln!("cluster failover: the old client read every key back in {:?}", read.elapsed());
    let mut fresh = cluster.cluster_conn().await;
    for (_, key, value) in &keys {
        let got: String = redis::cmd("GET").arg(key).query_async(&mut fresh).await.unwrap();
        assert_eq!(&got, value, "{key} through a new client");
    }
    let (_, key0, value0) = &keys[0];
    let there: String = redis::cmd("GET").arg(key0).query_async(&mut cluster.conn_to(promoted).await).await.unwrap();
    assert_eq!(&there, value0, "the killed master's key is on the promoted node");
    let _: () = redis::cmd("SET").arg(key0).arg("after").query_async(&mut conn).await.unwrap();

    // Started again, the old master rejoins as the replica of its replacement.
    let restart = Instant::now();
    cluster.restart_node(killed).await;
    eprintln!("cluster: {killed} back as a replica, cluster healthy after {:?}", restart.elapsed());
    assert!(!cluster.masters().await.contains(&killed));
    let mut back = cluster.conn_to(killed).await;
    let info: String = redis::cmd("INFO").arg("replication").query_async(&mut back).await.unwrap();
    assert!(info.contains("role:slave") && info.contains(&format!("master_port:{promoted}")), "{info}");
    let _: () = redis::cmd("READONLY").query_async(&mut back).await.unwrap();
    let got: String = redis::cmd("GET").arg(key0).query_async(&mut back).await.unwrap();
    assert_eq!(got, "after", "the restarted node replicates its new master");
}

/// The master a sentinel names, asked with the sentinels' password.
async fn named_by(sentinel: &str, password: &str, master: &str) -> u16 {
    let port: u16 = sentinel.rsplit_once(':').unwrap().1.parse().unwrap();
    let mut conn = connect(port, password).await.unwrap();
    let (_, named): (String, u16) =
        redis::cmd("SENTINEL").arg("GET-MASTER-ADDR-BY-NAME").arg(master).query_async(&mut conn).await.unwrap();
    named
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sentinel_master_is_replaced_by_its_replica_with_the_data() {
    let began = Instant::now();
    let mut set = TestSentinels::start().await;
    eprintln!("TestSentinels::start took {:?}", began.elapsed());
    let old = set.master_port().await;

    // The settings name every sentinel, with the master name and the
    // password they answer to.
    let settings = Settings::sqlite(TempDir::new().unwrap().path()).with_sentinels(&set);
    assert_eq!(settings.0["REDIS_ENABLED"], "1");
    assert_eq!(settings.0["REDIS_PASSWORD"], REDIS_PASSWORD);
    assert!(!settings.0.contains_key("REDIS_URL"), "one way to name Redis: {settings:?}");
    let sentinels: Vec<&str> = settings.0["REDIS_SENTINELS"].split(',').collect();
    assert_eq!(sentinels.len(), 3);
    for sentinel in &sentinels {
        let named =
            named_by(sentinel, &settings.0["REDIS_SENTINEL_PASSWORD"], &settings.0["REDIS_SENTINEL_MASTER"]).await;
        assert_eq!(named, old, "sentinel {sentinel}");
    }

    let keys: Vec<(String, String)> = (0..10).map(|n| (format!("topology:s:{n}"), format!("value-{n}"))).collect();
    let mut conn = set.conn_to(old).await;
    for (key, value) in &keys {
        let _: () = redis::cmd("SET").arg(key).arg(value).query_async(&mut conn).await.unwrap();
    }
    let acked: i64 = redis::cmd("WAIT").arg(1).arg(1000).query_async(&mut conn).await.unwrap();
    assert_eq!(acked, 1, "the replica has the writes");

    let killed = set.kill_master().await;
    assert_eq!(killed, old);
    let failover = Instant::now();
    // The first sentinel to name another master is what a client that asks
    // the sentinels in turn may find first.
    let deadline = failover + Duration::from_secs(30);
    'first: loop {
        for sentinel in &sentinels {
            if named_by(sentinel, &settings.0["REDIS_SENTINEL_PASSWORD"], "mymaster").await != old {
                break 'first;
            }
        }
        assert!(Instant::now() < deadline, "no sentinel named another master within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = failover.elapsed();
    let new = set.wait_for_new_master(old, Duration::from_secs(30)).await;
    eprintln!(
        "sentinel failover: {old} killed; a sentinel named {new} after {first:?}, all of them after {:?}",
        failover.elapsed()
    );
    assert_ne!(new, old);

    let mut conn = set.conn_to(new).await;
    for (key, value) in &keys {
        let got: String = redis::cmd("GET").arg(key).query_async(&mut conn).await.unwrap();
        assert_eq!(&got, value, "{key} on the new master");
    }
    let _: () = redis::cmd("SET").arg(&keys[0].0).arg("after").query_async(&mut conn).await.unwrap();

    let restart = Instant::now();
    set.restart_node(old).await;
    eprintln!("sentinel: {old} back as a replica, seen by every sentinel after {:?}", restart.elapsed());
    // The restarted node is a replica of the master the sentinels name. (On
    // a loaded machine the sentinels may fail over once more, down-after
    // being 1 s, and make it the master again: then it is that master.)
    let current = set.master_port().await;
    let mut back = set.conn_to(old).await;
    let info: String = redis::cmd("INFO").arg("replication").query_async(&mut back).await.unwrap();
    if current == old {
        assert!(info.contains("role:master"), "{info}");
    } else {
        assert!(info.contains("role:slave") && info.contains(&format!("master_port:{current}")), "{info}");
    }
    let got: String = redis::cmd("GET").arg(&keys[0].0).query_async(&mut back).await.unwrap();
    assert_eq!(got, "after", "the restarted node replicates the new master");
}

/// `TestRedis` over a cluster (`REPORTD_TEST_REDIS=cluster`), as the
/// existing Redis tests use it: its connection reaches every key, it lists
/// the keys of every master with their TTLs, and it survives a freeze and a
/// restart of the whole cluster, empty after the restart as one server is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_redis_over_a_cluster_sees_every_key_and_restarts() {
    let mut redis = TestRedis::start_cluster().await;
    let settings = Settings::sqlite(TempDir::new().unwrap().path()).with_redis(&redis);
    assert!(settings.0["REDIS_CLUSTER_NODES"].contains(&format!("127.0.0.1:{}", redis.port)), "{settings:?}");
    assert!(!settings.0.contains_key("REDIS_URL"), "{settings:?}");

    let mut conn = redis.conn().await;
    let keys: Vec<String> = (0..30).map(|n| format!("topology:ttl:{n}")).collect();
    for key in &keys {
        let _: () = redis::cmd("SET").arg(key).arg("v").arg("PX").arg(60_000).query_async(&mut conn).await.unwrap();
    }
    let _: () = redis::cmd("SET").arg("topology:forever").arg("v").query_async(&mut conn).await.unwrap();
    // The keys are spread over the masters (else the test below would not
    // show that every master is scanned): `redis-cli --cluster create`
    // gives each master a third of the slots, in these ranges.
    let mut holders = std::collections::BTreeSet::new();
    for key in &keys {
        let slot: u16 = redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query_async(&mut conn).await.unwrap();
        holders.insert(match slot {
            0..=5460 => 0,
            5461..=10922 => 1,
            _ => 2,
        });
    }
    assert_eq!(holders.len(), 3, "the keys fall into every master's slots");
    let found = redis.keys_with_ttl().await;
    assert_eq!(found.len(), 31, "{found:?}");
    assert_eq!(found["topology:forever"], -1);
    for key in &keys {
        assert!(found[key] > 50_000 && found[key] <= 60_000, "{key}: {}", found[key]);
    }

    redis.freeze();
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.thaw();
    let got: String = redis::cmd("GET").arg(&keys[0]).query_async(&mut redis.conn().await).await.unwrap();
    assert_eq!(got, "v", "the cluster answers again after a thaw");

    redis.stop();
    assert!(connect(redis.port, REDIS_PASSWORD).await.is_err(), "stopped means down");
    let restart = Instant::now();
    redis.restart().await;
    eprintln!("TestRedis (cluster): restart of all nodes took {:?}", restart.elapsed());
    assert!(redis.keys_with_ttl().await.is_empty(), "nothing was persisted");
    let mut conn = redis.conn().await;
    for key in &keys {
        let _: () = redis::cmd("SET").arg(key).arg("again").query_async(&mut conn).await.unwrap();
    }
    assert_eq!(redis.keys_with_ttl().await.len(), 30, "the re-formed cluster serves every slot");
}
