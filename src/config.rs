//! Command line and configuration.
//!
//! One clap struct gives every setting both as a flag and as the environment
//! variable named in SPEC §4 and §7 (a `.env` file is read first if present).
//! `reportd --help` lists them all. Values are checked at start-up:
//! [`Config::validate`] turns a bad combination into a clear error.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args, Parser, Subcommand};

use crate::keys::KeySpace;
use crate::net::TrustedProxies;
use crate::state::{FallbackMode, Flag, RedisSettings, RedisTopology};

#[derive(Debug, Parser)]
#[command(name = "reportd", version, about = "Backend of an AI report-writing application")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service (the default).
    Serve,
    /// Manage accounts.
    #[command(subcommand)]
    User(UserCommand),
    /// Ask the service on HOST:PORT for `GET /healthz`: exit 0 on 200, 1
    /// otherwise (a container HEALTHCHECK that needs no curl in the image).
    Healthcheck {
        /// Give up after this many milliseconds (connecting and answering).
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
    /// Check this deployment with the settings the service would use: the
    /// configuration, the database and its migrations, Redis (connection,
    /// persistence, eviction policy, keys without a TTL, memory), the flags in
    /// force, the LLM and search endpoints. Exit 0 unless a check failed.
    Doctor {
        /// One JSON object instead of the readable report.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user. The password comes from REPORTD_PASSWORD, else from
    /// standard input (first line).
    Add {
        name: String,
        /// Give the user the admin role.
        #[arg(long)]
        admin: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on.
    #[arg(long, env = "PORT", default_value_t = 8000)]
    pub port: u16,
    /// Deployment environment; part of every Redis key. `prod` enforces a real JWT secret.
    #[arg(long, env = "APP_ENV", default_value = "dev")]
    pub app_env: String,
    /// Directory for the default SQLite file and the generated dev secret.
    #[arg(long, env = "DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// sqlx URL: sqlite:///abs.db, sqlite://relative.db or postgres://… (default: a SQLite file in DATA_DIR).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// HS256 signing secret, at least 32 bytes (required when APP_ENV=prod).
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Lifetime of an access token.
    #[arg(long, env = "JWT_TTL_SECONDS", default_value_t = 86_400)]
    pub jwt_ttl_seconds: u64,

    /// Full Redis URL (redis://[:password@]host:port/db); overrides REDIS_HOST and friends.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Redis host (used when REDIS_URL is not set).
    #[arg(long, env = "REDIS_HOST")]
    pub redis_host: Option<String>,
    /// Redis port.
    #[arg(long, env = "REDIS_PORT", default_value_t = 6379)]
    pub redis_port: u16,
    /// Redis password (`requirepass`).
    #[arg(long, env = "REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<String>,
    /// Redis database number.
    #[arg(long, env = "REDIS_DB", default_value_t = 0)]
    pub redis_db: u32,
    /// Redis Sentinels (`host:port`, comma-separated): the master is found
    /// through them, and found again after a failover. Replaces REDIS_HOST;
    /// REDIS_PASSWORD and REDIS_DB (or REDIS_URL's) apply to the master and replicas.
    #[arg(long, env = "REDIS_SENTINELS", value_delimiter = ',')]
    pub redis_sentinels: Vec<String>,
    /// The name the sentinels monitor the master under.
    #[arg(long, env = "REDIS_SENTINEL_MASTER", default_value = "mymaster")]
    pub redis_sentinel_master: String,
    /// The sentinels' own password (their `requirepass`), when they have one.
    #[arg(long, env = "REDIS_SENTINEL_PASSWORD", hide_env_values = true)]
    pub redis_sentinel_password: Option<String>,
    /// Seed nodes of a Redis Cluster (`host:port`, comma-separated). Replaces
    /// REDIS_HOST; REDIS_PASSWORD (or REDIS_URL's) applies to every node.
    #[arg(long, env = "REDIS_CLUSTER_NODES", value_delimiter = ',')]
    pub redis_cluster_nodes: Vec<String>,
    /// First part of every Redis key.
    #[arg(long, env = "REDIS_PREFIX", default_value = "langextract")]
    pub redis_prefix: String,

    /// Master switch: 0 keeps all state in process memory.
    #[arg(long, env = "REDIS_ENABLED", default_value = "0", value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub redis_enabled: bool,
    /// Import task status in Redis.
    #[arg(long, env = "REDIS_TASK_STATUS_ENABLED", default_value = "0", value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub redis_task_status_enabled: bool,
    /// The three chat sessions in Redis.
    #[arg(long, env = "REDIS_CHAT_SESSION_ENABLED", default_value = "0", value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub redis_chat_session_enabled: bool,
    /// Short-TTL cache of read-heavy endpoints in Redis.
    #[arg(long, env = "REDIS_CACHE_ENABLED", default_value = "0", value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub redis_cache_enabled: bool,
    /// How long a cached read (document list, document, search) is kept; 10 to 60.
    #[arg(long, env = "CACHE_TTL_SECONDS", default_value_t = 30)]
    pub cache_ttl_seconds: u64,
    /// Rate and concurrency limits shared through Redis.
    #[arg(long, env = "REDIS_RATE_LIMIT_ENABLED", default_value = "0", value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub redis_rate_limit_enabled: bool,
    /// Also write state to memory while Redis serves, so turning a flag off loses nothing.
    #[arg(long, env = "REDIS_DUAL_WRITE", default_value = "1", value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub redis_dual_write: bool,
    /// What to do when Redis fails.
    #[arg(long, env = "REDIS_FALLBACK", value_enum, default_value = "memory")]
    pub redis_fallback: FallbackMode,
    /// Time allowed to open a connection to Redis.
    #[arg(long, env = "REDIS_CONNECT_TIMEOUT_MS", default_value_t = 300)]
    pub redis_connect_timeout_ms: u64,
    /// Time allowed for one Redis command.
    #[arg(long, env = "REDIS_COMMAND_TIMEOUT_MS", default_value_t = 500)]
    pub redis_command_timeout_ms: u64,
    /// How often Redis is pinged (closes the circuit breaker when it is back).
    #[arg(long, env = "REDIS_HEALTH_INTERVAL_MS", default_value_t = 500)]
    pub redis_health_interval_ms: u64,
    /// How often the run-time flag overrides are reloaded from Redis.
    #[arg(long, env = "FLAGS_REFRESH_MS", default_value_t = 1000)]
    pub flags_refresh_ms: u64,
    /// Cap on entries held in process memory (expired entries are swept anyway).
    #[arg(long, env = "MEMORY_MAX_KEYS", default_value_t = 200_000)]
    pub memory_max_keys: usize,

    /// How long an import task's status is kept.
    #[arg(long, env = "TASK_STATUS_TTL_SECONDS", default_value_t = 86_400)]
    pub task_status_ttl_seconds: u64,
    /// Largest accepted upload.
    #[arg(long, env = "MAX_UPLOAD_MB", default_value_t = 50)]
    pub max_upload_mb: u64,
    /// Uploads this instance receives at once (each is written to a temporary file as it arrives); more answer 503.
    #[arg(long, env = "MAX_UPLOADS_IN_FLIGHT", default_value_t = 8)]
    pub max_uploads_in_flight: usize,
    /// Imports processed at once by this instance.
    #[arg(long, env = "IMPORT_WORKERS", default_value_t = 2)]
    pub import_workers: usize,
    /// Imports waiting for a worker before new uploads are refused (503).
    #[arg(long, env = "IMPORT_QUEUE_CAPACITY", default_value_t = 64)]
    pub import_queue_capacity: usize,
    /// Longest time one document may take to parse before its import fails.
    #[arg(long, env = "IMPORT_PARSE_TIMEOUT_SECONDS", default_value_t = 120)]
    pub import_parse_timeout_seconds: u64,
    /// Memory a parse worker (the child process that parses one file) may use before it is stopped.
    #[arg(long, env = "IMPORT_PARSE_MEMORY_MB", default_value_t = 1536)]
    pub import_parse_memory_mb: u64,
    /// The binary run as a parse worker (default: this one).
    #[arg(long, env = "IMPORT_PARSER_EXE", hide = true)]
    pub import_parser_exe: Option<PathBuf>,
    /// A running import not heard from for this long has lost its worker and is taken over.
    #[arg(long, env = "IMPORT_HEARTBEAT_TIMEOUT_SECONDS", default_value_t = 15)]
    pub import_heartbeat_timeout_seconds: u64,
    /// Starts of one import before its task fails because its worker kept being lost.
    #[arg(long, env = "IMPORT_MAX_ATTEMPTS", default_value_t = 3)]
    pub import_max_attempts: u32,
    /// Live entries in the shared import stream before new uploads are refused (503).
    #[arg(long, env = "IMPORT_STREAM_MAX_LEN", default_value_t = 10_000)]
    pub import_stream_max_len: u64,
    /// Largest chunk, in characters.
    #[arg(long, env = "CHUNK_SIZE_CHARS", default_value_t = 1000)]
    pub chunk_size_chars: usize,
    /// Characters a chunk repeats from the end of the previous one.
    #[arg(long, env = "CHUNK_OVERLAP_CHARS", default_value_t = 100)]
    pub chunk_overlap_chars: usize,
    /// Pause between import stages (demos and tests that watch progress); 0 in production.
    #[arg(long, env = "IMPORT_STAGE_DELAY_MS", default_value_t = 0)]
    pub import_stage_delay_ms: u64,

    /// A client must send a request's headers within this many seconds of starting it (or of opening the connection).
    #[arg(long, env = "HTTP_HEADER_TIMEOUT_SECONDS", default_value_t = 10)]
    pub http_header_timeout_seconds: u64,
    /// Longest pause inside a request body (an upload) before the request fails.
    #[arg(long, env = "HTTP_BODY_TIMEOUT_SECONDS", default_value_t = 30)]
    pub http_body_timeout_seconds: u64,
    /// Connections this instance keeps open at once; more are closed at once.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 16_384)]
    pub max_connections: usize,
    /// 0 lifts every rate limit (for benchmarks and emergencies); the concurrency limits stay.
    #[arg(long, env = "RATE_LIMITS_ENABLED", default_value = "1", value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub rate_limits_enabled: bool,
    /// Status polls (`/check_import_status`, `/imports/{id}`) per second per user.
    #[arg(long, env = "LIMIT_POLLS_PER_SEC", default_value_t = 10.0)]
    pub limit_polls_per_sec: f64,
    /// Polls a user may send at once above that rate.
    #[arg(long, env = "LIMIT_POLLS_BURST", default_value_t = 20)]
    pub limit_polls_burst: u32,
    /// Other authenticated requests per second per user.
    #[arg(long, env = "LIMIT_REQUESTS_PER_SEC", default_value_t = 50.0)]
    pub limit_requests_per_sec: f64,
    /// Requests a user may send at once above that rate.
    #[arg(long, env = "LIMIT_REQUESTS_BURST", default_value_t = 100)]
    pub limit_requests_burst: u32,
    /// Open SSE streams (answers and resumes) per user.
    #[arg(long, env = "LIMIT_SSE_PER_USER", default_value_t = 3)]
    pub limit_sse_per_user: u32,
    /// Imports per user, queued plus running.
    #[arg(long, env = "LIMIT_IMPORTS_PER_USER", default_value_t = 2)]
    pub limit_imports_per_user: u32,
    /// Login and registration attempts per minute per client IP, and logins per minute per username.
    #[arg(long, env = "LIMIT_LOGINS_PER_MIN", default_value_t = 10.0)]
    pub limit_logins_per_min: f64,
    /// How long a concurrency lease lives without being renewed (its holder renews it every third of that).
    #[arg(long, env = "LIMIT_LEASE_SECONDS", default_value_t = 30)]
    pub limit_lease_seconds: u64,
    /// Proxies (IPs or CIDRs, comma-separated) whose `X-Forwarded-For` is believed for the client IP.
    #[arg(long, env = "TRUSTED_PROXIES", default_value = "", value_parser = parse_proxies)]
    pub trusted_proxies: TrustedProxies,
    /// Threads that hash and check passwords (argon2id, 19 MiB each); 0: one per core.
    #[arg(long, env = "AUTH_HASH_THREADS", default_value_t = 0)]
    pub auth_hash_threads: usize,
    /// Password checks waiting for a hashing thread before logins and registrations answer 503.
    #[arg(long, env = "AUTH_HASH_QUEUE", default_value_t = 32)]
    pub auth_hash_queue: usize,
    /// OpenAI-compatible chat-completions base URL, including `/v1` (OpenAI, DeepSeek, Qwen, vLLM, Ollama).
    /// Unset: the assistants use the built-in offline provider.
    #[arg(long, env = "LLM_BASE_URL")]
    pub llm_base_url: Option<String>,
    /// API key sent as a bearer token to the LLM endpoint.
    #[arg(long, env = "LLM_API_KEY", hide_env_values = true)]
    pub llm_api_key: Option<String>,
    /// Model name sent to the LLM endpoint.
    #[arg(long, env = "LLM_MODEL", default_value = "gpt-4o-mini")]
    pub llm_model: String,
    /// Time allowed to connect to the LLM endpoint.
    #[arg(long, env = "LLM_CONNECT_TIMEOUT_SECONDS", default_value_t = 10)]
    pub llm_connect_timeout_seconds: u64,
    /// Time allowed from sending a request to the model's first token.
    #[arg(long, env = "LLM_FIRST_TOKEN_TIMEOUT_SECONDS", default_value_t = 60)]
    pub llm_first_token_timeout_seconds: u64,
    /// Longest silence of the model once it has started answering.
    #[arg(long, env = "LLM_IDLE_TIMEOUT_SECONDS", default_value_t = 30)]
    pub llm_idle_timeout_seconds: u64,
    /// Longest a whole answer (every model call and tool of one turn) may take.
    #[arg(long, env = "AI_TURN_TIMEOUT_SECONDS", default_value_t = 300)]
    pub ai_turn_timeout_seconds: u64,
    /// Retries of a model call on 429, 5xx or a failed connection (only before its first byte).
    #[arg(long, env = "LLM_MAX_RETRIES", default_value_t = 2)]
    pub llm_max_retries: u32,
    /// First retry delay in milliseconds (doubled each retry; Retry-After wins when given).
    #[arg(long, env = "LLM_RETRY_BASE_MS", default_value_t = 500)]
    pub llm_retry_base_ms: u64,
    /// `max_tokens` sent with each model call (unset: the model's default).
    #[arg(long, env = "LLM_MAX_TOKENS")]
    pub llm_max_tokens: Option<u32>,
    /// `temperature` sent with each model call (unset: the model's default).
    #[arg(long, env = "LLM_TEMPERATURE")]
    pub llm_temperature: Option<f32>,
    /// SearXNG-compatible search endpoint (queried as {SEARCH_URL}/search?q=…&format=json). Unset: no web search tool.
    #[arg(long, env = "SEARCH_URL")]
    pub search_url: Option<String>,
    /// Time allowed for one web search.
    #[arg(long, env = "SEARCH_TIMEOUT_SECONDS", default_value_t = 10)]
    pub search_timeout_seconds: u64,
    /// Directory with `generate.md`, `optimize.md`, `search.md` overriding the built-in system prompts (each optional).
    #[arg(long, env = "PROMPTS_DIR")]
    pub prompts_dir: Option<PathBuf>,
    /// How long a chat session is kept after its last turn.
    #[arg(long, env = "CHAT_SESSION_TTL_SECONDS", default_value_t = 7200)]
    pub chat_session_ttl_seconds: u64,
    /// Messages kept per chat session (two per round; the oldest rounds go first).
    #[arg(long, env = "CHAT_MAX_MESSAGES", default_value_t = 40)]
    pub chat_max_messages: usize,
    /// Lease of a running turn on its session; renewed while it runs, so a crashed instance's lock expires after this.
    #[arg(long, env = "CHAT_LOCK_TTL_SECONDS", default_value_t = 30)]
    pub chat_lock_ttl_seconds: u64,
    /// Tool rounds a web-search turn may take before the model must answer.
    #[arg(long, env = "AI_MAX_TOOL_ROUNDS", default_value_t = 3)]
    pub ai_max_tool_rounds: u32,
    /// Characters accepted in one message, passage or instruction.
    #[arg(long, env = "AI_MAX_INPUT_CHARS", default_value_t = 20_000)]
    pub ai_max_input_chars: usize,
    /// Characters of one answer before it is cut (finish_reason "length").
    #[arg(long, env = "AI_MAX_ANSWER_CHARS", default_value_t = 60_000)]
    pub ai_max_answer_chars: usize,
    /// Answer streams this instance runs at once before new ones are refused (503).
    #[arg(long, env = "AI_MAX_STREAMS", default_value_t = 10_000)]
    pub ai_max_streams: usize,
    /// How long a stream's events stay available for resuming after its last event.
    #[arg(long, env = "AI_STREAM_TTL_SECONDS", default_value_t = 3600)]
    pub ai_stream_ttl_seconds: u64,
    /// Events kept per stream for resuming (older ones are dropped first).
    #[arg(long, env = "AI_STREAM_MAX_EVENTS", default_value_t = 10_000)]
    pub ai_stream_max_events: usize,
    /// Shortest interval between two delta events (deltas in between are merged): bounds events and Redis writes per stream.
    #[arg(long, env = "AI_DELTA_INTERVAL_MS", default_value_t = 50)]
    pub ai_delta_interval_ms: u64,
    /// Interval of SSE keep-alive comments.
    #[arg(long, env = "SSE_KEEPALIVE_SECONDS", default_value_t = 15)]
    pub sse_keepalive_seconds: u64,

    /// On shutdown, how long imports in progress may take to finish.
    #[arg(long, env = "SHUTDOWN_GRACE_SECONDS", default_value_t = 30)]
    pub shutdown_grace_seconds: u64,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl Config {
    /// Checks what clap cannot: combinations and formats.
    pub fn validate(&self) -> anyhow::Result<()> {
        KeySpace::new(&self.redis_prefix, &self.app_env)?;
        if self.is_prod() {
            match &self.jwt_secret {
                Some(s) if s.len() >= 32 => {}
                _ => anyhow::bail!("APP_ENV=prod needs JWT_SECRET of at least 32 bytes"),
            }
        }
        if let Some(s) = &self.jwt_secret
            && s.len() < 32
        {
            anyhow::bail!("JWT_SECRET must be at least 32 bytes");
        }
        anyhow::ensure!(
            !self.redis_enabled || self.redis_settings().is_some(),
            "REDIS_ENABLED=1 needs REDIS_URL, REDIS_HOST, REDIS_SENTINELS or REDIS_CLUSTER_NODES"
        );
        anyhow::ensure!(
            self.redis_sentinels.iter().all(|n| n.trim().is_empty())
                || self.redis_cluster_nodes.iter().all(|n| n.trim().is_empty()),
            "REDIS_SENTINELS and REDIS_CLUSTER_NODES exclude each other: a cluster fails over by itself"
        );
        for (name, list) in
            [("REDIS_SENTINELS", &self.redis_sentinels), ("REDIS_CLUSTER_NODES", &self.redis_cluster_nodes)]
        {
            for node in list.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
                let valid = node
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
                anyhow::ensure!(valid, "{name}: `{node}` is not host:port");
            }
        }
        if let Some(settings) = self.redis_settings()
            && matches!(settings.topology, RedisTopology::Cluster { .. })
        {
            let db = redis::IntoConnectionInfo::into_connection_info(settings.url.as_str())
                .map(|info| info.redis_settings().db())
                .map_err(|e| anyhow::anyhow!("invalid Redis connection settings: {e}"))?;
            anyhow::ensure!(db == 0, "a Redis Cluster has only database 0 (REDIS_DB or REDIS_URL says {db})");
        }
        anyhow::ensure!(self.max_upload_mb >= 1, "MAX_UPLOAD_MB must be at least 1");
        for (name, rate) in [
            ("LIMIT_POLLS_PER_SEC", self.limit_polls_per_sec),
            ("LIMIT_REQUESTS_PER_SEC", self.limit_requests_per_sec),
            ("LIMIT_LOGINS_PER_MIN", self.limit_logins_per_min),
        ] {
            anyhow::ensure!(rate.is_finite() && rate > 0.0, "{name} must be a positive number");
        }
        for (name, n) in [
            ("LIMIT_POLLS_BURST", self.limit_polls_burst),
            ("LIMIT_REQUESTS_BURST", self.limit_requests_burst),
            ("LIMIT_SSE_PER_USER", self.limit_sse_per_user),
            ("LIMIT_IMPORTS_PER_USER", self.limit_imports_per_user),
        ] {
            anyhow::ensure!(n >= 1, "{name} must be at least 1");
        }
        anyhow::ensure!(self.limit_lease_seconds >= 3, "LIMIT_LEASE_SECONDS must be at least 3");
        anyhow::ensure!(self.import_workers >= 1, "IMPORT_WORKERS must be at least 1");
        anyhow::ensure!(self.import_queue_capacity >= 1, "IMPORT_QUEUE_CAPACITY must be at least 1");
        anyhow::ensure!(self.task_status_ttl_seconds >= 60, "TASK_STATUS_TTL_SECONDS must be at least 60");
        anyhow::ensure!(self.import_parse_memory_mb >= 64, "IMPORT_PARSE_MEMORY_MB must be at least 64");
        anyhow::ensure!(self.import_parse_timeout_seconds >= 1, "IMPORT_PARSE_TIMEOUT_SECONDS must be at least 1");
        anyhow::ensure!(
            self.import_heartbeat_timeout_seconds >= 1,
            "IMPORT_HEARTBEAT_TIMEOUT_SECONDS must be at least 1"
        );
        anyhow::ensure!(self.import_max_attempts >= 1, "IMPORT_MAX_ATTEMPTS must be at least 1");
        anyhow::ensure!(self.import_stream_max_len >= 1, "IMPORT_STREAM_MAX_LEN must be at least 1");
        anyhow::ensure!(
            (100..=100_000).contains(&self.chunk_size_chars),
            "CHUNK_SIZE_CHARS must be between 100 and 100000"
        );
        anyhow::ensure!(
            self.chunk_overlap_chars < self.chunk_size_chars,
            "CHUNK_OVERLAP_CHARS must be smaller than CHUNK_SIZE_CHARS"
        );
        anyhow::ensure!((10..=60).contains(&self.cache_ttl_seconds), "CACHE_TTL_SECONDS must be between 10 and 60");
        anyhow::ensure!(self.redis_command_timeout_ms >= 10, "REDIS_COMMAND_TIMEOUT_MS must be at least 10");
        anyhow::ensure!(self.chat_max_messages >= 2, "CHAT_MAX_MESSAGES must be at least 2");
        anyhow::ensure!(self.chat_session_ttl_seconds >= 60, "CHAT_SESSION_TTL_SECONDS must be at least 60");
        anyhow::ensure!(self.chat_lock_ttl_seconds >= 1, "CHAT_LOCK_TTL_SECONDS must be at least 1");
        anyhow::ensure!(self.ai_max_streams >= 1, "AI_MAX_STREAMS must be at least 1");
        anyhow::ensure!(self.ai_stream_max_events >= 100, "AI_STREAM_MAX_EVENTS must be at least 100");
        anyhow::ensure!(self.ai_stream_ttl_seconds >= 60, "AI_STREAM_TTL_SECONDS must be at least 60");
        anyhow::ensure!(self.ai_max_input_chars >= 100, "AI_MAX_INPUT_CHARS must be at least 100");
        anyhow::ensure!(self.ai_max_answer_chars >= 100, "AI_MAX_ANSWER_CHARS must be at least 100");
        anyhow::ensure!(self.sse_keepalive_seconds >= 1, "SSE_KEEPALIVE_SECONDS must be at least 1");
        anyhow::ensure!(self.http_header_timeout_seconds >= 1, "HTTP_HEADER_TIMEOUT_SECONDS must be at least 1");
        anyhow::ensure!(self.http_body_timeout_seconds >= 1, "HTTP_BODY_TIMEOUT_SECONDS must be at least 1");
        anyhow::ensure!(self.max_connections >= 1, "MAX_CONNECTIONS must be at least 1");
        anyhow::ensure!(self.max_uploads_in_flight >= 1, "MAX_UPLOADS_IN_FLIGHT must be at least 1");
        for (name, url) in [("LLM_BASE_URL", &self.llm_base_url), ("SEARCH_URL", &self.search_url)] {
            if let Some(url) = url.as_deref().filter(|u| !u.is_empty()) {
                anyhow::ensure!(
                    url.starts_with("http://") || url.starts_with("https://"),
                    "{name} must be an http:// or https:// URL"
                );
            }
        }
        if let Some(url) = &self.database_url {
            anyhow::ensure!(
                url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://"),
                "DATABASE_URL must start with sqlite:, postgres:// or postgresql://"
            );
        }
        Ok(())
    }

    pub fn is_prod(&self) -> bool {
        self.app_env == "prod"
    }

    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("reportd.db").display()))
    }

    /// The Redis client settings, when Redis connection settings are given.
    /// With sentinels or cluster nodes, the URL (REDIS_URL, or one built from
    /// REDIS_PASSWORD and REDIS_DB on the first node) only carries the
    /// credentials and database; the addresses come from the topology.
    pub fn redis_settings(&self) -> Option<RedisSettings> {
        let nodes = |list: &[String]| -> Vec<String> {
            list.iter().map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()).collect()
        };
        let (sentinels, cluster) = (nodes(&self.redis_sentinels), nodes(&self.redis_cluster_nodes));
        let topology = if !cluster.is_empty() {
            RedisTopology::Cluster { nodes: cluster }
        } else if !sentinels.is_empty() {
            RedisTopology::Sentinel {
                sentinels,
                master: self.redis_sentinel_master.clone(),
                password: self.redis_sentinel_password.clone().filter(|p| !p.is_empty()),
            }
        } else {
            RedisTopology::Single
        };
        let from_parts = |host: &str| {
            let auth = match &self.redis_password {
                Some(pw) if !pw.is_empty() => format!(":{}@", percent_encode(pw)),
                _ => String::new(),
            };
            format!("redis://{auth}{host}:{}/{}", self.redis_port, self.redis_db)
        };
        let url = match (&self.redis_url, &self.redis_host, &topology) {
            (Some(url), _, _) if !url.is_empty() => url.clone(),
            (_, Some(host), RedisTopology::Single) if !host.is_empty() => from_parts(host),
            (_, _, RedisTopology::Single) => return None,
            (_, _, RedisTopology::Sentinel { sentinels: first, .. } | RedisTopology::Cluster { nodes: first }) => {
                let (host, _) = first[0].rsplit_once(':').unwrap_or((first[0].as_str(), ""));
                from_parts(host)
            }
        };
        Some(RedisSettings {
            url,
            topology,
            connect_timeout: Duration::from_millis(self.redis_connect_timeout_ms),
            command_timeout: Duration::from_millis(self.redis_command_timeout_ms),
            health_interval: Duration::from_millis(self.redis_health_interval_ms.max(50)),
        })
    }

    pub fn env_flags(&self) -> BTreeMap<Flag, bool> {
        BTreeMap::from([
            (Flag::RedisEnabled, self.redis_enabled),
            (Flag::TaskStatus, self.redis_task_status_enabled),
            (Flag::ChatSession, self.redis_chat_session_enabled),
            (Flag::Cache, self.redis_cache_enabled),
            (Flag::RateLimit, self.redis_rate_limit_enabled),
        ])
    }

    pub fn max_upload_bytes(&self) -> usize {
        usize::try_from(self.max_upload_mb.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX)
    }
}

