//! Where Redis commands go: one server, the master that Redis Sentinel names,
//! or a Redis Cluster — the one place where the three differ.
//!
//! [`Topology`] hands [`super::redis::RedisBackend`] a [`Conn`] for each
//! command and learns, on every health probe ([`Topology::check`]), what the
//! deployment looks like now:
//!
//! - **single**: one `ConnectionManager` to `REDIS_URL`; it reconnects by itself.
//! - **sentinel**: the master is asked of the sentinels (redis-rs's
//!   `SentinelClient`, which also checks that the named server says it is a
//!   master) and a `ConnectionManager` is opened to it. A `ConnectionManager`
//!   never asks again (NOTES.md), so the connection is dropped on the first
//!   failure that says the master is gone or demoted ([`Topology::forget`])
//!   and every probe asks the sentinels anew: after a failover the next probe
//!   finds the new master, and the blocking readers and subscriptions, which
//!   open their connections from [`Topology::node_client`], follow.
//! - **cluster**: redis-rs's cluster client, which routes each command by its
//!   key's slot and follows `MOVED`/`ASK` and failovers by itself. Every
//!   operation of this service touches one key, so no command can be
//!   cross-slot. The probe reads `CLUSTER NODES` and pings every master.
//!
//! A `Topology` of the replica role serves the reads that
//! [`super::StateLayer::read`] sends to a replica while no master is
//! reachable (Sentinel: a replica the sentinels list as healthy; Cluster:
//! reads routed to replicas, which answer while the cluster is down when the
//! nodes run with `cluster-allow-reads-when-down yes`).
//!
//! Facts that cost time here: a Sentinel promotion kills every client
//! connection of the promoted replica (`CLIENT KILL TYPE normal`), so a read
//! on the replica fails once and must be retried on a new connection; the
//! sentinels' "valid replicas" exclude the one being promoted, so a reader
//! falls back to any server they list; the cluster client routes
//! `ByAddress` only to nodes it is connected to; and it logs a warning about
//! once a second for a dead node until the node is forgotten (the default
//! log filter keeps `redis=error`).

use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo, SingleNodeRoutingInfo};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use serde::Serialize;

use super::redis::RedisSettings;

/// How the Redis deployment is reached (SPEC §4: `REDIS_URL`/`REDIS_HOST`,
/// `REDIS_SENTINELS`, `REDIS_CLUSTER_NODES`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTopology {
    Single,
    Sentinel {
        /// `host:port` of each sentinel.
        sentinels: Vec<String>,
        /// The name the sentinels monitor the master under.
        master: String,
        /// The sentinels' own `requirepass`.
        password: Option<String>,
    },
    Cluster {
        /// `host:port` seeds; the client learns the rest from them.
        nodes: Vec<String>,
    },
}

impl RedisTopology {
    pub fn mode(&self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::Sentinel { .. } => "sentinel",
            Self::Cluster { .. } => "cluster",
        }
    }
}

/// Which servers a [`Topology`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The server(s) that take writes.
    Primary,
    /// Replicas, for reads while no master is reachable.
    Replica,
}

