//! The test harness: a real `redis-server` per test (or a Redis Cluster in
//! its place, `REPORTD_TEST_REDIS=cluster`), Redis under Sentinel and Redis
//! Cluster for failover tests (`TestSentinels`, `TestCluster`), the service
//! in-process (`TestApp`) or as a child process (`TestProcess`), and an HTTP
//! client that speaks the service's API.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use reportd::{App, Cli};
use serde_json::{Value, json};
use tempfile::TempDir;

pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret-0123456789";
pub const REDIS_PASSWORD: &str = "s3cret:pass@word";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn find_binary(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")]) {
        for name in names {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// True when the Redis tests run against a Redis Cluster
/// (`REPORTD_TEST_REDIS=cluster`): [`TestRedis`] then starts a
/// [`TestCluster`] underneath, so that the tests written for one server check
/// the cluster mode without being written twice.
pub fn cluster_pass() -> bool {
    match std::env::var("REPORTD_TEST_REDIS").as_deref() {
        Ok("cluster") => true,
        Ok("single") | Ok("") | Err(_) => false,
        Ok(other) => panic!("REPORTD_TEST_REDIS must be `single` or `cluster`, not {other:?}"),
    }
}

/// The `redis://` URL of a local server. The password is percent-encoded:
/// the test passwords hold `:` and `@`, which a URL cannot carry raw.
pub fn redis_url(port: u16, password: &str) -> String {
    let pw: String = password
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect();
    format!("redis://:{pw}@127.0.0.1:{port}/0")
}

/// A connection to one local server (a data node or a sentinel). The
/// response timeout is longer than redis-rs's default of 500 ms because
/// tests send `WAIT 1 1000`, which may take its whole second; a dead server
/// still fails within the connect timeout.
pub async fn connect(port: u16, password: &str) -> redis::RedisResult<MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(5)));
    redis::Client::open(redis_url(port, password))?.get_multiplexed_async_connection_with_config(&config).await
}

/// A connection that tests use for direct commands (GET, PTTL, XLEN …):
/// to the one server, or to the whole cluster in cluster mode (the cluster
/// client sends each command to the node that owns its key).
#[derive(Clone)]
pub enum RedisConn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

/// A private `redis-server` on a free port, with a password and no
/// persistence; killed when dropped. With `REPORTD_TEST_REDIS=cluster` it is
/// a [`TestCluster`] instead, behind the same methods (see [`cluster_pass`]).
pub struct TestRedis {
    /// The server's port; in cluster mode the first seed node's.
    pub port: u16,
    child: Option<Child>,
    cluster: Option<TestCluster>,
    dir: TempDir,
}

impl TestRedis {
    pub async fn start() -> Self {
        if cluster_pass() {
            return Self::start_cluster().await;
        }
        let mut redis = Self { port: free_port(), child: None, cluster: None, dir: TempDir::new().unwrap() };
        redis.spawn().await;
        redis
    }

    /// The cluster mode of [`start`](Self::start), whatever the environment
    /// says (the harness's own tests check it in every pass).
    pub async fn start_cluster() -> Self {
        let cluster = TestCluster::start().await;
        Self { port: cluster.ports()[0], child: None, cluster: Some(cluster), dir: TempDir::new().unwrap() }
    }

