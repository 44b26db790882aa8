//! `reportd doctor`: checks a deployment with exactly the settings the
//! service would use (flags, environment, `.env`), and says in plain words
//! what is wrong.
//!
//! The checks, in report order: the configuration ([`Config::validate`]);
//! the database (reachable, migrations current: the applied rows of
//! `_sqlx_migrations` against the migrations embedded in this binary, see
//! [`crate::db::migrator`]); Redis when it is configured (reachable and
//! authenticated, AOF on, a `maxmemory-policy` that cannot evict live state,
//! no key of the namespace without a TTL, keys and memory per namespace); the
//! five feature flags in force and where each value comes from; the LLM
//! endpoint and the search endpoint when they are configured.
//!
//! The doctor only reads: it applies no migration, writes no key and creates
//! no file (a missing SQLite file is reported, not created), so it is safe
//! to run against a live deployment. Every network step is bounded by
//! [`STEP_TIMEOUT`] and the key scan by [`SCAN_MAX_KEYS`] and
//! [`SCAN_MAX_TIME`], so it never hangs. Secrets (the LLM API key and the
//! Redis, database and JWT secrets) are scrubbed from everything it reports,
//! including error texts quoted from servers.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use redis::IntoConnectionInfo;
use redis::aio::MultiplexedConnection;
use serde::Serialize;
use serde_json::{Map, Value, json};
use sqlx::Connection;
use sqlx::migrate::Migrate;

use crate::config::Config;
use crate::keys::KeySpace;
use crate::state::{Flag, Flags, RedisBackend, RedisSettings, RedisTopology, TopologyReport};

/// Longest one network step (a connection, one command, one HTTP request)
/// may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// Keys the Redis scan examines at most; past it the counts are partial.
pub const SCAN_MAX_KEYS: usize = 100_000;
/// Longest the Redis scan may take in all.
pub const SCAN_MAX_TIME: Duration = Duration::from_secs(60);
/// Keys without a TTL named in the report (all are counted).
const NO_TTL_SHOWN: usize = 10;
/// Largest body read from the LLM or the search endpoint.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Keys asked for per SCAN call (and per pipeline of PTTL / MEMORY USAGE).
const SCAN_COUNT: usize = 1000;

/// The outcome of one check; the report's status is the worst of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    /// As the text report shows it: failures stand out in capitals.
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        }
    }
}

/// One check: a name, a status and a sentence, plus facts for machines.
#[derive(Debug, Clone)]
pub struct Check {
    /// The heading it is listed under in the text report.
    pub section: &'static str,
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    /// Further lines of the text report (one per flag, per namespace …).
    pub lines: Vec<String>,
    /// Machine-readable facts, merged into the check's JSON object.
    pub extra: Map<String, Value>,
}

impl Check {
    fn new(section: &'static str, name: &'static str, status: Status, detail: impl Into<String>) -> Self {
        Self { section, name, status, detail: detail.into(), lines: Vec::new(), extra: Map::new() }
    }

    fn with(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_owned(), value);
        self
    }

    fn lines(mut self, lines: Vec<String>) -> Self {
        self.lines = lines;
        self
    }
}

/// Every check's outcome, in order.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub checks: Vec<Check>,
    /// Texts never to show (see [`secrets`]).
    secrets: Vec<String>,
}

impl Report {
    fn new(secrets: Vec<String>) -> Self {
        Self { checks: Vec::new(), secrets }
    }

    /// Adds a check, scrubbed of every secret. Scrubbing here, once, covers
    /// the texts of every error any library or server may have produced.
    fn push(&mut self, mut check: Check) {
        check.detail = scrub(&check.detail, &self.secrets);
        for line in &mut check.lines {
            *line = scrub(line, &self.secrets);
        }
        for value in check.extra.values_mut() {
            scrub_value(value, &self.secrets);
        }
        self.checks.push(check);
    }

    /// The worst status of any check (`ok` for none).
    pub fn status(&self) -> Status {
        self.checks.iter().map(|c| c.status).max().unwrap_or(Status::Ok)
    }

    /// True when some check failed: the doctor exits 1.
    pub fn failed(&self) -> bool {
        self.status() == Status::Fail
    }

    /// `{"status":"ok|warn|fail","checks":[{"section","name","status","detail",…}]}`
    pub fn to_json(&self) -> Value {
        let checks: Vec<Value> = self
            .checks
            .iter()
            .map(|c| {
                let mut object = Map::new();
                object.insert("section".into(), json!(c.section));
                object.insert("name".into(), json!(c.name));
                object.insert("status".into(), json!(c.status));
                object.insert("detail".into(), json!(c.detail));
                for (k, v) in &c.extra {
                    object.entry(k.clone()).or_insert_with(|| v.clone());
                }
                Value::Object(object)
            })
            .collect();
        json!({ "status": self.status(), "checks": checks })
    }

    /// The readable report: a heading per section, a line per check
    /// (status, name, explanation), its further lines indented below, and a
    /// summary.
    pub fn to_text(&self) -> String {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        let mut out = String::new();
        let mut section = "";
        for check in &self.checks {
            if check.section != section {
                if !section.is_empty() {
                    out.push('\n');
                }
                section = check.section;
                let _ = writeln!(out, "{section}");
            }
            let _ = writeln!(out, "  {:<4}  {:<width$}  {}", check.status.label(), check.name, check.detail);
            for line in &check.lines {
                let _ = writeln!(out, "  {:<4}  {:<width$}    {line}", "", "");
            }
        }
        let count = |s: Status| self.checks.iter().filter(|c| c.status == s).count();
        let _ = writeln!(
            out,
            "\n{}: {} ok, {} warning(s), {} failure(s)",
            match self.status() {
                Status::Ok => "all good",
                Status::Warn => "working, with warnings",
                Status::Fail => "FAILED",
            },
            count(Status::Ok),
            count(Status::Warn),
            count(Status::Fail)
        );
        out
    }
}

/// Runs every check against the deployment `config` describes.
pub async fn run(config: &Config) -> Report {
    let mut report = Report::new(secrets(config));
    report.push(config_check(config));
    // The checks of separate systems run at once: the doctor takes as long
    // as the slowest, not the sum of their timeouts.
    let (database, (redis, flag_source), llm, search) =
        tokio::join!(database_checks(config), redis_checks(config), llm_check(config), search_check(config));
    for check in database.into_iter().chain(redis) {
        report.push(check);
    }
    report.push(flags_check(config, flag_source));
    report.push(llm);
    report.push(search);
    report
}