/// A connection for one command, whatever the topology.
#[derive(Clone)]
pub enum Conn {
    Node(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Node(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Node(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Node(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// One server as the last probe saw it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NodeReport {
    pub addr: String,
    /// `master` or `replica`.
    pub role: String,
    /// Hash slots it serves (cluster masters).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slots: Option<u32>,
    /// False when the cluster marks it failing (`fail`/`fail?`) or its link is down.
    pub healthy: bool,
}

/// What the last probe learned, for `/readyz`, `/metrics` and `reportd doctor`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct TopologyReport {
    /// `single`, `sentinel` or `cluster`.
    pub mode: &'static str,
    /// The master commands go to now (single and sentinel), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
    /// Cluster: every node; sentinel: the master and its replicas as the sentinels list them.
    pub nodes: Vec<NodeReport>,
    /// Cluster: slots served by a healthy master (16384 when all are covered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slots_covered: Option<u32>,
    /// Cluster: `cluster_state` of `CLUSTER INFO` (`ok` or `fail`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_state: Option<String>,
    /// Changes of master this instance has seen since it started.
    pub failovers_seen: u64,
}

/// How a connection is obtained, by topology.
enum Link {
    Single(redis::Client),
    Sentinel(tokio::sync::Mutex<SentinelClient>),
    Cluster(redis::cluster::ClusterClient),
}

/// The connection in use, and the node it goes to (single and sentinel).
#[derive(Clone)]
struct Current {
    conn: Conn,
    node: Option<redis::Client>,
    addr: Option<String>,
}

pub struct Topology {
    kind: RedisTopology,
    /// Credentials and database of the data nodes.
    auth: redis::RedisConnectionInfo,
    role: Role,
    link: Link,
    settings: RedisSettings,
    current: RwLock<Option<Current>>,
    connecting: tokio::sync::Mutex<()>,
    report: RwLock<TopologyReport>,
    failovers: AtomicU64,
    /// Sentinel probes so far: the sentinels' list of replicas (a report,
    /// not needed to serve) is read on every tenth, and on a new master.
    probes: AtomicU64,
}

pub const CLUSTER_SLOTS: u32 = 16384;

impl Topology {
    /// Builds the client without connecting (the service starts while Redis
    /// is down). `None` for the replica role of a single server.
    pub fn new(settings: &RedisSettings, role: Role) -> RedisResult<Option<Self>> {
        let info = settings.url.as_str().into_connection_info()?;
        let link = match (&settings.topology, role) {
            (RedisTopology::Single, Role::Replica) => return Ok(None),
            (RedisTopology::Single, Role::Primary) => Link::Single(redis::Client::open(info.clone())?),
            (RedisTopology::Sentinel { sentinels, master, password }, _) => {
                let sentinels: Vec<redis::ConnectionInfo> = sentinels
                    .iter()
                    .map(|addr| {
                        let (host, port) = split_addr(addr)?;
                        let mut redis = redis::RedisConnectionInfo::default();
                        if let Some(pw) = password {
                            redis = redis.set_password(pw);
                        }
                        Ok(redis::ConnectionAddr::Tcp(host, port).into_connection_info()?.set_redis_settings(redis))
                    })
                    .collect::<RedisResult<_>>()?;
                let node =
                    SentinelNodeConnectionInfo::default().set_redis_connection_info(info.redis_settings().clone());
                let server_type = match role {
                    Role::Primary => SentinelServerType::Master,
                    Role::Replica => SentinelServerType::Replica,
                };
                let client = SentinelClient::build(sentinels, master.clone(), Some(node), server_type)?;
                Link::Sentinel(tokio::sync::Mutex::new(client))
            }
            (RedisTopology::Cluster { nodes }, _) => {
                let seeds: Vec<redis::ConnectionInfo> = nodes
                    .iter()
                    .map(|addr| {
                        let (host, port) = split_addr(addr)?;
                        redis::ConnectionAddr::Tcp(host, port).into_connection_info()
                    })
                    .collect::<RedisResult<_>>()?;
                let mut builder = ClusterClientBuilder::new(seeds)
                    .connection_timeout(settings.connect_timeout)
                    .response_timeout(settings.command_timeout)
                    // Retries follow MOVED/ASK and wait out a failover; the
                    // command timeout bounds them all.
                    .retries(3)
                    .min_retry_wait(20)
                    .max_retry_wait(200);
                if let Some(user) = info.redis_settings().username() {
                    builder = builder.username(user);
                }
                if let Some(pw) = info.redis_settings().password() {
                    builder = builder.password(pw);
                }
                if role == Role::Replica {
                    builder = builder.read_routing_strategy(redis::cluster_read_routing::RandomReplicaStrategy);
                }
                Link::Cluster(builder.build()?)
            }
        };
        let report = TopologyReport { mode: settings.topology.mode(), ..Default::default() };
        Ok(Some(Self {
            kind: settings.topology.clone(),
            auth: info.redis_settings().clone(),
            role,
            link,
            settings: settings.clone(),
            current: RwLock::new(None),
            connecting: tokio::sync::Mutex::new(()),
            report: RwLock::new(report),
            failovers: AtomicU64::new(0),
            probes: AtomicU64::new(0),
        }))
    }

    pub fn kind(&self) -> &RedisTopology {
        &self.kind
    }

    /// The connection for a command, opened (or, with Sentinel, looked up)
    /// when there is none. Bounded by the connect timeout (twice, for a
    /// sentinel lookup then the master).
    pub async fn conn(&self) -> RedisResult<Conn> {
        Ok(self.current().await?.conn)
    }

    async fn current(&self) -> RedisResult<Current> {
        if let Some(current) = self.current.read().expect("lock").clone() {
            return Ok(current);
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(current) = self.current.read().expect("lock").clone() {
            return Ok(current);
        }
        let current = self.connect(self.settings.command_timeout).await?;
        self.install(current.clone());
        Ok(current)
    }

    /// Puts a new connection in place; a different master than before is a
    /// failover seen.
    fn install(&self, current: Current) {
        let mut report = self.report.write().expect("lock");
        if let (Some(before), Some(now)) = (&report.master, &current.addr)
            && before != now
            && self.role == Role::Primary
        {
            self.failovers.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("reportd_redis_failovers_seen_total").increment(1);
            tracing::warn!(from = %before, to = %now, "redis master changed: following it");
        }
        if current.addr.is_some() {
            report.master = current.addr.clone();
        }
        report.failovers_seen = self.failovers.load(Ordering::Relaxed);
        *self.current.write().expect("lock") = Some(current);
    }

    /// A new connection with `response_timeout` per command.
    async fn connect(&self, response_timeout: Duration) -> RedisResult<Current> {
        match &self.link {
            Link::Single(client) => {
                let conn = self.manager(client, response_timeout)?;
                Ok(Current { conn: Conn::Node(conn), node: Some(client.clone()), addr: Some(addr_of(client)) })
            }
            Link::Sentinel(_) if self.role == Role::Replica => {
                let client = self.any_data_node().await?;
                let conn = self.manager(&client, response_timeout)?;
                Ok(Current { conn: Conn::Node(conn), addr: Some(addr_of(&client)), node: Some(client) })
            }
            Link::Sentinel(_) => {
                let client = self.ask_sentinels().await?;
                let conn = self.manager(&client, response_timeout)?;
                Ok(Current { conn: Conn::Node(conn), addr: Some(addr_of(&client)), node: Some(client) })
            }
            Link::Cluster(client) => {
                let conn = bounded(self.settings.connect_timeout * 2, client.get_async_connection()).await?;
                Ok(Current { conn: Conn::Cluster(conn), node: None, addr: None })
            }
        }
    }

    fn manager(&self, client: &redis::Client, response_timeout: Duration) -> RedisResult<ConnectionManager> {
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_connection_timeout(Some(self.settings.connect_timeout))
            .set_response_timeout(Some(response_timeout))
            .set_max_delay(Duration::from_millis(200));
        ConnectionManager::new_lazy_with_config(client.clone(), config)
    }

    /// The master (or, for the replica role, a healthy replica) the
    /// sentinels name now, checked by the sentinel client.
    async fn ask_sentinels(&self) -> RedisResult<redis::Client> {
        let Link::Sentinel(sentinel) = &self.link else { unreachable!("sentinel link") };
        let lookup = async { sentinel.lock().await.async_get_client().await };
        bounded(self.settings.connect_timeout * 2 + self.settings.command_timeout * 2, lookup).await
    }

    /// After a failure that may mean the master moved: with Sentinel, the
    /// connection is dropped so that the next one is looked up again.
    pub fn forget(&self) {
        if matches!(self.link, Link::Sentinel(_)) {
            *self.current.write().expect("lock") = None;
        }
    }

    /// A connection of its own, for blocking reads that outlast the normal
    /// command timeout, to the current master (or the cluster).
    pub async fn dedicated(&self, response_timeout: Duration) -> RedisResult<Conn> {
        match &self.link {
            Link::Cluster(_) => Ok(self.connect(response_timeout).await?.conn),
            _ => {
                let node = self.node_client().await?;
                Ok(Conn::Node(self.manager(&node, response_timeout)?))
            }
        }
    }

    /// A client for one server that carries the whole deployment's pub/sub:
    /// the master (single, sentinel), or a reachable cluster node (a message
    /// published on any node reaches every node's subscribers).
    pub async fn node_client(&self) -> RedisResult<redis::Client> {
        match &self.link {
            Link::Cluster(_) => {
                let mut addrs: Vec<String> = self
                    .report
                    .read()
                    .expect("lock")
                    .nodes
                    .iter()
                    .filter(|n| n.healthy)
                    .map(|n| n.addr.clone())
                    .collect();
                if let RedisTopology::Cluster { nodes } = &self.kind {
                    addrs.extend(nodes.iter().cloned());
                }
                self.first_answering(addrs, "no cluster node reachable").await
            }
            _ => self.current().await?.node.ok_or_else(|| io_error("no node")),
        }
    }

    /// Learns the deployment's state now and says whether commands can be
    /// served: the master answers `ROLE` as a master (single, sentinel: after
    /// asking the sentinels again), or every slot is served by a healthy
    /// master that answers `PING` (cluster). The replica role only needs an
    /// answer.
    pub async fn check(&self) -> Result<(), String> {
        match &self.link {
            // A replica is kept while it answers, and looked up again when it
            // does not ([`Self::forget`]).
            // A failure is tried once more on a new connection: a promotion
            // cuts the replica's connections while it stays perfectly usable.
            Link::Single(_) | Link::Sentinel(_) if self.role == Role::Replica => match self.check_node().await {
                Ok(()) => Ok(()),
                Err(_) => self.check_node().await,
            },
            Link::Single(_) => self.check_node().await,
            Link::Sentinel(_) => {
                let mut moved = false;
                match self.ask_sentinels().await {
                    Ok(client) => {
                        let known = self.current.read().expect("lock").as_ref().and_then(|c| c.addr.clone());
                        if known.as_deref() != Some(addr_of(&client).as_str()) {
                            moved = true;
                            let conn =
                                self.manager(&client, self.settings.command_timeout).map_err(|e| e.to_string())?;
                            self.install(Current {
                                conn: Conn::Node(conn),
                                addr: Some(addr_of(&client)),
                                node: Some(client),
                            });
                        }
                    }
                    // With no sentinel to ask, the master known last is still
                    // used while it answers as a master.
                    Err(e) => tracing::debug!(error = %e, "sentinels not reachable"),
                }
                if moved || self.probes.fetch_add(1, Ordering::Relaxed).is_multiple_of(10) {
                    self.sentinel_nodes().await;
                }
                self.check_node().await
            }
            Link::Cluster(_) => self.check_cluster().await,
        }
    }

    async fn check_node(&self) -> Result<(), String> {
        let mut conn = self.conn().await.map_err(|e| e.to_string())?;
        let role = async { redis::cmd("ROLE").query_async::<Value>(&mut conn).await };
        match bounded(self.settings.command_timeout, role).await {
            Ok(value) => {
                let first = match &value {
                    Value::Array(items) => items.first().and_then(|v| redis::from_redis_value_ref::<String>(v).ok()),
                    _ => None,
                };
                if self.role == Role::Primary && first.as_deref().is_some_and(|role| role != "master") {
                    self.forget();
                    return Err("the server is a replica".into());
                }
                Ok(())
            }
            // A server that does not allow ROLE (renamed, or an ACL) but
            // answers is up.
            Err(e) if !is_unavailability(&e) => Ok(()),
            Err(e) => {
                self.forget();
                Err(e.to_string())
            }
        }
    }

    /// The master and its replicas as the sentinels list them now.
    async fn sentinel_view(&self) -> RedisResult<Vec<NodeReport>> {
        let (Link::Sentinel(sentinel), RedisTopology::Sentinel { master, .. }) = (&self.link, &self.kind) else {
            return Ok(Vec::new());
        };
        let lookup = async {
            let client = sentinel.lock().await.async_get_sentinel_client().await?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            let (ip, port): (String, String) =
                redis::cmd("SENTINEL").arg("GET-MASTER-ADDR-BY-NAME").arg(master).query_async(&mut conn).await?;
            let replicas: Vec<Vec<String>> =
                redis::cmd("SENTINEL").arg("REPLICAS").arg(master).query_async(&mut conn).await?;
            Ok::<_, RedisError>((format!("{ip}:{port}"), replicas))
        };
        let (master, replicas) =
            bounded(self.settings.connect_timeout * 2 + self.settings.command_timeout * 2, lookup).await?;
        let mut nodes = vec![NodeReport { addr: master, role: "master".into(), slots: None, healthy: true }];
        for fields in replicas {
            let field = |name: &str| fields.chunks(2).find(|p| p[0] == name).and_then(|p| p.get(1)).cloned();
            let (Some(ip), Some(port), flags) = (field("ip"), field("port"), field("flags").unwrap_or_default()) else {
                continue;
            };
            let healthy = !flags.split(',').any(|f| matches!(f, "s_down" | "o_down" | "disconnected"));
            nodes.push(NodeReport { addr: format!("{ip}:{port}"), role: "replica".into(), slots: None, healthy });
        }
        Ok(nodes)
    }

    /// For reads during a failover: a healthy replica, else the master the
    /// sentinels name (the replica being promoted answers as either), else
    /// any server they list that answers.
    async fn any_data_node(&self) -> RedisResult<redis::Client> {
        let mut nodes = self.sentinel_view().await?;
        nodes.sort_by_key(|n| (!n.healthy, n.role == "master"));
        self.first_answering(nodes.into_iter().map(|n| n.addr).collect(), "the sentinels list no server").await
    }

    /// A client for the first of `addrs` that answers `PING`, in order.
    async fn first_answering(&self, addrs: Vec<String>, none: &'static str) -> RedisResult<redis::Client> {
        let mut last = None;
        for addr in addrs {
            let client = self.client_for(&addr)?;
            let ping = async {
                let mut c = client.get_multiplexed_async_connection().await?;
                redis::cmd("PING").query_async::<()>(&mut c).await
            };
            match bounded(self.settings.connect_timeout + self.settings.command_timeout, ping).await {
                Ok(()) => return Ok(client),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io_error(none)))
    }

    /// A client for one data node, with the deployment's credentials.
    fn client_for(&self, addr: &str) -> RedisResult<redis::Client> {
        let (host, port) = split_addr(addr)?;
        let mut auth = self.auth.clone();
        if matches!(self.kind, RedisTopology::Cluster { .. }) {
            auth = auth.set_db(0);
        }
        redis::Client::open(redis::ConnectionAddr::Tcp(host, port).into_connection_info()?.set_redis_settings(auth))
    }

    /// The sentinels' view, for the report.
    async fn sentinel_nodes(&self) {
        if let Ok(nodes) = self.sentinel_view().await {
            self.report.write().expect("lock").nodes = nodes;
        }
    }

    async fn check_cluster(&self) -> Result<(), String> {
        let Conn::Cluster(mut conn) = self.conn().await.map_err(|e| e.to_string())? else {
            unreachable!("a cluster link has cluster connections")
        };
        let any = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllNodes, Some(ResponsePolicy::OneSucceeded)));
        let nodes = bounded(
            self.settings.command_timeout,
            conn.route_command(redis::cmd("CLUSTER").arg("NODES").clone(), any.clone()),
        )
        .await
        .map_err(|e| e.to_string())?;
        let info =
            bounded(self.settings.command_timeout, conn.route_command(redis::cmd("CLUSTER").arg("INFO").clone(), any))
                .await
                .map_err(|e| e.to_string())?;
        let nodes = parse_cluster_nodes(&redis::from_redis_value::<String>(nodes).map_err(|e| e.to_string())?);
        let info = redis::from_redis_value::<String>(info).map_err(|e| e.to_string())?;
        let state = info.lines().find_map(|l| l.strip_prefix("cluster_state:")).map(|s| s.trim().to_owned());
        let covered: u32 = nodes.iter().filter(|n| n.role == "master" && n.healthy).filter_map(|n| n.slots).sum();
        {
            let mut report = self.report.write().expect("lock");
            let masters = |nodes: &[NodeReport]| {
                let mut m: Vec<String> = nodes
                    .iter()
                    .filter(|n| n.role == "master" && n.slots.unwrap_or(0) > 0)
                    .map(|n| n.addr.clone())
                    .collect();
                m.sort();
                m
            };
            let (before, now) = (masters(&report.nodes), masters(&nodes));
            if self.role == Role::Primary && !before.is_empty() && before != now {
                self.failovers.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("reportd_redis_failovers_seen_total").increment(1);
                tracing::warn!(from = ?before, to = ?now, "redis cluster masters changed");
            }
            report.nodes = nodes;
            report.slots_covered = Some(covered);
            report.cluster_state = state.clone();
            report.failovers_seen = self.failovers.load(Ordering::Relaxed);
        }
        if self.role == Role::Replica {
            return Ok(());
        }
        if state.as_deref() != Some("ok") || covered < CLUSTER_SLOTS {
            return Err(format!(
                "cluster state {}, {covered} of {CLUSTER_SLOTS} slots served",
                state.unwrap_or_default()
            ));
        }
        let all = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, Some(ResponsePolicy::AllSucceeded)));
        bounded(self.settings.command_timeout, conn.route_command(redis::cmd("PING"), all))
            .await
            .map(|_| ())
            .map_err(|e| format!("a cluster master does not answer: {e}"))
    }