    async fn spawn(&mut self) {
        let child = Command::new(redis_server())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--requirepass", REDIS_PASSWORD])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = self.try_connect().await
                && redis::cmd("PING").query_async::<String>(&mut c).await.is_ok()
            {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not answer on port {}", self.port);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn try_connect(&self) -> redis::RedisResult<MultiplexedConnection> {
        connect(self.port, REDIS_PASSWORD).await
    }

    /// The server's URL. In cluster mode it is the first seed node's URL: a
    /// plain (not cluster-aware) client reaches only that node's slots
    /// through it, so the service under test must be configured with
    /// [`Settings::with_redis`], which names every node.
    /// How the service reaches this Redis: one server, or (cluster mode)
    /// the cluster's nodes.
    pub fn topology(&self) -> reportd::state::RedisTopology {
        match &self.cluster {
            Some(cluster) => reportd::state::RedisTopology::Cluster { nodes: cluster.nodes() },
            None => reportd::state::RedisTopology::Single,
        }
    }

    pub fn url(&self) -> String {
        redis_url(self.port, REDIS_PASSWORD)
    }

    pub async fn conn(&self) -> RedisConn {
        match &self.cluster {
            Some(cluster) => RedisConn::Cluster(cluster.cluster_conn().await),
            None => RedisConn::Single(self.try_connect().await.expect("test redis reachable")),
        }
    }

    /// Kills the server (SIGKILL: as abrupt as a crash); in cluster mode
    /// every node.
    pub fn stop(&mut self) {
        if let Some(cluster) = &mut self.cluster {
            cluster.stop_all();
        } else if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): the port stays open but nothing answers,
    /// the worst case for a client. In cluster mode every node.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen server go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(cluster) = &self.cluster {
            cluster.signal_all(sig);
            return;
        }
        let pid = self.child.as_ref().expect("redis running").id();
        assert!(Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success());
    }

    /// Starts it again on the same port (empty: nothing was persisted). In
    /// cluster mode every node starts again from its `nodes.conf`, so the
    /// cluster forms again with the same slots, empty; this returns once it
    /// is healthy.
    pub async fn restart(&mut self) {
        self.stop();
        match &mut self.cluster {
            Some(cluster) => cluster.restart_all().await,
            None => self.spawn().await,
        }
    }

    /// Every key with its remaining TTL in milliseconds (-1: none). In
    /// cluster mode SCAN goes to every master (a cluster client would send
    /// it to one node only, which holds only its own slots).
    pub async fn keys_with_ttl(&self) -> BTreeMap<String, i64> {
        let mut conns = Vec::new();
        match &self.cluster {
            Some(cluster) => {
                for port in cluster.masters().await {
                    conns.push(cluster.conn_to(port).await);
                }
            }
            None => conns.push(self.try_connect().await.expect("test redis reachable")),
        }
        let mut out = BTreeMap::new();
        for mut conn in conns {
            let mut keys: Vec<String> = Vec::new();
            let mut cursor = 0u64;
            loop {
                let (next, batch): (u64, Vec<String>) =
                    redis::cmd("SCAN").arg(cursor).arg("COUNT").arg(1000).query_async(&mut conn).await.unwrap();
                keys.extend(batch);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            // PTTL on the connection that found the key: in cluster mode
            // that is the key's master.
            for k in keys {
                let ttl: i64 = redis::cmd("PTTL").arg(&k).query_async(&mut conn).await.unwrap();
                // -2: the key expired between SCAN and PTTL (a rate-limit key
                // lives for milliseconds under generous test limits).
                if ttl != -2 {
                    out.insert(k, ttl);
                }
            }
        }
        out
    }

    /// Like [`keys_with_ttl`](Self::keys_with_ttl), without the rate-limit
    /// keys (`{p}:{env}:rl:rate:{limit}:{user|ip|name}:{id}`), which any request
    /// may leave for as long as its burst takes to drain. Each one removed
    /// is checked: it follows that template and expires.
    pub async fn state_keys_with_ttl(&self) -> BTreeMap<String, i64> {
        let mut keys = self.keys_with_ttl().await;
        keys.retain(|key, ttl| {
            let parts: Vec<&str> = key.split(':').collect();
            if parts.get(2..4) != Some(&["rl", "rate"][..]) {
                return true;
            }
            assert!(parts.len() >= 7 && ["user", "ip", "name"].contains(&parts[5]), "{key}");
            assert!(*ttl > 0, "{key} has TTL {ttl}");
            false
        });
        keys
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn redis_server() -> PathBuf {
    find_binary(&["redis-server", "valkey-server"])
        .expect("redis-server not found: run `bash scripts/test.sh`, which installs it")
}

/// One `redis-server` process of a [`TestSentinels`] or [`TestCluster`] (a
/// data node or a sentinel), with the command line it was started with, so
/// that it can be started again the same way. Its log goes to
/// `<dir>/<port>.log` (and what it prints before it opens that file, such as
/// a bad argument, to `<dir>/<port>.out`), so that a timeout can show why.
/// Killed when dropped.
struct Server {
    port: u16,
    args: Vec<OsString>,
    dir: PathBuf,
    password: &'static str,
    child: Option<Child>,
}

impl Server {
    /// Starts a server on a port from `pick_port` with the command line
    /// `args(port)` and waits until it answers `PING`. A server that exits
    /// at once most likely found its port (or its cluster bus port) taken:
    /// the port was free when it was picked, but another test may have
    /// bound it since. It is then tried again on another port, a few times.
    async fn start(
        dir: &Path,
        password: &'static str,
        pick_port: impl Fn() -> u16,
        args: impl Fn(u16) -> Vec<OsString>,
    ) -> Self {
        let mut failures = Vec::new();
        for _ in 0..5 {
            let port = pick_port();
            let mut server = Self { port, args: args(port), dir: dir.to_path_buf(), password, child: None };
            server.spawn();
            match server.wait_answers().await {
                Ok(()) => return server,
                Err(why) => failures.push(why),
            }
        }
        panic!("redis-server did not start on any of 5 ports:\n{}", failures.join("\n"));
    }

    fn spawn(&mut self) {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.out", self.port)))
            .unwrap();
        let child = Command::new(redis_server())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("cannot start redis-server");
        self.child = Some(child);
    }

    /// Waits (at most 10 s) until the server answers `PING`, or fails at once
    /// if it has exited.
    async fn wait_answers(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let Some(child) = self.child.as_mut() else { return Err(format!("{} is not running", self.port)) };
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Err(format!("redis-server on port {} exited with {status}:\n{}", self.port, self.tail()));
            }
            if let Ok(mut conn) = connect(self.port, self.password).await
                && redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("redis-server did not answer on port {}:\n{}", self.port, self.tail()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts it again, on the same port with its (possibly new) `args`.
    async fn restart(&mut self) {
        self.kill();
        self.spawn();
        if let Err(why) = self.wait_answers().await {
            panic!("restarting: {why}");
        }
    }

    fn running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL: as abrupt as a crash.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            assert!(Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success());
        }
    }

    /// The last lines of its log and output, for a failure message.
    fn tail(&self) -> String {
        let mut text = String::new();
        for ext in ["out", "log"] {
            let content = std::fs::read_to_string(self.dir.join(format!("{}.{ext}", self.port))).unwrap_or_default();
            let lines: Vec<&str> = content.lines().collect();
            for line in &lines[lines.len().saturating_sub(15)..] {
                text.push_str(&format!("  [{}.{ext}] {line}\n", self.port));
            }
        }
        text
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The command line of a data node (a master or replica of a
/// [`TestSentinels`] or a node of a [`TestCluster`]): the test password for
/// clients and for its own master (a master that is demoted after a
/// failover must authenticate to the new one), no persistence. A master
/// sends a replica its first copy at once: by default Redis 7 waits 5 s for
/// more replicas to share the transfer, which would be most of a cluster's
/// start-up time here.
fn data_node_args(dir: &Path, port: u16) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    for arg in [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--requirepass",
        REDIS_PASSWORD,
        "--masterauth",
        REDIS_PASSWORD,
        "--save",
        "",
        "--appendonly",
        "no",
        "--repl-diskless-sync-delay",
        "0",
        "--daemonize",
        "no",
        "--loglevel",
        "notice",
    ] {
        args.push(arg.into());
    }
    args.push("--dir".into());
    args.push(dir.into());
    args.push("--logfile".into());
    args.push(dir.join(format!("{port}.log")).into());
    args
}

/// Runs one command on one local server, on a connection of its own, with
/// failures as text (for the readiness checks, which retry).
async fn command<T: redis::FromRedisValue>(port: u16, password: &str, cmd: &redis::Cmd) -> Result<T, String> {
    let mut conn = connect(port, password).await.map_err(|e| format!("{port}: cannot connect: {e}"))?;
    cmd.query_async(&mut conn).await.map_err(|e| format!("{port}: {e}"))
}

/// Whether an `INFO` or `CLUSTER INFO` text has the line `field:value`.
fn has_info_line(text: &str, field: &str, value: &str) -> bool {
    text.lines().any(|line| line.trim_end() == format!("{field}:{value}"))
}

/// Polls `check` until it gives a value, for at most `within`; on timeout
/// the last reason it gave.
async fn poll<T, F, Fut>(within: Duration, mut check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match check().await {
            Ok(value) => return Ok(value),
            Err(why) if Instant::now() >= deadline => return Err(why),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The password of the test sentinels themselves (their `requirepass`),
/// other than the data nodes' so that a mix-up fails.
pub const SENTINEL_PASSWORD: &str = "sentinel:pw@rd-7";

/// The name under which the sentinels monitor the master.
pub const SENTINEL_MASTER: &str = "mymaster";

/// Redis under Sentinel: a master, one replica and three sentinels
/// (quorum 2) on free ports, all with passwords, tuned to fail over within
/// seconds; every process is killed when dropped.
pub struct TestSentinels {
    /// The data nodes: the first master, then its replica (the roles change
    /// with failovers: ask [`master_port`](Self::master_port)).
    data: Vec<Server>,
    sentinels: Vec<Server>,
    dir: TempDir,
}

impl TestSentinels {
    /// Starts the set and returns once a failover can happen at once: the
    /// replica is in sync, and every sentinel knows the master, its replica
    /// and the two other sentinels.
    pub async fn start() -> Self {
        let dir = TempDir::new().unwrap();
        let path = dir.path();
        let master = Server::start(path, REDIS_PASSWORD, free_port, |port| data_node_args(path, port)).await;
        let master_port = master.port;
        let replica =
            Server::start(path, REDIS_PASSWORD, free_port, |port| replica_args(path, port, master_port)).await;
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            sentinels.push(
                Server::start(path, SENTINEL_PASSWORD, free_port, |port| sentinel_args(path, port, master_port)).await,
            );
        }
        let set = Self { data: vec![master, replica], sentinels, dir };
        set.wait_ready(Duration::from_secs(30), "a new sentinel set").await;
        set
    }

    /// The sentinels' addresses (`127.0.0.1:port`), for `REDIS_SENTINELS`.
    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect()
    }

    /// The port of the master now, as a sentinel names it.
    pub async fn master_port(&self) -> u16 {
        let mut why = String::from("no sentinel is running");
        for sentinel in self.sentinels.iter().filter(|s| s.running()) {
            match named_master(sentinel.port).await {
                Ok(port) => return port,
                Err(e) => why = e,
            }
        }
        panic!("no sentinel names the master: {why}");
    }

    /// Kills (SIGKILL) the data node that is master now; returns its port.
    pub async fn kill_master(&mut self) -> u16 {
        let port = self.master_port().await;
        let node = self.data.iter_mut().find(|n| n.port == port).expect("the master is one of the data nodes");
        assert!(node.running(), "the sentinels name {port} as master, but it is not running");
        node.kill();
        port
    }

    /// Polls the sentinels until every running one names a master other
    /// than `old_port`, the same one, and that node says it is a master;
    /// returns its port.
    pub async fn wait_for_new_master(&self, old_port: u16, within: Duration) -> u16 {
        let found = poll(within, || async {
            let mut named = None;
            for sentinel in self.sentinels.iter().filter(|s| s.running()) {
                let port = named_master(sentinel.port).await?;
                if port == old_port {
                    return Err(format!("sentinel {} still names {old_port}", sentinel.port));
                }
                if named.is_some_and(|p| p != port) {
                    return Err(format!("the sentinels name {port} and {named:?}"));
                }
                named = Some(port);
            }
            let port = named.ok_or("no sentinel is running")?;
            let role: Vec<redis::Value> = command(port, REDIS_PASSWORD, &redis::cmd("ROLE")).await?;
            match role.first() {
                Some(redis::Value::BulkString(role)) if role == b"master" => Ok(port),
                other => Err(format!("{port} is named master but its ROLE is {other:?}")),
            }
        })
        .await;
        found.unwrap_or_else(|why| panic!("no new master within {within:?}: {why}\n{}", self.tails()))
    }

    /// Starts a killed data node again on its port, as a replica of the
    /// master now (as an operator would), and returns once it is in sync
    /// and every sentinel sees it.
    pub async fn restart_node(&mut self, port: u16) {
        let master = self.master_port().await;
        assert_ne!(master, port, "{port} is the master: kill it first");
        let dir = self.dir.path().to_path_buf();
        let node = self.data.iter_mut().find(|n| n.port == port).expect("a data node of this set");
        assert!(!node.running(), "{port} is running");
        node.args = replica_args(&dir, port, master);
        node.restart().await;
        self.wait_ready(Duration::from_secs(30), &format!("{port} back as a replica")).await;
    }

    /// A connection to one data node.
    pub async fn conn_to(&self, port: u16) -> MultiplexedConnection {
        connect(port, REDIS_PASSWORD).await.unwrap_or_else(|e| panic!("data node {port}: {e}"))
    }

    async fn wait_ready(&self, within: Duration, what: &str) {
        if let Err(why) = poll(within, || self.check_ready()).await {
            panic!("{what} was not ready within {within:?}: {why}\n{}", self.tails());
        }
    }

    /// Ready for a failover: every data node runs; every sentinel names the
    /// same master, which says it is one, and sees the other data node as a
    /// healthy replica and two other sentinels; the replica's link to the
    /// master is up.
    async fn check_ready(&self) -> Result<(), String> {
        if let Some(down) = self.data.iter().find(|n| !n.running()) {
            return Err(format!("data node {} is not running", down.port));
        }
        let mut master = None;
        for sentinel in &self.sentinels {
            let port = named_master(sentinel.port).await?;
            if master.is_some_and(|m| m != port) {
                return Err(format!("the sentinels name {port} and {master:?}"));
            }
            master = Some(port);
            let fields = sentinel_fields(
                command(sentinel.port, SENTINEL_PASSWORD, redis::cmd("SENTINEL").arg("MASTER").arg(SENTINEL_MASTER))
                    .await?,
            );
            for (name, want) in [("flags", "master"), ("num-slaves", "1"), ("num-other-sentinels", "2")] {
                let got = fields.get(name).map(String::as_str);
                if got != Some(want) {
                    return Err(format!("sentinel {}: {name} is {got:?}, not {want}", sentinel.port));
                }
            }
            let replicas: Vec<Vec<String>> =
                command(sentinel.port, SENTINEL_PASSWORD, redis::cmd("SENTINEL").arg("REPLICAS").arg(SENTINEL_MASTER))
                    .await?;
            let replicas: Vec<BTreeMap<String, String>> = replicas.into_iter().map(sentinel_fields).collect();
            let healthy = replicas.iter().any(|r| {
                r.get("flags").map(String::as_str) == Some("slave")
                    && r.get("port").and_then(|p| p.parse::<u16>().ok()).is_some_and(|p| p != port)
            });
            if !healthy {
                return Err(format!("sentinel {} sees no healthy replica: {replicas:?}", sentinel.port));
            }
        }
        let master = master.ok_or("no sentinels")?;
        if !self.data.iter().any(|n| n.port == master) {
            return Err(format!("the sentinels name {master}, which is not a data node of this set"));
        }
        for node in &self.data {
            let info: String = command(node.port, REDIS_PASSWORD, redis::cmd("INFO").arg("replication")).await?;
            let role = if node.port == master { "master" } else { "slave" };
            if !has_info_line(&info, "role", role) {
                return Err(format!("{} is not a {role}", node.port));
            }
            if node.port != master
                && !(has_info_line(&info, "master_port", &master.to_string())
                    && has_info_line(&info, "master_link_status", "up"))
            {
                return Err(format!("replica {}'s link to {master} is not up", node.port));
            }
        }
        Ok(())
    }

    fn tails(&self) -> String {
        self.data.iter().chain(&self.sentinels).map(Server::tail).collect()
    }
}

/// A data node's command line as a replica of `master`.
fn replica_args(dir: &Path, port: u16, master: u16) -> Vec<OsString> {
    let mut args = data_node_args(dir, port);
    args.extend(["--replicaof".into(), "127.0.0.1".into(), master.to_string().into()]);
    args
}

/// Writes a sentinel's configuration file (a sentinel rewrites it as it
/// learns the set, so it must be a file of its own) and returns the
/// command line that starts it.
fn sentinel_args(dir: &Path, port: u16, master: u16) -> Vec<OsString> {
    let file = dir.join(format!("sentinel-{port}.conf"));
    // Quoted, as Redis's config parser reads quotes: the passwords hold
    // characters a reader would otherwise have to check.
    let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let config = format!(
        "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\nlogfile {log}\nloglevel notice\n\
         requirepass {sentinel_pw}\n\
         sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {master} 2\n\
         sentinel auth-pass {SENTINEL_MASTER} {data_pw}\n\
         sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
         sentinel failover-timeout {SENTINEL_MASTER} 10000\n\
         sentinel parallel-syncs {SENTINEL_MASTER} 1\n",
        dir = quote(&dir.display().to_string()),
        log = quote(&dir.join(format!("{port}.log")).display().to_string()),
        sentinel_pw = quote(SENTINEL_PASSWORD),
        data_pw = quote(REDIS_PASSWORD),
    );
    std::fs::write(&file, config).unwrap();
    vec![file.into(), "--sentinel".into()]
}

/// The master a sentinel names now.
async fn named_master(sentinel: u16) -> Result<u16, String> {
    let addr: Option<(String, String)> = command(
        sentinel,
        SENTINEL_PASSWORD,
        redis::cmd("SENTINEL").arg("GET-MASTER-ADDR-BY-NAME").arg(SENTINEL_MASTER),
    )
    .await?;
    let (_, port) = addr.ok_or_else(|| format!("sentinel {sentinel} does not know {SENTINEL_MASTER}"))?;
    port.parse().map_err(|_| format!("sentinel {sentinel} names port {port:?}"))
}

/// A sentinel's answer about one instance (a flat list of names and
/// values) by name.
fn sentinel_fields(flat: Vec<String>) -> BTreeMap<String, String> {
    flat.chunks_exact(2).map(|pair| (pair[0].clone(), pair[1].clone())).collect()
}

/// A Redis Cluster of three masters with one replica each, on local ports,
/// with passwords and no persistence, tuned (`cluster-node-timeout 1000`)
/// to fail over within seconds; every node is killed when dropped.
pub struct TestCluster {
    nodes: Vec<Server>,
    /// The slot ranges each killed master owned, by its port.
    killed_slots: BTreeMap<u16, Vec<(u16, u16)>>,
    /// The nodes' `nodes.conf` files and logs; removed after the nodes are
    /// killed (fields drop in order).
    _dir: TempDir,
}

/// One node as a node sees it (a line of `CLUSTER NODES`), without what
/// depends on who looks (`myself`, ping times, link state).
#[derive(Clone, Debug, PartialEq, Eq)]
struct ClusterNode {
    id: String,
    port: u16,
    master: bool,
    /// The id of its master, for a replica.
    master_id: Option<String>,
    /// Flagged `fail`, `fail?`, `handshake` or `noaddr`.
    failing: bool,
    slots: Vec<(u16, u16)>,
}

impl TestCluster {
    /// Starts six nodes, joins them with `redis-cli --cluster create` and
    /// returns once the cluster is healthy (see `check_healthy`).
    pub async fn start() -> Self {
        let dir = TempDir::new().unwrap();
        let path = dir.path();
        let mut nodes = Vec::new();
        for _ in 0..6 {
            nodes.push(Server::start(path, REDIS_PASSWORD, cluster_port, |port| cluster_node_args(path, port)).await);
        }
        let cli = find_binary(&["redis-cli", "valkey-cli"])
            .expect("redis-cli not found: run `bash scripts/test.sh`, which installs it");
        let create = tokio::process::Command::new(cli)
            .args(["-a", REDIS_PASSWORD, "--no-auth-warning", "--cluster", "create"])
            .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), create)
            .await
            .expect("redis-cli --cluster create took over 60 s")
            .expect("cannot run redis-cli");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Self { nodes, killed_slots: BTreeMap::new(), _dir: dir };
        cluster.wait_healthy(Duration::from_secs(30), "a new cluster").await;
        cluster
    }

    /// The ports of all six nodes, running or not.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Every node's address (`127.0.0.1:port`), for `REDIS_CLUSTER_NODES`.
    pub fn nodes(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect()
    }

    /// The ports of the masters now (those that own slots and are not
    /// failing), ordered by their first slot: master 0 owns slot 0.
    pub async fn masters(&self) -> Vec<u16> {
        let view = self.live_view().await;
        masters_of(&view).iter().map(|m| m.port).collect()
    }

    /// Kills (SIGKILL) the master with this index in [`masters`](Self::masters);
    /// returns its port.
    pub async fn kill_master(&mut self, index: usize) -> u16 {
        let view = self.live_view().await;
        let masters = masters_of(&view);
        let master = masters.get(index).unwrap_or_else(|| panic!("no master {index}: {masters:?}"));
        self.killed_slots.insert(master.port, master.slots.clone());
        let port = master.port;
        self.nodes.iter_mut().find(|n| n.port == port).expect("a node of this cluster").kill();
        port
    }

    /// Waits until every running node says `cluster_state:ok` and that one
    /// other node, the same for all, owns the slots of the killed master
    /// `old_port`; returns that node's port.
    pub async fn wait_for_promotion(&self, old_port: u16, within: Duration) -> u16 {
        let slots =
            self.killed_slots.get(&old_port).unwrap_or_else(|| panic!("{old_port} was not killed by kill_master"));
        let found = poll(within, || async {
            let mut owner = None;
            for node in self.nodes.iter().filter(|n| n.running()) {
                let info: String = command(node.port, REDIS_PASSWORD, redis::cmd("CLUSTER").arg("INFO")).await?;
                if !has_info_line(&info, "cluster_state", "ok") {
                    return Err(format!("{}: cluster_state is not ok", node.port));
                }
                let view = self.view(node.port).await?;
                let new = view
                    .iter()
                    .find(|n| n.master && !n.failing && n.port != old_port && n.slots == *slots)
                    .ok_or_else(|| format!("{}: no other master owns {slots:?} yet", node.port))?;
                if owner.is_some_and(|o| o != new.port) {
                    return Err(format!("nodes disagree: {} and {owner:?} own {slots:?}", new.port));
                }
                owner = Some(new.port);
            }
            owner.ok_or_else(|| "no node is running".to_string())
        })
        .await;
        found.unwrap_or_else(|why| panic!("no promotion within {within:?}: {why}\n{}", self.tails()))
    }

    /// Starts a killed node again on its port, from its `nodes.conf` (as an
    /// operator would): a master that was replaced comes back as a replica
    /// of its replacement. Returns once the cluster is healthy again.
    pub async fn restart_node(&mut self, port: u16) {
        let node = self.nodes.iter_mut().find(|n| n.port == port).expect("a node of this cluster");
        assert!(!node.running(), "{port} is running");
        node.restart().await;
        self.killed_slots.remove(&port);
        self.wait_healthy(Duration::from_secs(30), &format!("the cluster with {port} back")).await;
    }

    /// A cluster client over the running nodes.
    pub async fn cluster_conn(&self) -> ClusterConnection {
        let seeds: Vec<String> =
            self.nodes.iter().filter(|n| n.running()).map(|n| format!("redis://127.0.0.1:{}", n.port)).collect();
        redis::cluster::ClusterClientBuilder::new(seeds)
            .password(REDIS_PASSWORD)
            .connection_timeout(Duration::from_secs(1))
            // Long enough for `WAIT 1 1000`, and a bound on a request's
            // retries while a slot has no master.
            .response_timeout(Duration::from_secs(5))
            .build()
            .expect("cluster client")
            .get_async_connection()
            .await
            .unwrap_or_else(|e| panic!("cluster unreachable: {e}\n{}", self.tails()))
    }

    /// A connection to one node (for commands that must go to that node,
    /// such as SCAN).
    pub async fn conn_to(&self, port: u16) -> MultiplexedConnection {
        connect(port, REDIS_PASSWORD).await.unwrap_or_else(|e| panic!("cluster node {port}: {e}"))
    }

    /// Kills every node (SIGKILL).
    pub fn stop_all(&mut self) {
        self.nodes.iter_mut().for_each(Server::kill);
    }

    /// Sends a signal (`-STOP`, `-CONT`) to every running node.
    pub fn signal_all(&self, sig: &str) {
        self.nodes.iter().for_each(|n| n.signal(sig));
    }

    /// Starts every node again from its `nodes.conf`, so that the same
    /// cluster forms again (empty: nothing was persisted); returns once it
    /// is healthy.
    pub async fn restart_all(&mut self) {
        for node in &mut self.nodes {
            node.restart().await;
        }
        self.killed_slots.clear();
        self.wait_healthy(Duration::from_secs(30), "the restarted cluster").await;
    }

    async fn wait_healthy(&self, within: Duration, what: &str) {
        if let Err(why) = poll(within, || self.check_healthy()).await {
            panic!("{what} was not healthy within {within:?}: {why}\n{}", self.tails());
        }
    }

    /// Healthy: every node runs, says `cluster_state:ok` with all 16384
    /// slots served, and sees the same six nodes, none failing or
    /// disconnected; three masters own slots and have one replica each,
    /// and every replica's link to its master is up.
    async fn check_healthy(&self) -> Result<(), String> {
        let mut agreed: Option<(u16, Vec<ClusterNode>)> = None;
        for node in &self.nodes {
            if !node.running() {
                return Err(format!("{} is not running", node.port));
            }
            let info: String = command(node.port, REDIS_PASSWORD, redis::cmd("CLUSTER").arg("INFO")).await?;
            for (field, value) in [("cluster_state", "ok"), ("cluster_slots_ok", "16384"), ("cluster_known_nodes", "6")]
            {
                if !has_info_line(&info, field, value) {
                    return Err(format!("{}: {field} is not {value}", node.port));
                }
            }
            let text: String = command(node.port, REDIS_PASSWORD, redis::cmd("CLUSTER").arg("NODES")).await?;
            if let Some(line) = text.lines().find(|l| l.split(' ').nth(7) != Some("connected")) {
                return Err(format!("{}: a link is down: {line}", node.port));
            }
            let view = parse_cluster_nodes(&text).map_err(|e| format!("{}: {e}", node.port))?;
            if let Some(failing) = view.iter().find(|n| n.failing) {
                return Err(format!("{} sees {failing:?}", node.port));
            }
            match &agreed {
                Some((first, seen)) if *seen != view => {
                    return Err(format!("{first} and {} see different clusters: {seen:?} / {view:?}", node.port));
                }
                Some(_) => {}
                None => agreed = Some((node.port, view)),
            }
        }
        let (_, view) = agreed.ok_or("no nodes")?;
        let masters = masters_of(&view);
        if masters.len() != 3 {
            return Err(format!("{} masters own slots, not 3: {view:?}", masters.len()));
        }
        for master in masters {
            let replicas: Vec<&ClusterNode> =
                view.iter().filter(|n| n.master_id.as_deref() == Some(master.id.as_str())).collect();
            let [replica] = replicas[..] else {
                return Err(format!("master {} has {} replicas", master.port, replicas.len()));
            };
            let info: String = command(replica.port, REDIS_PASSWORD, redis::cmd("INFO").arg("replication")).await?;
            if !has_info_line(&info, "master_link_status", "up") {
                return Err(format!("replica {}'s link to {} is not up", replica.port, master.port));
            }
        }
        Ok(())
    }

    /// The cluster as one node sees it, ordered by port.
    async fn view(&self, port: u16) -> Result<Vec<ClusterNode>, String> {
        let text: String = command(port, REDIS_PASSWORD, redis::cmd("CLUSTER").arg("NODES")).await?;
        parse_cluster_nodes(&text).map_err(|e| format!("{port}: {e}"))
    }

    /// The cluster as the first running node that answers sees it.
    async fn live_view(&self) -> Vec<ClusterNode> {
        let mut why = String::from("no node is running");
        for node in self.nodes.iter().filter(|n| n.running()) {
            match self.view(node.port).await {
                Ok(view) => return view,
                Err(e) => why = e,
            }
        }
        panic!("no cluster node answers: {why}");
    }

    fn tails(&self) -> String {
        self.nodes.iter().map(Server::tail).collect()
    }
}

/// The masters that own slots and are not failing, by their first slot.
fn masters_of(view: &[ClusterNode]) -> Vec<&ClusterNode> {
    let mut masters: Vec<&ClusterNode> =
        view.iter().filter(|n| n.master && !n.failing && !n.slots.is_empty()).collect();
    masters.sort_by_key(|m| m.slots[0]);
    masters
}

/// Reads `CLUSTER NODES`: `<id> <ip:port@bus[,hostname]> <flags> <master>
/// <ping-sent> <pong-recv> <epoch> <link> <slot>…`, where a slot is `n`,
/// `a-b`, or `[…]` for one being migrated (not owned yet, so skipped).
fn parse_cluster_nodes(text: &str) -> Result<Vec<ClusterNode>, String> {
    let mut nodes = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() < 8 {
            return Err(format!("short CLUSTER NODES line: {line}"));
        }
        let address = fields[1].split(['@', ',']).next().unwrap_or_default();
        let port = address
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .filter(|port| *port != 0)
            .ok_or_else(|| format!("no port yet in: {line}"))?;
        let flags: Vec<&str> = fields[2].split(',').collect();
        let mut slots = Vec::new();
        for slot in fields[8..].iter().filter(|s| !s.starts_with('[')) {
            let (start, end) = slot.split_once('-').unwrap_or((slot, slot));
            let parse = |s: &str| s.parse::<u16>().map_err(|_| format!("bad slot {slot:?} in: {line}"));
            slots.push((parse(start)?, parse(end)?));
        }
        slots.sort();
        nodes.push(ClusterNode {
            id: fields[0].to_owned(),
            port,
            master: flags.contains(&"master"),
            master_id: (fields[3] != "-").then(|| fields[3].to_owned()),
            failing: flags.iter().any(|f| ["fail", "fail?", "handshake", "noaddr"].contains(f)),
            slots,
        });
    }
    nodes.sort_by_key(|n| n.port);
    Ok(nodes)
}