// Secrets.

/// Every secret of the configuration, in the forms it could be quoted in
/// (as given, percent-encoded in a URL, percent-decoded from one). Very
/// short values are left out: replacing every "a" would garble the report
/// and protect nothing.
fn secrets(config: &Config) -> Vec<String> {
    let mut raw: Vec<String> = Vec::new();
    raw.extend(config.llm_api_key.iter().map(|k| k.trim().to_owned()));
    raw.extend(config.redis_password.iter().cloned());
    raw.extend(config.jwt_secret.iter().cloned());
    for url in config.redis_url.iter().chain(config.database_url.iter()) {
        if let Ok(parsed) = reqwest::Url::parse(url)
            && let Some(password) = parsed.password()
        {
            raw.push(password.to_owned());
        }
    }
    let mut out = Vec::new();
    for secret in raw {
        for form in [percent_decode(&secret), crate::config::percent_encode(&secret), secret] {
            if form.chars().count() >= 4 && !out.contains(&form) {
                out.push(form);
            }
        }
    }
    // Longest first, so that a secret containing another is replaced whole.
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out
}

fn scrub(text: &str, secrets: &[String]) -> String {
    secrets.iter().fold(text.to_owned(), |text, secret| text.replace(secret.as_str(), "[redacted]"))
}

fn scrub_value(value: &mut Value, secrets: &[String]) {
    match value {
        Value::String(s) => *s = scrub(s, secrets),
        Value::Array(items) => items.iter_mut().for_each(|v| scrub_value(v, secrets)),
        Value::Object(map) => map.values_mut().for_each(|v| scrub_value(v, secrets)),
        _ => {}
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// Configuration.

fn is_sqlite(url: &str) -> bool {
    url.starts_with("sqlite:")
}

/// The file of a `sqlite:` URL (`None` for an in-memory database).
fn sqlite_path(url: &str) -> Option<String> {
    let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| path.to_owned())
}

/// Where the database is, without its password.
fn describe_database(url: &str) -> String {
    if is_sqlite(url) {
        return match sqlite_path(url) {
            Some(path) => format!("SQLite file {path}"),
            None => "SQLite in memory".to_owned(),
        };
    }
    match reqwest::Url::parse(url) {
        Ok(u) => format!(
            "PostgreSQL {}:{}{}",
            u.host_str().unwrap_or("localhost"),
            u.port().unwrap_or(5432),
            if u.path().is_empty() { "/" } else { u.path() }
        ),
        Err(_) => "PostgreSQL (its URL does not parse)".to_owned(),
    }
}

/// Where Redis is, and whether a password is given, without the password.
fn describe_redis(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let db = u.path().trim_start_matches('/');
            format!(
                "{}://{}:{} db {} ({})",
                u.scheme(),
                u.host_str().unwrap_or("?"),
                u.port().unwrap_or(6379),
                if db.is_empty() { "0" } else { db },
                if u.password().is_some() { "with a password" } else { "without a password" }
            )
        }
        Err(_) => "a URL that does not parse".to_owned(),
    }
}

fn config_check(config: &Config) -> Check {
    let url = config.database_url();
    let database = describe_database(&url);
    let redis = match config.redis_settings() {
        Some(s) => format!("Redis: {}", describe_settings(&s)),
        None => "no Redis (every feature keeps its state in process memory)".to_owned(),
    };
    let (status, detail) = match config.validate() {
        Ok(()) => (
            Status::Ok,
            format!(
                "valid; APP_ENV={}, keys under {}:{}:; database: {database}; {redis}",
                config.app_env, config.redis_prefix, config.app_env
            ),
        ),
        Err(e) => (Status::Fail, format!("the service would not start: {e:#}")),
    };
    Check::new("configuration", "config", status, detail)
        .with("database", json!(if is_sqlite(&url) { "sqlite" } else { "postgres" }))
        .with("database_location", json!(database))
        .with("redis_configured", json!(config.redis_settings().is_some()))
        .with("app_env", json!(config.app_env))
        .with("redis_prefix", json!(config.redis_prefix))
}

// Database.

async fn database_checks(config: &Config) -> Vec<Check> {
    let url = config.database_url();
    let connection = |status, detail: String| Check::new("database", "database.connection", status, detail);
    let migrations = |status, detail: String| Check::new("database", "database.migrations", status, detail);
    let not_checked = || migrations(Status::Fail, "not checked: the database is not reachable".to_owned());

    if is_sqlite(&url)
        && let Some(path) = sqlite_path(&url)
        && !std::path::Path::new(&path).is_file()
    {
        // Opening it would create it; the doctor only reads.
        return vec![
            connection(
                Status::Fail,
                format!(
                    "no database file at {path}: the service creates it (and applies its migrations) when it first \
                     starts; check DATABASE_URL / DATA_DIR and the working directory"
                ),
            ),
            not_checked(),
        ];
    }
    sqlx::any::install_default_drivers();
    let started = Instant::now();
    let mut conn = match tokio::time::timeout(STEP_TIMEOUT, sqlx::AnyConnection::connect(&url)).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return vec![connection(Status::Fail, format!("cannot connect: {e}")), not_checked()],
        Err(_) => {
            return vec![
                connection(Status::Fail, format!("no connection within {} s", STEP_TIMEOUT.as_secs())),
                not_checked(),
            ];
        }
    };
    let sqlite = is_sqlite(&url);
    let version_query = if sqlite { "SELECT sqlite_version()" } else { "SELECT version()" };
    let version =
        tokio::time::timeout(STEP_TIMEOUT, sqlx::query_scalar::<_, String>(version_query).fetch_one(&mut conn)).await;
    let first = match version {
        Ok(Ok(version)) => {
            let version = if sqlite { format!("SQLite {version}") } else { short_postgres_version(&version) };
            connection(
                Status::Ok,
                format!("{} answers ({version}, {} ms)", describe_database(&url), started.elapsed().as_millis()),
            )
        }
        Ok(Err(e)) => {
            return vec![connection(Status::Fail, format!("connected, but a query failed: {e}")), not_checked()];
        }
        Err(_) => {
            return vec![
                connection(Status::Fail, format!("connected, but no answer within {} s", STEP_TIMEOUT.as_secs())),
                not_checked(),
            ];
        }
    };
    let second = match tokio::time::timeout(STEP_TIMEOUT, migration_check(&mut conn, sqlite)).await {
        Ok(check) => check,
        Err(_) => migrations(Status::Fail, format!("no answer within {} s", STEP_TIMEOUT.as_secs())),
    };
    let _ = tokio::time::timeout(STEP_TIMEOUT, conn.close()).await;
    vec![first, second]
}