    /// The addresses of the servers that hold the data: the master, or every
    /// cluster master (for SCAN, which each node answers for its own keys).
    pub async fn data_nodes(&self) -> RedisResult<Vec<Option<String>>> {
        match &self.link {
            Link::Cluster(_) => {
                let _ = self.check_cluster().await;
                let report = self.report.read().expect("lock");
                let masters: Vec<Option<String>> = report
                    .nodes
                    .iter()
                    .filter(|n| n.role == "master" && n.slots.unwrap_or(0) > 0)
                    .map(|n| Some(n.addr.clone()))
                    .collect();
                if masters.is_empty() { Err(io_error("cluster topology unknown")) } else { Ok(masters) }
            }
            _ => Ok(vec![None]),
        }
    }

    /// Runs `cmd` on one data node (from [`Self::data_nodes`]).
    pub async fn on_node<T: redis::FromRedisValue>(&self, node: &Option<String>, cmd: &Cmd) -> RedisResult<T> {
        let mut conn = self.conn().await?;
        match (&mut conn, node) {
            (Conn::Cluster(c), Some(addr)) => {
                let (host, port) = split_addr(addr)?;
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
                Ok(redis::from_redis_value(c.route_command(cmd.clone(), routing).await?)?)
            }
            _ => cmd.query_async(&mut conn).await,
        }
    }