/// The command line of a cluster node: its `nodes.conf` in the cluster's
/// directory (so a restarted node rejoins with its identity), a short node
/// timeout (failovers within seconds), reads served while the cluster is
/// down.
fn cluster_node_args(dir: &Path, port: u16) -> Vec<OsString> {
    let mut args = data_node_args(dir, port);
    args.extend(["--cluster-enabled".into(), "yes".into(), "--cluster-config-file".into()]);
    args.push(dir.join(format!("nodes-{port}.conf")).into());
    for arg in ["--cluster-node-timeout", "1000", "--cluster-allow-reads-when-down", "yes"] {
        args.push(arg.into());
    }
    args
}

/// A port for a cluster node. Its cluster bus listens on port + 10000, so
/// both must be free; both stay below Linux's ephemeral range (from 32768),
/// from which [`free_port`] and outgoing connections take theirs, so that
/// neither is likely to be taken between picking and binding. The ports this
/// process handed out are not handed out again (two clusters started at once
/// would otherwise pick from the same few free ports).
fn cluster_port() -> u16 {
    static TAKEN: std::sync::Mutex<BTreeSet<u16>> = std::sync::Mutex::new(BTreeSet::new());
    let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = rand::random_range(10_000..22_000u16);
        let bus = port + 10_000;
        if taken.contains(&port) || taken.contains(&bus) {
            continue;
        }
        let free = TcpListener::bind(("127.0.0.1", port)).is_ok() && TcpListener::bind(("127.0.0.1", bus)).is_ok();
        if free {
            taken.insert(port);
            taken.insert(bus);
            return port;
        }
    }
}