/// "PostgreSQL 15.8 (Debian …) on x86_64…" → "PostgreSQL 15.8".
fn short_postgres_version(version: &str) -> String {
    version.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

/// Compares the applied migrations with the ones embedded in this binary,
/// as `Migrator::run` would at start, without applying anything.
async fn migration_check(conn: &mut sqlx::AnyConnection, sqlite: bool) -> Check {
    let check = |status, detail: String| Check::new("database", "database.migrations", status, detail);
    let migrator = crate::db::migrator(sqlite);
    let embedded: Vec<&sqlx::migrate::Migration> =
        migrator.iter().filter(|m| !m.migration_type.is_down_migration()).collect();
    let name = |m: &sqlx::migrate::Migration| format!("{:04}_{}", m.version, m.description.replace(' ', "_"));
    let all_pending = || embedded.iter().map(|m| name(m)).collect::<Vec<_>>();

    // The table is looked up first: asking a database without it for its
    // rows would be an error indistinguishable from others.
    let exists_query = if sqlite {
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'"
    } else {
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = '_sqlx_migrations' \
         AND table_schema = current_schema()"
    };
    match sqlx::query_scalar::<_, i64>(exists_query).fetch_one(&mut *conn).await {
        Ok(0) => {
            let pending = all_pending();
            return check(
                Status::Fail,
                format!(
                    "no migration applied ({} pending: {}): start the service once to apply them",
                    pending.len(),
                    pending.join(", ")
                ),
            )
            .with("pending", json!(pending))
            .with("applied", json!(0));
        }
        Ok(_) => {}
        Err(e) => return check(Status::Fail, format!("cannot look for the migrations table: {e}")),
    }
    let table = migrator.table_name.as_ref();
    let dirty = match conn.dirty_version(table).await {
        Ok(dirty) => dirty,
        Err(e) => return check(Status::Fail, format!("cannot read the migrations table: {e}")),
    };
    let applied = match conn.list_applied_migrations(table).await {
        Ok(applied) => applied,
        Err(e) => return check(Status::Fail, format!("cannot read the migrations table: {e}")),
    };
    let applied_versions: BTreeMap<i64, &[u8]> = applied.iter().map(|a| (a.version, a.checksum.as_ref())).collect();
    let pending: Vec<String> =
        embedded.iter().filter(|m| !applied_versions.contains_key(&m.version)).map(|m| name(m)).collect();
    let unknown: Vec<i64> =
        applied_versions.keys().copied().filter(|v| !embedded.iter().any(|m| m.version == *v)).collect();
    let changed: Vec<String> = embedded
        .iter()
        .filter(|m| applied_versions.get(&m.version).is_some_and(|sum| *sum != m.checksum.as_ref()))
        .map(|m| name(m))
        .collect();
    let latest = embedded.iter().map(|m| m.version).max().unwrap_or(0);
    let base = check(Status::Ok, String::new())
        .with("applied", json!(applied.len()))
        .with("embedded", json!(embedded.len()))
        .with("pending", json!(pending));
    let mut problems = Vec::new();
    if let Some(version) = dirty {
        problems.push(format!(
            "migration {version:04} failed part-way (the service refuses to start until it is repaired)"
        ));
    }
    if !pending.is_empty() {
        problems.push(format!(
            "{} pending: {} (the service applies them when it starts)",
            pending.len(),
            pending.join(", ")
        ));
    }
    if !changed.is_empty() {
        problems.push(format!(
            "{} changed since they were applied: {} (the service refuses to start)",
            changed.len(),
            changed.join(", ")
        ));
    }
    if !unknown.is_empty() {
        let list: Vec<String> = unknown.iter().map(|v| format!("{v:04}")).collect();
        problems.push(format!(
            "applied but unknown to this binary: {} (the database is newer than this reportd)",
            list.join(", ")
        ));
    }
    if problems.is_empty() {
        Check { status: Status::Ok, detail: format!("all {} applied, latest {latest:04}", embedded.len()), ..base }
    } else {
        Check { status: Status::Fail, detail: problems.join("; "), ..base }
    }
}

// Redis.

/// What the flags check learns from the Redis checks.
enum FlagSource {
    /// No Redis settings: the environment is all there is.
    NotConfigured,
    /// The hash could not be read (Redis down, wrong password …).
    Unreadable(String),
    /// The flags hash (empty when it does not exist).
    Hash(HashMap<String, String>),
}

/// A Redis error in words, naming a failed authentication as such.
fn redis_error(e: &redis::RedisError) -> String {
    let auth = matches!(e.kind(), redis::ErrorKind::AuthenticationFailed)
        || matches!(e.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"));
    if auth {
        format!(
            "authentication failed: the password (REDIS_PASSWORD or REDIS_URL) is wrong or missing, or the user \
             lacks permission ({e})"
        )
    } else {
        e.to_string()
    }
}

/// Runs one command under [`STEP_TIMEOUT`].
async fn command<T: redis::FromRedisValue>(conn: &mut MultiplexedConnection, cmd: &redis::Cmd) -> Result<T, String> {
    match tokio::time::timeout(STEP_TIMEOUT, cmd.query_async::<T>(conn)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(redis_error(&e)),
        Err(_) => Err(format!("no answer within {} s", STEP_TIMEOUT.as_secs())),
    }
}

/// `CONFIG GET name`: `Ok(None)` when the server does not have it.
async fn config_get(conn: &mut MultiplexedConnection, name: &str) -> Result<Option<String>, String> {
    let map: HashMap<String, String> = command(conn, redis::cmd("CONFIG").arg("GET").arg(name)).await?;
    Ok(map.get(name).cloned())
}

async fn redis_checks(config: &Config) -> (Vec<Check>, FlagSource) {
    const S: &str = "redis";
    let Some(settings) = config.redis_settings() else {
        let check = Check::new(
            S,
            "redis",
            Status::Ok,
            "not configured (no REDIS_URL or REDIS_HOST): every feature keeps its state in process memory, per \
             instance",
        )
        .with("configured", json!(false));
        return (vec![check], FlagSource::NotConfigured);
    };
    let (mut nodes, detail, topology) = match connect_nodes(&settings).await {
        Ok(connected) => connected,
        Err(error) => {
            let detail = format!("{}: {error}", describe_settings(&settings));
            let check = Check::new(S, "redis.connection", Status::Fail, detail).with("configured", json!(true));
            return (vec![check], FlagSource::Unreadable("Redis is not usable, see redis.connection".to_owned()));
        }
    };
    let mut checks = vec![Check::new(S, "redis.connection", Status::Ok, detail).with("configured", json!(true))];
    checks.push(topology);
    let mut aof = Vec::new();
    let mut eviction = Vec::new();
    for (addr, conn) in &mut nodes {
        aof.push((addr.clone(), aof_check(conn).await));
        eviction.push((addr.clone(), eviction_check(conn).await));
    }
    checks.push(per_node(aof));
    checks.push(per_node(eviction));
    let keys = match KeySpace::new(&config.redis_prefix, &config.app_env) {
        Ok(keys) => keys,
        Err(e) => {
            checks.push(Check::new(S, "redis.keys_without_ttl", Status::Fail, format!("keys not checked: {e}")));
            return (checks, FlagSource::Unreadable(format!("the key namespace is invalid: {e}")));
        }
    };
    let base = format!("{}:{}", config.redis_prefix, config.app_env);
    let mut conns: Vec<MultiplexedConnection> = nodes.iter().map(|(_, c)| c.clone()).collect();
    checks.extend(key_checks(&mut conns, &keys, &base).await);
    // The flags hash lives on one node of a cluster: read it through the
    // service's own client, which routes it.
    let source = match RedisBackend::new(&settings) {
        Ok(backend) => match tokio::time::timeout(STEP_TIMEOUT, backend.hgetall(&keys.flags())).await {
            Ok(Ok(hash)) => FlagSource::Hash(hash),
            Ok(Err(e)) => FlagSource::Unreadable(e.to_string()),
            Err(_) => FlagSource::Unreadable(format!("no answer within {} s", STEP_TIMEOUT.as_secs())),
        },
        Err(e) => FlagSource::Unreadable(e.to_string()),
    };
    (checks, source)
}

/// Where the settings point, for messages (no secrets).
fn describe_settings(settings: &RedisSettings) -> String {
    match &settings.topology {
        RedisTopology::Single => describe_redis(&settings.url),
        RedisTopology::Sentinel { sentinels, master, .. } => {
            format!("master `{master}` of the sentinels {}", sentinels.join(","))
        }
        RedisTopology::Cluster { nodes } => format!("the cluster seeded by {}", nodes.join(",")),
    }
}

/// The servers that hold the data, connected: the server (single), the
/// master the sentinels name, or every cluster master; with a description
/// of the first and a check of the topology.
async fn connect_nodes(
    settings: &RedisSettings,
) -> Result<(Vec<(String, MultiplexedConnection)>, String, Check), String> {
    let info =
        settings.url.as_str().into_connection_info().map_err(|e| format!("invalid Redis connection settings: {e}"))?;
    if settings.topology == RedisTopology::Single {
        let (conn, detail) = connect(info, &describe_redis(&settings.url)).await?;
        let check = Check::new(
            "redis",
            "redis.topology",
            Status::Ok,
            "a single server: no failover (REDIS_SENTINELS \
            or REDIS_CLUSTER_NODES give one)",
        )
        .with("mode", json!("single"));
        return Ok((vec![(describe_redis(&settings.url), conn)], detail, check));
    }
    let backend = RedisBackend::new(settings).map_err(|e| e.to_string())?;
    let probed = tokio::time::timeout(STEP_TIMEOUT, backend.probe()).await.unwrap_or(false);
    let report = backend.topology();
    let masters: Vec<String> = match &settings.topology {
        RedisTopology::Cluster { .. } => report
            .nodes
            .iter()
            .filter(|n| n.role == "master" && n.healthy && n.slots.unwrap_or(0) > 0)
            .map(|n| n.addr.clone())
            .collect(),
        _ => report.master.iter().cloned().collect(),
    };
    if masters.is_empty() {
        return Err(format!("no master found ({})", if probed { "the probe passed" } else { "the probe failed" }));
    }
    let mut nodes = Vec::new();
    let mut detail = String::new();
    for addr in &masters {
        let (host, port) = addr.rsplit_once(':').ok_or_else(|| format!("bad node address {addr}"))?;
        let port: u16 = port.parse().map_err(|_| format!("bad node address {addr}"))?;
        let mut redis = info.redis_settings().clone();
        if matches!(settings.topology, RedisTopology::Cluster { .. }) {
            redis = redis.set_db(0);
        }
        let node = redis::ConnectionAddr::Tcp(host.to_owned(), port)
            .into_connection_info()
            .map_err(|e| e.to_string())?
            .set_redis_settings(redis);
        let (conn, about) = connect(node, addr).await?;
        if detail.is_empty() {
            detail = about;
        }
        nodes.push((addr.clone(), conn));
    }
    Ok((nodes, detail, topology_check(&report, probed)))
}

/// Whether the deployment can fail over: a Sentinel master with a healthy
/// replica, a cluster whose every slot is served and whose every master has
/// a replica.
fn topology_check(report: &TopologyReport, probed: bool) -> Check {
    let replicas = report.nodes.iter().filter(|n| n.role == "replica").count();
    let healthy_replicas = report.nodes.iter().filter(|n| n.role == "replica" && n.healthy).count();
    let masters = report.nodes.iter().filter(|n| n.role == "master" && n.slots.unwrap_or(1) > 0).count();
    let (status, detail) = match report.mode {
        "sentinel" => {
            let master = report.master.clone().unwrap_or_default();
            if !probed {
                (Status::Fail, format!("the sentinels name {master}, which does not answer as a master"))
            } else if healthy_replicas == 0 {
                (
                    Status::Warn,
                    format!("master {master} has no healthy replica ({replicas} listed): a failover has nowhere to go"),
                )
            } else {
                (
                    Status::Ok,
                    format!("master {master} with {healthy_replicas} healthy replica(s), found through the sentinels"),
                )
            }
        }
        _ => {
            let covered = report.slots_covered.unwrap_or(0);
            let state = report.cluster_state.clone().unwrap_or_default();
            if !probed || covered < crate::state::topology::CLUSTER_SLOTS {
                (Status::Fail, format!("cluster_state {state}: {covered} of 16384 slots served by a healthy master"))
            } else if replicas < masters {
                (
                    Status::Warn,
                    format!("{masters} masters but {replicas} replicas: a master without one cannot fail over"),
                )
            } else {
                (Status::Ok, format!("{masters} masters, {replicas} replicas, all 16384 slots served"))
            }
        }
    };
    Check::new("redis", "redis.topology", status, detail)
        .lines(
            report
                .nodes
                .iter()
                .map(|n| {
                    let slots = n.slots.map(|s| format!(" {s} slots")).unwrap_or_default();
                    let health = if n.healthy { "" } else { " (failing)" };
                    format!("{:<7} {}{slots}{health}", n.role, n.addr)
                })
                .collect(),
        )
        .with("mode", json!(report.mode))
        .with("topology", json!(report))
}

/// One check made on several servers: the worst status, and each server's
/// detail when they differ.
fn per_node(mut checks: Vec<(String, Check)>) -> Check {
    if checks.len() == 1 {
        return checks.pop().expect("one").1;
    }
    let worst = checks.iter().map(|(_, c)| c.status).max().unwrap_or(Status::Ok);
    let (_, first) = &checks[0];
    let mut merged = Check::new(first.section, first.name, worst, String::new());
    if checks.iter().all(|(_, c)| c.detail == first.detail) {
        merged.detail = format!("{} (on all {} masters)", first.detail, checks.len());
    } else {
        merged.detail = format!("differs between the {} masters", checks.len());
        merged.lines = checks.iter().map(|(addr, c)| format!("{addr}: {}", c.detail)).collect();
    }
    let nodes: Vec<Value> =
        checks.iter().map(|(addr, c)| json!({"addr": addr, "status": c.status, "detail": c.detail})).collect();
    merged.with("nodes", json!(nodes))
}

/// Connects with the service's connection settings (so password, database
/// and scheme are handled as the service handles them), authenticates and
/// pings; `name` says which server in messages.
async fn connect(info: redis::ConnectionInfo, name: &str) -> Result<(MultiplexedConnection, String), String> {
    let client = redis::Client::open(info).map_err(|e| format!("invalid Redis connection settings: {e}"))?;
    let options = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(STEP_TIMEOUT))
        .set_response_timeout(Some(STEP_TIMEOUT));
    let started = Instant::now();
    let mut conn =
        match tokio::time::timeout(STEP_TIMEOUT, client.get_multiplexed_async_connection_with_config(&options)).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(format!("cannot connect: {}", redis_error(&e))),
            Err(_) => return Err(format!("no connection within {} s", STEP_TIMEOUT.as_secs())),
        };
    // Without a password against a server that requires one, the connection
    // opens and the first command answers NOAUTH.
    let _: String = command(&mut conn, &redis::cmd("PING")).await?;
    let elapsed = started.elapsed().as_millis();
    let info: String = command(&mut conn, redis::cmd("INFO").arg("server")).await.unwrap_or_default();
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("valkey_version:").or_else(|| l.strip_prefix("redis_version:")))
        .map(|v| format!("version {}", v.trim()))
        .unwrap_or_else(|| "version unknown".to_owned());
    Ok((conn, format!("{name} answers PING ({version}, {elapsed} ms)")))
}