    pub fn report(&self) -> TopologyReport {
        self.report.read().expect("lock").clone()
    }
}

/// A failure that says nothing about the data, only that Redis is not there
/// (for now): the connection, a timeout, or a server that cannot take the
/// command at the moment — loading its data, a replica (`READONLY`: a
/// demoted master after a failover), a master without its replicas, a
/// cluster that is down, resharding or failing over, sentinels that cannot
/// name a master, a master that has too few replicas to take writes. These go through the breaker and the fallback; they are
/// never a 500.
pub fn is_unavailability(e: &RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::ReadOnly
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::Moved
                    | ServerErrorKind::Ask
            ) | ErrorKind::AuthenticationFailed
                | ErrorKind::ClusterConnectionNotFound
                | ErrorKind::MasterNameNotFoundBySentinel
                | ErrorKind::NoValidReplicasFoundBySentinel
                | ErrorKind::EmptySentinelList
        )
        // A master with `min-replicas-to-write` and too few replicas.
        || e.code() == Some("NOREPLICAS")
}

/// `CLUSTER NODES` as node reports (`<id> <ip:port@cport[,host]> <flags>
/// <master> <ping> <pong> <epoch> <link> <slot>...`).
pub fn parse_cluster_nodes(text: &str) -> Vec<NodeReport> {
    let mut nodes: Vec<NodeReport> = text
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return None;
            }
            let addr = fields[1].split(['@', ',']).next()?.to_owned();
            let flags: Vec<&str> = fields[2].split(',').collect();
            if flags.contains(&"noaddr") || flags.contains(&"handshake") || addr.starts_with(':') {
                return None;
            }
            let role = if flags.contains(&"master") { "master" } else { "replica" };
            let healthy = !flags.iter().any(|f| matches!(*f, "fail" | "fail?")) && fields[7] == "connected";
            let slots = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .map(|s| match s.split_once('-') {
                    Some((a, b)) => b.parse::<u32>().unwrap_or(0).saturating_sub(a.parse().unwrap_or(u32::MAX)) + 1,
                    None => u32::from(s.parse::<u32>().is_ok()),
                })
                .sum();
            Some(NodeReport { addr, role: role.into(), slots: (role == "master").then_some(slots), healthy })
        })
        .collect();
    nodes.sort_by(|a, b| a.addr.cmp(&b.addr));
    nodes
}