/// Settings by their environment names (`REDIS_ENABLED` …), the same for
/// in-process apps (as flags) and child processes (as environment).
#[derive(Clone, Debug)]
pub struct Settings(pub BTreeMap<String, String>);

impl Settings {
    /// The database of the pass (see [`postgres_pass`]): a private SQLite
    /// file in `dir`, or a PostgreSQL database of its own for `dir`. Settings
    /// made for one directory share that database (two instances of one
    /// service, or one instance restarted); other directories never do.
    /// Also a fixed JWT secret and `APP_ENV=test`.
    pub fn new(dir: &Path) -> Self {
        let settings = Self::sqlite(dir);
        if postgres_pass() { settings.set("DATABASE_URL", &postgres_database(dir)) } else { settings }
    }

    /// Like [`Settings::new`], but on SQLite in both passes: for tests of
    /// SQLite itself (its files, its locking).
    pub fn sqlite(dir: &Path) -> Self {
        let mut s = BTreeMap::new();
        s.insert("DATABASE_URL".into(), format!("sqlite://{}/reportd.db", dir.display()));
        s.insert("DATA_DIR".into(), dir.display().to_string());
        s.insert("JWT_SECRET".into(), JWT_SECRET.into());
        s.insert("APP_ENV".into(), "test".into());
        s.insert("REDIS_HEALTH_INTERVAL_MS".into(), "100".into());
        s.insert("FLAGS_REFRESH_MS".into(), "200".into());
        // In-process apps run in the test binary: parse workers are the real binary.
        s.insert("IMPORT_PARSER_EXE".into(), binary().into());
        // Tests register many users from 127.0.0.1 and poll fast; the limit
        // tests (limits.rs) set the limits they test.
        for (name, value) in [
            ("LIMIT_LOGINS_PER_MIN", "100000"),
            ("LIMIT_POLLS_PER_SEC", "10000"),
            ("LIMIT_POLLS_BURST", "10000"),
            ("LIMIT_REQUESTS_PER_SEC", "10000"),
            ("LIMIT_REQUESTS_BURST", "10000"),
            ("LIMIT_SSE_PER_USER", "1000"),
            ("LIMIT_IMPORTS_PER_USER", "1000"),
        ] {
            s.insert(name.into(), value.into());
        }
        Self(s)
    }