async fn aof_check(conn: &mut MultiplexedConnection) -> Check {
    let check = |status, detail: String| Check::new("redis", "redis.aof", status, detail);
    match config_get(conn, "appendonly").await {
        Ok(Some(v)) if v == "yes" => {
            let fsync = config_get(conn, "appendfsync").await.ok().flatten().unwrap_or_else(|| "unknown".into());
            check(Status::Ok, format!("append-only file on (appendfsync {fsync})"))
                .with("appendonly", json!(true))
                .with("appendfsync", json!(fsync))
        }
        // A failure, not a warning: the whole point of keeping this state in
        // Redis is that a restart does not lose it (SPEC §8).
        Ok(Some(v)) => check(
            Status::Fail,
            format!(
                "append-only file off (appendonly {v}): a restart of Redis loses the task statuses, conversations and \
                 answer events written since the last snapshot; set `appendonly yes`"
            ),
        )
        .with("appendonly", json!(false)),
        Ok(None) => check(Status::Warn, "could not be checked: the server does not report `appendonly`".to_owned()),
        Err(e) => check(
            Status::Warn,
            format!("could not be checked (CONFIG GET is disabled or renamed on this server?): {e}"),
        ),
    }
}

async fn eviction_check(conn: &mut MultiplexedConnection) -> Check {
    let check = |status, detail: String| Check::new("redis", "redis.maxmemory_policy", status, detail);
    let policy = match config_get(conn, "maxmemory-policy").await {
        Ok(Some(p)) => p,
        Ok(None) => {
            return check(Status::Warn, "could not be checked: the server does not report it".to_owned());
        }
        Err(e) => {
            return check(
                Status::Warn,
                format!("could not be checked (CONFIG GET is disabled or renamed on this server?): {e}"),
            );
        }
    };
    let maxmemory: u64 = config_get(conn, "maxmemory").await.ok().flatten().and_then(|m| m.parse().ok()).unwrap_or(0);
    let limit = if maxmemory == 0 {
        "maxmemory 0: no limit yet, so nothing is evicted until one is set".to_owned()
    } else {
        format!("maxmemory {}", human_bytes(maxmemory))
    };
    let base = |status, detail: String| {
        check(status, detail).with("policy", json!(policy)).with("maxmemory", json!(maxmemory))
    };
    if policy == "noeviction" {
        base(
            Status::Ok,
            format!(
                "noeviction ({limit}): when full, Redis refuses writes (the service falls back) instead of dropping state"
            ),
        )
    } else if policy.starts_with("allkeys-") {
        base(
            Status::Warn,
            format!(
                "{policy} ({limit}): when memory is full Redis evicts any key, including live import task statuses, \
                 conversations, answer streams, the import queue and the flags hash; use noeviction"
            ),
        )
    } else if policy.starts_with("volatile-") {
        base(
            Status::Warn,
            format!(
                "{policy} ({limit}): when memory is full Redis evicts keys that have a TTL, and every key of this \
                 service but the flags hash has one, so live task statuses, conversations and the import queue can \
                 go; use noeviction"
            ),
        )
    } else {
        base(Status::Warn, format!("{policy} ({limit}): an unknown policy; noeviction is the safe one"))
    }
}