fn parse_proxies(raw: &str) -> Result<TrustedProxies, String> {
    raw.parse()
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut all = vec!["reportd"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap().config
    }

    #[test]
    fn redis_url_is_built_from_parts_with_an_encoded_password() {
        let c = parse(&[
            "--redis-host",
            "cache",
            "--redis-port",
            "6380",
            "--redis-password",
            "p@ss:w/rd",
            "--redis-db",
            "2",
        ]);
        assert_eq!(c.redis_settings().unwrap().url, "redis://:p%40ss%3Aw%2Frd@cache:6380/2");
        let c = parse(&["--redis-url", "redis://x:1/0", "--redis-host", "ignored"]);
        assert_eq!(c.redis_settings().unwrap().url, "redis://x:1/0");
    }

    #[test]
    fn sentinels_and_cluster_nodes_choose_the_topology_and_keep_the_credentials() {
        let c = parse(&[
            "--redis-sentinels",
            "s1:26379, s2:26379,",
            "--redis-sentinel-password",
            "sp",
            "--redis-password",
            "p@ss",
            "--redis-db",
            "3",
        ]);
        let s = c.redis_settings().unwrap();
        assert_eq!(
            s.topology,
            RedisTopology::Sentinel {
                sentinels: vec!["s1:26379".into(), "s2:26379".into()],
                master: "mymaster".into(),
                password: Some("sp".into()),
            }
        );
        assert_eq!(s.url, "redis://:p%40ss@s1:6379/3");
        c.validate().unwrap();

        let c = parse(&["--redis-cluster-nodes", "n1:7000,n2:7001", "--redis-password", "pw", "--redis-enabled", "1"]);
        let s = c.redis_settings().unwrap();
        assert_eq!(s.topology, RedisTopology::Cluster { nodes: vec!["n1:7000".into(), "n2:7001".into()] });
        assert_eq!(s.url, "redis://:pw@n1:6379/0");
        c.validate().unwrap();

        let refused = |args: &[&str], words: &str| {
            let e = parse(args).validate().unwrap_err().to_string();
            assert!(e.contains(words), "{e}");
        };
        refused(&["--redis-cluster-nodes", "n1:7000", "--redis-db", "1"], "only database 0");
        refused(&["--redis-cluster-nodes", "n1"], "not host:port");
        refused(&["--redis-sentinels", "s1:0"], "not host:port");
        refused(&["--redis-sentinels", "s1:1", "--redis-cluster-nodes", "n1:2"], "exclude each other");
    }

    #[test]
    fn flags_accept_the_usual_spellings() {
        let c = parse(&["--redis-enabled", "true", "--redis-dual-write", "0", "--redis-fallback", "readonly"]);
        assert!(c.redis_enabled && !c.redis_dual_write);
        assert_eq!(c.redis_fallback, FallbackMode::Readonly);
        assert!(Cli::try_parse_from(["reportd", "--redis-enabled", "maybe"]).is_err());
    }

    #[test]
    fn prod_needs_a_real_secret() {
        assert!(parse(&["--app-env", "prod"]).validate().is_err());
        assert!(parse(&["--app-env", "prod", "--jwt-secret", "short"]).validate().is_err());
        assert!(parse(&["--app-env", "prod", "--jwt-secret", &"s".repeat(32)]).validate().is_ok());
        assert!(parse(&["--app-env", "bad:env"]).validate().is_err());
        assert!(parse(&["--redis-enabled", "1"]).validate().is_err(), "the master switch needs Redis settings");
    }
}