    /// The `DATABASE_URL` these settings give the service.
    pub fn database_url(&self) -> &str {
        &self.0["DATABASE_URL"]
    }

    /// Redis configured and every feature flag on (in cluster mode, the
    /// cluster: see [`cluster_pass`]).
    pub fn with_redis(self, redis: &TestRedis) -> Self {
        match &redis.cluster {
            Some(cluster) => self.with_cluster(cluster),
            None => self.redis_at(&[("REDIS_URL", redis.url())]),
        }
    }

    /// Redis under Sentinel configured and every feature flag on.
    pub fn with_sentinels(self, sentinels: &TestSentinels) -> Self {
        self.redis_at(&[
            ("REDIS_SENTINELS", sentinels.sentinel_addrs().join(",")),
            ("REDIS_SENTINEL_MASTER", SENTINEL_MASTER.to_owned()),
            ("REDIS_SENTINEL_PASSWORD", SENTINEL_PASSWORD.to_owned()),
            ("REDIS_PASSWORD", REDIS_PASSWORD.to_owned()),
        ])
    }

    /// A Redis Cluster configured and every feature flag on.
    pub fn with_cluster(self, cluster: &TestCluster) -> Self {
        self.redis_at(&[
            ("REDIS_CLUSTER_NODES", cluster.nodes().join(",")),
            ("REDIS_PASSWORD", REDIS_PASSWORD.to_owned()),
        ])
    }