/// Keys and memory of one namespace (the third segment of a key).
#[derive(Debug, Default, Clone, Copy, Serialize)]
struct Namespace {
    keys: u64,
    bytes: u64,
}

/// One pass of SCAN over `{base}:*`: the keys without a TTL, and keys and
/// memory per namespace.
async fn key_checks(conns: &mut [MultiplexedConnection], keys: &KeySpace, base: &str) -> Vec<Check> {
    let flags_key = keys.flags().as_str().to_owned();
    let pattern = format!("{base}:*");
    let started = Instant::now();
    let mut examined = 0usize;
    let mut stopped: Option<String> = None;
    let mut no_ttl: Vec<String> = Vec::new();
    let mut no_ttl_count = 0usize;
    let mut namespaces: BTreeMap<String, Namespace> = BTreeMap::new();
    // MEMORY USAGE may be disabled or renamed like CONFIG; the counts are
    // still worth having without it.
    let mut memory = true;
    let mut error: Option<String> = None;
    // Each cluster master answers SCAN for its own keys only.
    'nodes: for conn in conns.iter_mut() {
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = match command(
                conn,
                redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(SCAN_COUNT),
            )
            .await
            {
                Ok(page) => page,
                Err(e) => {
                    error = Some(e);
                    break 'nodes;
                }
            };
            if !batch.is_empty() {
                let values = match inspect(conn, &batch, memory).await {
                    Ok(v) => v,
                    Err(_) if memory => {
                        memory = false;
                        match inspect(conn, &batch, false).await {
                            Ok(v) => v,
                            Err(e) => {
                                error = Some(e);
                                break 'nodes;
                            }
                        }
                    }
                    Err(e) => {
                        error = Some(e);
                        break 'nodes;
                    }
                };
                for (key, (ttl, bytes)) in batch.into_iter().zip(values) {
                    // -2: gone since the SCAN (a short-lived key expired).
                    if ttl == -2 {
                        continue;
                    }
                    examined += 1;
                    let namespace = key.split(':').nth(2).unwrap_or("").to_owned();
                    let entry = namespaces.entry(namespace).or_default();
                    entry.keys += 1;
                    entry.bytes += bytes.unwrap_or(0);
                    if ttl == -1 && key != flags_key {
                        no_ttl_count += 1;
                        if no_ttl.len() < NO_TTL_SHOWN && !no_ttl.contains(&key) {
                            no_ttl.push(key);
                        }
                    }
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
            if examined >= SCAN_MAX_KEYS {
                stopped = Some(format!("stopped after {examined} keys (the limit is {SCAN_MAX_KEYS})"));
                break 'nodes;
            }
            if started.elapsed() >= SCAN_MAX_TIME {
                stopped = Some(format!("stopped after {} s and {examined} keys", SCAN_MAX_TIME.as_secs()));
                break 'nodes;
            }
        }
    }
    if let Some(e) = error {
        return vec![Check::new("redis", "redis.keys_without_ttl", Status::Fail, format!("the key scan failed: {e}"))];
    }
    let partial = stopped.as_deref().map(|s| format!(" ({s}: partial)")).unwrap_or_default();
    let ttl_check = if no_ttl_count == 0 {
        Check::new(
            "redis",
            "redis.keys_without_ttl",
            Status::Ok,
            format!("every key under {base}: has a TTL but the flags hash ({examined} keys examined){partial}"),
        )
    } else {
        let more = if no_ttl_count > no_ttl.len() {
            format!(" and {} more", no_ttl_count - no_ttl.len())
        } else {
            String::new()
        };
        Check::new(
            "redis",
            "redis.keys_without_ttl",
            Status::Fail,
            format!(
                "{no_ttl_count} key(s) under {base}: without a TTL (they would never expire): {}{more}{partial}",
                no_ttl.join(", ")
            ),
        )
    }
    .with("count", json!(no_ttl_count))
    .with("keys", json!(no_ttl))
    .with("examined", json!(examined))
    .with("complete", json!(stopped.is_none()));

    let total: u64 = namespaces.values().map(|n| n.bytes).sum();
    let memory_note = if memory { human_bytes(total) } else { "memory not measured: MEMORY USAGE failed".to_owned() };
    let lines: Vec<String> = namespaces
        .iter()
        .map(|(name, n)| {
            let name = if name.is_empty() { "(none)" } else { name };
            if memory {
                format!("{name:<8} {:>8} keys {:>12}", n.keys, human_bytes(n.bytes))
            } else {
                format!("{name:<8} {:>8} keys", n.keys)
            }
        })
        .collect();
    let usage = Check::new(
        "redis",
        "redis.namespaces",
        Status::Ok,
        format!("{examined} keys under {base}:, {memory_note}{partial}"),
    )
    .lines(lines)
    .with("namespaces", json!(namespaces))
    .with("examined", json!(examined))
    .with("memory_measured", json!(memory))
    .with("complete", json!(stopped.is_none()));
    vec![ttl_check, usage]
}