fn split_addr(addr: &str) -> RedisResult<(String, u16)> {
    addr.trim()
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host.trim_matches(['[', ']']).to_owned(), port.parse().ok()?)))
        .ok_or_else(|| RedisError::from((redis::ErrorKind::InvalidClientConfig, "not host:port", addr.to_owned())))
}

fn addr_of(client: &redis::Client) -> String {
    match client.get_connection_info().addr() {
        redis::ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
        other => other.to_string(),
    }
}

fn io_error(what: &'static str) -> RedisError {
    RedisError::from(std::io::Error::new(std::io::ErrorKind::NotConnected, what))
}

/// `call`, failing as a timeout after `limit`.
async fn bounded<T>(limit: Duration, call: impl Future<Output = RedisResult<T>>) -> RedisResult<T> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => Err(RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_are_read_with_their_slots_and_health() {
        let text = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-10922 [5461->-a1]
c3 127.0.0.1:7002@17002,host.example master,fail - 0 0 3 disconnected 10923-16383
d4 127.0.0.1:7003@17003 slave c3 0 0 3 connected
e5 :0@0 master,noaddr - 0 0 0 disconnected
f6 127.0.0.1:7005@17005 master - 0 0 7 connected 42
";
        let nodes = parse_cluster_nodes(text);
        let view: Vec<(&str, &str, Option<u32>, bool)> =
            nodes.iter().map(|n| (n.addr.as_str(), n.role.as_str(), n.slots, n.healthy)).collect();
        assert_eq!(
            view,
            [
                ("127.0.0.1:7000", "master", Some(5461), true),
                ("127.0.0.1:7001", "master", Some(5462), true),
                ("127.0.0.1:7002", "master", Some(5461), false),
                ("127.0.0.1:7003", "replica", None, true),
                ("127.0.0.1:7005", "master", Some(1), true),
            ]
        );
    }

    #[test]
    fn addresses_are_host_and_port() {
        assert_eq!(split_addr("10.0.0.1:26379").unwrap(), ("10.0.0.1".into(), 26379));
        assert_eq!(split_addr("[::1]:7000").unwrap(), ("::1".into(), 7000));
        assert!(split_addr("redis").is_err());
        assert!(split_addr("redis:port").is_err());
    }
}