    /// Redis at the place `location` names (a URL, sentinels or cluster
    /// nodes) and every feature flag on. The settings of the other ways to
    /// name a place are removed, so that the service sees exactly one.
    fn redis_at(mut self, location: &[(&str, String)]) -> Self {
        for name in [
            "REDIS_URL",
            "REDIS_SENTINELS",
            "REDIS_SENTINEL_MASTER",
            "REDIS_SENTINEL_PASSWORD",
            "REDIS_CLUSTER_NODES",
            "REDIS_PASSWORD",
        ] {
            self.0.remove(name);
        }
        for (name, value) in location {
            self = self.set(name, value);
        }
        self.set("REDIS_ENABLED", "1")
            .set("REDIS_TASK_STATUS_ENABLED", "1")
            .set("REDIS_CHAT_SESSION_ENABLED", "1")
            .set("REDIS_CACHE_ENABLED", "1")
            .set("REDIS_RATE_LIMIT_ENABLED", "1")
    }

    /// The model at `base_url` (a `FakeLlm`'s), with a test key, fast
    /// retries and fast delta merging.
    pub fn with_llm(self, base_url: &str) -> Self {
        self.set("LLM_BASE_URL", base_url)
            .set("LLM_API_KEY", "sk-test-secret-key")
            .set("LLM_MODEL", "fake-model")
            .set("LLM_RETRY_BASE_MS", "20")
            .set("AI_DELTA_INTERVAL_MS", "20")
    }