/// PTTL (and MEMORY USAGE when `memory`) of each key, in one pipeline.
async fn inspect(
    conn: &mut MultiplexedConnection,
    batch: &[String],
    memory: bool,
) -> Result<Vec<(i64, Option<u64>)>, String> {
    let mut pipe = redis::pipe();
    for key in batch {
        pipe.cmd("PTTL").arg(key);
        if memory {
            pipe.cmd("MEMORY").arg("USAGE").arg(key);
        }
    }
    let values: Vec<redis::Value> = match tokio::time::timeout(STEP_TIMEOUT, pipe.query_async(conn)).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return Err(redis_error(&e)),
        Err(_) => return Err(format!("no answer within {} s", STEP_TIMEOUT.as_secs())),
    };
    let per_key = if memory { 2 } else { 1 };
    if values.len() != batch.len() * per_key {
        return Err("the pipeline answered the wrong number of replies".into());
    }
    values
        .chunks(per_key)
        .map(|replies| {
            let ttl = redis::from_redis_value_ref::<i64>(&replies[0]).map_err(|e| format!("PTTL: {e}"))?;
            let bytes = replies.get(1).and_then(|v| redis::from_redis_value_ref::<Option<u64>>(v).ok().flatten());
            Ok((ttl, bytes))
        })
        .collect()
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64;
    let mut unit = "B";
    for u in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = u;
    }
    format!("{value:.1} {unit}")
}

// Flags.

/// The five flags in force and where each value comes from, resolved as
/// the service resolves them ([`Flags`]: a run-time override in the flags
/// hash wins over the environment).
fn flags_check(config: &Config, source: FlagSource) -> Check {
    let flags = Flags::new(config.env_flags());
    let env = config.env_flags();
    let mut status = Status::Ok;
    let mut notes = Vec::new();
    let flags_key = format!("{}:{}:flags", config.redis_prefix, config.app_env);
    match source {
        FlagSource::NotConfigured => {
            notes.push("no Redis settings, so no run-time overrides: the environment's values are in force".to_owned())
        }
        FlagSource::Unreadable(why) => {
            status = Status::Warn;
            notes.push(format!(
                "the overrides in {flags_key} could not be read ({why}): the environment's values are shown; an \
                 instance keeps its last known overrides"
            ));
        }
        FlagSource::Hash(hash) => {
            flags.load_hash(&hash);
            // load_hash keeps exactly the fields it understood.
            let understood = flags.overrides();
            let mut ignored: Vec<String> = hash
                .iter()
                .filter(|(name, _)| Flag::parse(name).is_none_or(|f| !understood.contains_key(&f)))
                .map(|(name, value)| format!("{name}={value}"))
                .collect();
            ignored.sort();
            if !ignored.is_empty() {
                status = Status::Warn;
                notes.push(format!("{flags_key} has fields the service ignores: {}", ignored.join(", ")));
            }
        }
    }
    let overrides = flags.overrides();
    let effective = flags.effective();
    let on_off = |v: bool| if v { "on" } else { "off" };
    let mut lines = Vec::new();
    let mut facts = Map::new();
    for flag in Flag::ALL {
        let value = effective[&flag];
        let from_env = env.get(&flag).copied().unwrap_or(false);
        let (source, line) = match overrides.get(&flag) {
            Some(_) => (
                "override",
                format!(
                    "{:<27} {:<3} (run-time override; environment: {})",
                    flag.name(),
                    on_off(value),
                    on_off(from_env)
                ),
            ),
            None => ("environment", format!("{:<27} {:<3} (environment)", flag.name(), on_off(value))),
        };
        lines.push(line);
        facts.insert(flag.name().to_owned(), json!({"value": value, "source": source, "environment": from_env}));
    }
    let on_redis: Vec<&str> = [Flag::TaskStatus, Flag::ChatSession, Flag::Cache, Flag::RateLimit]
        .into_iter()
        .filter(|f| effective[&Flag::RedisEnabled] && effective[f])
        .map(|f| match f {
            Flag::TaskStatus => "task status",
            Flag::ChatSession => "chat sessions",
            Flag::Cache => "cache",
            _ => "rate limits",
        })
        .collect();
    let mut detail = format!(
        "{} on Redis; {} run-time override(s); dual write {}, fallback {}",
        if on_redis.is_empty() { "no feature".to_owned() } else { on_redis.join(", ") },
        overrides.len(),
        on_off(config.redis_dual_write),
        format!("{:?}", config.redis_fallback).to_ascii_lowercase()
    );
    for note in notes {
        detail.push_str("; ");
        detail.push_str(&note);
    }
    Check::new("flags", "flags", status, detail).lines(lines).with("flags", Value::Object(facts))
}

// Upstreams.

fn http_client() -> Result<reqwest::Client, String> {
    crate::llm::install_tls_provider();
    reqwest::Client::builder()
        .connect_timeout(STEP_TIMEOUT)
        .timeout(STEP_TIMEOUT)
        // A redirect could carry the API key elsewhere; the service does not
        // follow them either.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("reportd-doctor/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))
}