    pub fn set(mut self, name: &str, value: &str) -> Self {
        self.0.insert(name.into(), value.into());
        self
    }

    fn as_args(&self) -> Vec<String> {
        let mut args = vec!["reportd".to_string()];
        for (k, v) in &self.0 {
            args.push(format!("--{}", k.to_ascii_lowercase().replace('_', "-")));
            args.push(v.clone());
        }
        args
    }
}

/// True in the PostgreSQL pass of the suite (`REPORTD_TEST_DB=postgres`,
/// which `scripts/test.sh` sets together with `REPORTD_TEST_POSTGRES`).
pub fn postgres_pass() -> bool {
    match std::env::var("REPORTD_TEST_DB").as_deref() {
        Ok("postgres") => true,
        Ok("sqlite") | Ok("") | Err(_) => false,
        Ok(other) => panic!("REPORTD_TEST_DB must be `sqlite` or `postgres`, not {other:?}"),
    }
}

/// The URL of the PostgreSQL database that belongs to `dir`, created on the
/// `REPORTD_TEST_POSTGRES` server the first time it is asked for.
///
/// The database's URL is written into `dir`, so that it lives exactly as
/// long as the directory: asked again for the same directory it is the same
/// database, and a later directory that happens to get the same name gets a
/// new one. Once a directory is gone its test has ended, and its database is
/// dropped when the next one is created (so a run does not pile up a
/// database per test on the disk); the last few go with the throw-away
/// cluster of `scripts/test.sh`.
fn postgres_database(dir: &Path) -> String {
    /// The databases this process created, with the directory each belongs to.
    static CREATED: std::sync::Mutex<Vec<(PathBuf, String)>> = std::sync::Mutex::new(Vec::new());

    let marker = dir.join(".reportd-test-postgres-url");
    if let Ok(url) = std::fs::read_to_string(&marker) {
        return url;
    }
    let server = std::env::var("REPORTD_TEST_POSTGRES").expect(
        "REPORTD_TEST_DB=postgres needs REPORTD_TEST_POSTGRES (a server URL such as \
         postgres://postgres@127.0.0.1:5432/postgres): run `bash scripts/test.sh`, which starts one",
    );
    // Lower case letters and digits only, so the name needs no quoting.
    let name = format!("api_{}", uuid::Uuid::new_v4().simple());
    let ended: Vec<String> = {
        let mut created = CREATED.lock().unwrap_or_else(|e| e.into_inner());
        let (gone, live): (Vec<_>, Vec<_>) = created.drain(..).partition(|(dir, _)| !dir.exists());
        *created = live;
        created.push((dir.to_path_buf(), name.clone()));
        gone.into_iter().map(|(_, name)| name).collect()
    };
    let mut statements: Vec<String> =
        ended.iter().map(|old| format!("DROP DATABASE IF EXISTS {old} WITH (FORCE)")).collect();
    statements.push(format!("CREATE DATABASE {name}"));
    // Settings::new is synchronous and is called inside tokio runtimes,
    // which cannot be blocked on: the statements run on a thread of its own
    // with a small runtime of its own.
    let admin = server.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            use sqlx::Connection;
            let mut conn = sqlx::postgres::PgConnection::connect(&admin)
                .await
                .unwrap_or_else(|e| panic!("cannot connect to REPORTD_TEST_POSTGRES ({admin}): {e}"));
            let create = statements.pop().unwrap();
            for drop in statements {
                // Best effort: a database left behind only costs disk.
                let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut conn).await;
            }
            sqlx::query(sqlx::AssertSqlSafe(create)).execute(&mut conn).await.expect("CREATE DATABASE");
            let _ = conn.close().await;
        });
    })
    .join()
    .expect("creating the test database failed");
    let (base, query) = match server.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (server.as_str(), None),
    };
    let (root, _) = base.rsplit_once('/').expect("REPORTD_TEST_POSTGRES names a database");
    let url = match query {
        Some(query) => format!("{root}/{name}?{query}"),
        None => format!("{root}/{name}"),
    };
    std::fs::write(&marker, &url).unwrap();
    url
}

/// The service running inside the test process.
pub struct TestApp {
    pub app: Arc<App>,
    pub client: Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: Option<TempDir>,
}

impl TestApp {
    /// An app on the given settings (its directory is the caller's).
    pub async fn start(settings: Settings) -> Self {
        Self::start_inner(settings, None).await
    }

    /// An app with its own temporary directory (database, secret).
    pub async fn spawn(configure: impl FnOnce(Settings) -> Settings) -> Self {
        let dir = TempDir::new().unwrap();
        let settings = configure(Settings::new(dir.path()));
        Self::start_inner(settings, Some(dir)).await
    }