/// A reqwest error without its URL (which may carry credentials), with its
/// causes.
fn describe_http(e: reqwest::Error) -> String {
    let timeout = e.is_timeout();
    let e = e.without_url();
    let mut parts =
        vec![if timeout { format!("no answer within {} s", STEP_TIMEOUT.as_secs()) } else { e.to_string() }];
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.contains(&text) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

/// The body, up to [`MAX_BODY_BYTES`].
async fn read_body(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(describe_http)? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(format!("the answer is larger than {}", human_bytes(MAX_BODY_BYTES as u64)));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A short single-line quote of a body (scrubbed later with the rest).
fn excerpt(body: &[u8]) -> String {
    let flat = String::from_utf8_lossy(body).split_whitespace().collect::<Vec<_>>().join(" ");
    let mut short: String = flat.chars().take(160).collect();
    if flat.chars().count() > 160 {
        short.push('…');
    }
    short
}

/// Sends `request` (`shown` names it in messages): its status and body
/// (or why the body could not be read), each step within [`STEP_TIMEOUT`];
/// `Err` when there was no answer at all.
async fn fetch(request: reqwest::RequestBuilder, shown: &str) -> Result<(u16, Result<Vec<u8>, String>), String> {
    let response = match tokio::time::timeout(STEP_TIMEOUT, request.send()).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(format!("{shown}: unreachable: {}", describe_http(e))),
        Err(_) => return Err(format!("{shown}: no answer within {} s", STEP_TIMEOUT.as_secs())),
    };
    let code = response.status().as_u16();
    let body = tokio::time::timeout(STEP_TIMEOUT, read_body(response))
        .await
        .unwrap_or_else(|_| Err(format!("the body did not arrive within {} s", STEP_TIMEOUT.as_secs())));
    Ok((code, body))
}

async fn llm_check(config: &Config) -> Check {
    let check = |status, detail: String| Check::new("upstreams", "llm", status, detail);
    let Some(base) = config.llm_base_url.as_deref().map(str::trim).filter(|u| !u.is_empty()) else {
        return check(
            Status::Ok,
            "not configured (LLM_BASE_URL unset): the assistants use the built-in offline provider".to_owned(),
        )
        .with("configured", json!(false));
    };
    let model = config.llm_model.as_str();
    let url = format!("{}/models", base.trim_end_matches('/'));
    let client = match http_client() {
        Ok(c) => c,
        Err(e) => return check(Status::Fail, e),
    };
    let mut request = client.get(&url);
    if let Some(key) = config.llm_api_key.as_deref().map(str::trim).filter(|k| !k.is_empty()) {
        request = request.bearer_auth(key);
    }
    let (code, body) = match fetch(request, &format!("GET {url}")).await {
        Ok(answer) => answer,
        Err(e) => return check(Status::Fail, e),
    };
    let check =
        |status, detail: String| check(status, detail).with("configured", json!(true)).with("http_status", json!(code));
    match code {
        401 | 403 => check(
            Status::Fail,
            format!(
                "GET {url} answered HTTP {code}: the API key was refused (check LLM_API_KEY): {}",
                body.as_deref().map(excerpt).unwrap_or_default()
            ),
        ),
        200..=299 => {
            let body = match body {
                Ok(b) => b,
                Err(e) => return check(Status::Warn, format!("GET {url} answered {code}, but {e}")),
            };
            let ids: Option<Vec<String>> = serde_json::from_slice::<Value>(&body).ok().and_then(|v| {
                v.get("data")?
                    .as_array()
                    .map(|items| items.iter().filter_map(|i| i.get("id")?.as_str().map(str::to_owned)).collect())
            });
            match ids {
                Some(ids) if ids.iter().any(|id| id == model) => {
                    check(Status::Ok, format!("{base} answers; LLM_MODEL {model} is among its {} model(s)", ids.len()))
                        .with("model_listed", json!(true))
                }
                Some(ids) => {
                    let shown: Vec<&str> = ids.iter().take(10).map(String::as_str).collect();
                    check(
                        Status::Warn,
                        format!(
                            "{base} answers, but LLM_MODEL {model} is not among its {} model(s){}{}",
                            ids.len(),
                            if shown.is_empty() { String::new() } else { format!(": {}", shown.join(", ")) },
                            if ids.len() > shown.len() { ", …" } else { "" }
                        ),
                    )
                    .with("model_listed", json!(false))
                    .with("models", json!(shown))
                }
                None => check(
                    Status::Warn,
                    format!("GET {url} answered {code}, but not with a model list (`data[].id`): {}", excerpt(&body)),
                ),
            }
        }
        // Some compatible servers have no model list: reachable, but the
        // model cannot be confirmed.
        404 | 405 | 501 => check(
            Status::Warn,
            format!(
                "{base} answers, but has no model list (GET /models: HTTP {code}), so LLM_MODEL {model} is unconfirmed"
            ),
        ),
        _ => check(
            Status::Fail,
            format!("GET {url} answered HTTP {code}: {}", body.as_deref().map(excerpt).unwrap_or_default()),
        ),
    }
}

async fn search_check(config: &Config) -> Check {
    let check = |status, detail: String| Check::new("upstreams", "search", status, detail);
    let Some(base) = config.search_url.as_deref().map(str::trim).filter(|u| !u.is_empty()) else {
        return check(
            Status::Ok,
            "not configured (SEARCH_URL unset): the search assistant has no web search tool".to_owned(),
        )
        .with("configured", json!(false));
    };
    let url = format!("{}/search", base.trim_end_matches('/'));
    let client = match http_client() {
        Ok(c) => c,
        Err(e) => return check(Status::Fail, e),
    };
    let shown = format!("GET {url}?q=test&format=json");
    let target = match reqwest::Url::parse_with_params(&url, &[("q", "test"), ("format", "json")]) {
        Ok(target) => target,
        Err(e) => return check(Status::Fail, format!("SEARCH_URL does not make a valid URL: {e}")),
    };
    let request = client.get(target);
    let (code, body) = match fetch(request, &shown).await {
        Ok(answer) => answer,
        Err(e) => return check(Status::Fail, e),
    };
    let check =
        |status, detail: String| check(status, detail).with("configured", json!(true)).with("http_status", json!(code));
    match (code, body) {
        (403, _) => check(
            Status::Fail,
            format!(
                "{shown} answered HTTP 403: the JSON format is not enabled in SearXNG (add `json` to `search.formats` \
                 in its settings.yml)"
            ),
        ),
        (200, Ok(body)) => {
            let results = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("results").and_then(Value::as_array).map(Vec::len));
            match results {
                Some(n) => check(Status::Ok, format!("{base} answers SearXNG JSON ({n} result(s) for \"test\")"))
                    .with("results", json!(n)),
                None => check(
                    Status::Fail,
                    format!("{shown} answered 200, but not JSON with a `results` array: {}", excerpt(&body)),
                ),
            }
        }
        (200, Err(e)) => check(Status::Fail, format!("{shown} answered 200, but {e}")),
        (code, body) => {
            let quoted = body.map(|b| excerpt(&b)).unwrap_or_default();
            check(Status::Fail, format!("{shown} answered HTTP {code}: {quoted}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_scrubbed_in_every_form() {
        use clap::Parser;
        let cli = crate::Cli::try_parse_from([
            "reportd",
            "--llm-api-key",
            "sk-abc/def",
            "--redis-url",
            "redis://:p%40ss%3Aword@cache:6379/0",
            "--redis-password",
            "x",
        ])
        .unwrap();
        let secrets = secrets(&cli.config);
        let text = "key sk-abc/def, encoded sk-abc%2Fdef, url p%40ss%3Aword, plain p@ss:word, short x";
        let scrubbed = scrub(text, &secrets);
        assert!(!scrubbed.contains("sk-abc"), "{scrubbed}");
        assert!(!scrubbed.contains("p%40ss") && !scrubbed.contains("p@ss"), "{scrubbed}");
        assert!(scrubbed.ends_with("short x"), "a one-letter secret is not scrubbed: {scrubbed}");
    }

    #[test]
    fn locations_are_described_without_passwords() {
        assert_eq!(describe_database("sqlite://data/reportd.db?mode=rwc"), "SQLite file data/reportd.db");
        let pg = describe_database("postgres://app:hunter22@db:5433/reportd");
        assert_eq!(pg, "PostgreSQL db:5433/reportd");
        let redis = describe_redis("redis://:hunter22@cache:6380/2");
        assert_eq!(redis, "redis://cache:6380 db 2 (with a password)");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }

    #[test]
    fn the_report_status_is_the_worst_check() {
        let mut report = Report::new(vec!["hunter22".into()]);
        assert_eq!(report.status(), Status::Ok);
        report.push(Check::new("a", "one", Status::Ok, "fine"));
        report.push(Check::new("a", "two", Status::Warn, "password hunter22 seen").with("x", json!(["hunter22"])));
        assert_eq!(report.status(), Status::Warn);
        assert!(!report.failed());
        report.push(Check::new("b", "three", Status::Fail, "broken"));
        assert!(report.failed());
        let json = report.to_json();
        assert_eq!(json["status"], "fail");
        assert_eq!(json["checks"][1]["x"][0], "[redacted]");
        let text = report.to_text();
        assert!(text.contains("  FAIL  three") && !text.contains("hunter22"), "{text}");
    }
}