    async fn start_inner(settings: Settings, dir: Option<TempDir>) -> Self {
        let cli = Cli::try_parse_from(settings.as_args()).expect("test settings parse");
        let app = App::build(cli.config).await.expect("app builds");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let served = app.clone();
        tokio::spawn(async move {
            reportd::serve(listener, served, async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Self { client: Client::new(&base), app, shutdown: Some(tx), _dir: dir }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.app.background.cancel();
    }
}

/// The service as a child process of the test (for SIGKILL and two-process tests).
pub struct TestProcess {
    child: Child,
    /// The port it listens on (the deployment tests point nginx at it).
    #[allow(dead_code)]
    pub port: u16,
    pub client: Client,
    pub log: PathBuf,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_reportd")
}

impl TestProcess {
    /// Starts `reportd serve` in `dir` with exactly `settings` as its environment.
    pub async fn start(settings: &Settings, dir: &Path, name: &str) -> Self {
        Self::start_on(settings, dir, name, free_port()).await
    }

    /// Like [`start`](Self::start), on a given port (a restart in place,
    /// behind a proxy that knows the port).
    pub async fn start_on(settings: &Settings, dir: &Path, name: &str, port: u16) -> Self {
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(binary())
            .env_clear()
            .envs(&settings.0)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("RUST_LOG", settings.0.get("RUST_LOG").map_or("info", String::as_str))
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("cannot start reportd");
        let client = Client::new(&format!("http://127.0.0.1:{port}"));
        let mut process = Self { child, port, client, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = process.client.http.get(process.client.url("/healthz")).send().await
                && r.status() == 200
            {
                return process;
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!("reportd exited with {status}: {}", std::fs::read_to_string(&process.log).unwrap_or_default());
            }
            assert!(Instant::now() < deadline, "reportd did not start: {}", process.read_log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The resident memory of the process, in KiB.
    pub fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    pub fn read_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no chance to clean up, as in a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status (waits at most `within`).
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for TestProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An HTTP client for one instance.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub http: reqwest::Client,
}

impl Client {
    pub fn new(base: &str) -> Self {
        // reqwest is built without a bundled TLS provider: building a client
        // without one installed panics.
        reportd::llm::install_tls_provider();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        Self { base: base.to_owned(), http }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn register(&self, username: &str, password: &str) -> reqwest::Response {
        self.http
            .post(self.url("/auth/register"))
            .json(&json!({"username": username, "password": password}))
            .send()
            .await
            .unwrap()
    }

    pub async fn login(&self, username: &str, password: &str) -> String {
        let r = self
            .http
            .post(self.url("/auth/login"))
            .json(&json!({"username": username, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "login of {username}");
        r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned()
    }

    /// Registers a fresh user and returns a token.
    pub async fn user(&self, username: &str) -> String {
        let r = self.register(username, "correct horse battery").await;
        assert_eq!(r.status(), 201, "register {username}");
        self.login(username, "correct horse battery").await
    }

    /// `GET /ai/streams/{stream_id}` with `Last-Event-ID: last_id`: resumes
    /// an answer after the last event the client had.
    pub async fn resume(&self, token: &str, stream_id: &str, last_id: u64) -> reqwest::Response {
        self.http
            .get(self.url(&format!("/ai/streams/{stream_id}")))
            .bearer_auth(token)
            .header("Last-Event-ID", last_id.to_string())
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, token: &str, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).bearer_auth(token).send().await.unwrap()
    }

    pub async fn upload(&self, token: &str, path: &str, filename: &str, bytes: Vec<u8>) -> reqwest::Response {
        let part = reqwest::multipart::Part::bytes(bytes).file_name(filename.to_owned());
        let form = reqwest::multipart::Form::new().part("file", part);
        self.http.post(self.url(path)).bearer_auth(token).multipart(form).send().await.unwrap()
    }

    /// Uploads through `POST /Import_Doc/`, expects 202 and returns the task id.
    pub async fn import(&self, token: &str, filename: &str, bytes: Vec<u8>) -> String {
        let r = self.upload(token, "/Import_Doc/", filename, bytes).await;
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["status"], "pending");
        body["task_id"].as_str().unwrap().to_owned()
    }

    pub async fn status(&self, token: &str, task: &str) -> (u16, Value) {
        let r = self.get(token, &format!("/check_import_status/{task}")).await;
        let code = r.status().as_u16();
        (code, r.json().await.unwrap_or(Value::Null))
    }

    /// Polls until the task is terminal (at most 60 s) and returns it.
    pub async fn wait_done(&self, token: &str, task: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (code, body) = self.status(token, task).await;
            assert_eq!(code, 200, "{body}");
            if body["status"] == "completed" || body["status"] == "failed" {
                return body;
            }
            assert!(Instant::now() < deadline, "task {task} did not finish: {body}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Imports [`sample_text`], waits for it to complete and returns the task id.
    pub async fn imported(&self, token: &str) -> String {
        let task = self.import(token, "a.txt", sample_text()).await;
        let done = self.wait_done(token, &task).await;
        assert_eq!(done["status"], "completed", "{done}");
        task
    }

    pub async fn json(&self, token: &str, path: &str) -> Value {
        let r = self.get(token, path).await;
        assert_eq!(r.status(), 200, "{path}");
        r.json().await.unwrap()
    }

    pub async fn readyz(&self) -> (u16, Value) {
        let r = self.http.get(self.url("/readyz")).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }
}

/// A small text document that imports quickly.
pub fn sample_text() -> Vec<u8> {
    "第一章 背景\n\n火星是太阳系的第四颗行星。Mars is the fourth planet from the Sun.\n".repeat(20).into_bytes()
}

/// Waits (at most `within`) until `check` holds.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The shared corpus of real documents: `../shared/corpus` beside the
/// checkout, or wherever `REPORTD_CORPUS` points.
pub fn corpus_dir() -> PathBuf {
    std::env::var_os("REPORTD_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus"))
}

/// The corpus's MANIFEST.json.
pub fn corpus_manifest() -> Value {
    let dir = corpus_dir();
    let text = std::fs::read_to_string(dir.join("MANIFEST.json"))
        .unwrap_or_else(|e| panic!("the corpus must be at {} (or REPORTD_CORPUS): {e}", dir.display()));
    serde_json::from_str(&text).unwrap()
}

/// One file of the corpus.
pub fn corpus_file(name: &str) -> Vec<u8> {
    std::fs::read(corpus_dir().join(name)).unwrap_or_else(|e| panic!("corpus file {name}: {e}"))
}
