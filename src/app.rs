//! Building the service from its configuration, and serving it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::assist::{AssistSettings, Assistants, Prompts, Provider, WebSearch};
use crate::auth::{AccountCheck, PasswordHashers, TokenKeys, load_or_create_secret};
use crate::config::Config;
use crate::db::Database;
use crate::import::chunk::ChunkSettings;
use crate::import::isolate::ParserConfig;
use crate::import::{ImportService, ImportSettings};
use crate::keys::KeySpace;
use crate::llm::{LlmClient, LlmSettings};
use crate::state::{Flags, MemoryBackend, RedisBackend, StateLayer};
use crate::stores::cache::ReadCache;
use crate::stores::chat::{ChatSessionStore, ChatSettings};
use crate::stores::import_queue::{ImportQueue, QueueSettings};
use crate::stores::limits::{LimitSettings, Limits, Rate};
use crate::stores::streams::{StreamLog, StreamSettings};
use crate::stores::tasks::TaskStatusStore;

/// TTL of the import stream, refreshed on every add (SPEC §2).
const IMPORT_STREAM_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Everything a request handler can reach.
pub struct App {
    pub config: Config,
    pub db: Database,
    pub state: Arc<StateLayer>,
    pub tasks: TaskStatusStore,
    /// The read cache of the document endpoints.
    pub cache: ReadCache,
    pub imports: Arc<ImportService>,
    pub assistants: Arc<Assistants>,
    pub tokens: TokenKeys,
    /// The bounded pool that hashes and checks passwords.
    pub passwords: PasswordHashers,
    /// Rate limits and concurrency leases.
    pub limits: Arc<Limits>,
    /// Accounts recently confirmed to exist (see [`AccountCheck`]).
    pub accounts: AccountCheck,
    /// Uploads being received now (`MAX_UPLOADS_IN_FLIGHT`): each is
    /// spooled to a temporary file, then staged; their number bounds that
    /// disk and staging work.
    pub uploads: Arc<tokio::sync::Semaphore>,
    /// Stops the background work (workers, monitors) of this app.
    pub background: CancellationToken,
    /// Fires when the server starts shutting down: open SSE responses end
    /// then (their clients resume on another instance), so that the
    /// graceful shutdown is not held up by streams that last minutes.
    pub stopping: CancellationToken,
}

impl App {
    /// Connects to the database (migrating it), prepares Redis (lazily: a
    /// Redis that is down at start is a degraded start, not a failed one)
    /// and starts the background work.
    pub async fn build(config: Config) -> anyhow::Result<Arc<Self>> {
        config.validate()?;
        crate::telemetry::metrics_handle();
        let db = Database::connect(&config.database_url()).await?;
        let secret = load_or_create_secret(config.jwt_secret.as_deref(), &config.data_dir)?;
        let tokens = TokenKeys::new(&secret, config.jwt_ttl_seconds);
        // Computed now so that the first login of an unknown name costs what
        // every other login costs.
        tokio::task::spawn_blocking(crate::auth::dummy_hash).await?;
        let hash_threads = match config.auth_hash_threads {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let passwords = PasswordHashers::new(hash_threads, config.auth_hash_queue)
            .context("cannot start the password hashing threads")?;

        let keys = KeySpace::new(&config.redis_prefix, &config.app_env)?;
        let memory = Arc::new(MemoryBackend::new(config.memory_max_keys));
        let redis_settings = config.redis_settings();
        let redis = redis_settings.as_ref().map(RedisBackend::new).transpose()?.map(Arc::new);
        let flags = Arc::new(Flags::new(config.env_flags()));
        let state =
            Arc::new(StateLayer::new(keys, memory, redis, flags, config.redis_dual_write, config.redis_fallback));

        let background = CancellationToken::new();
        if let Some(redis) = state.redis() {
            // Learn Redis's state and the flag overrides before serving.
            if !redis.probe().await {
                tracing::warn!(
                    "Redis is configured but unreachable at start: features wanting it serve from their fallback"
                );
            }
            state.refresh_flags().await;
        }
        let health = redis_settings.map_or(Duration::from_millis(500), |s| s.health_interval);
        state.spawn_background(health, Duration::from_millis(config.flags_refresh_ms.max(100)), background.clone());

        let limits = Limits::new(
            state.clone(),
            LimitSettings {
                rates_enabled: config.rate_limits_enabled,
                polls: Rate { per_second: config.limit_polls_per_sec, burst: config.limit_polls_burst },
                requests: Rate { per_second: config.limit_requests_per_sec, burst: config.limit_requests_burst },
                logins: Rate {
                    per_second: config.limit_logins_per_min / 60.0,
                    // A minute's worth at once, then the rate.
                    burst: (config.limit_logins_per_min.ceil() as u32).max(1),
                },
                sse_per_user: config.limit_sse_per_user,
                imports_per_user: config.limit_imports_per_user,
                lease_ttl: Duration::from_secs(config.limit_lease_seconds),
            },
            background.clone(),
        );
        let tasks = TaskStatusStore::new(state.clone(), Duration::from_secs(config.task_status_ttl_seconds));
        let cache = ReadCache::new(state.clone(), Duration::from_secs(config.cache_ttl_seconds));
        cache.spawn_background(background.clone());
        let heartbeat_timeout = Duration::from_secs(config.import_heartbeat_timeout_seconds);
        let queue = ImportQueue::new(
            state.clone(),
            db.clone(),
            QueueSettings {
                local_capacity: config.import_queue_capacity,
                stream_max_len: config.import_stream_max_len,
                stream_ttl: IMPORT_STREAM_TTL,
                heartbeat_timeout,
            },
        );
        let exe = match &config.import_parser_exe {
            Some(exe) => exe.clone(),
            None => std::env::current_exe().context("cannot find this binary to run parse workers")?,
        };
        let imports = ImportService::start(
            db.clone(),
            tasks.clone(),
            queue,
            ImportSettings {
                workers: config.import_workers,
                heartbeat_timeout,
                parser: ParserConfig {
                    exe,
                    timeout: Duration::from_secs(config.import_parse_timeout_seconds),
                    memory_bytes: config.import_parse_memory_mb.saturating_mul(1024 * 1024),
                    chunk: ChunkSettings { size: config.chunk_size_chars, overlap: config.chunk_overlap_chars },
                },
                max_attempts: i64::from(config.import_max_attempts),
                stage_delay: Duration::from_millis(config.import_stage_delay_ms),
                cache: cache.clone(),
                limits: limits.clone(),
            },
            background.clone(),
        );
        imports.recover_statuses().await;
        let assistants = Arc::new(build_assistants(&config, &db, &state, &background)?);
        // The first search would otherwise pay for loading jieba's dictionary.
        tokio::task::spawn_blocking(crate::search::tokenize::warm_up);
        tracing::info!(
            redis_configured = state.redis().is_some(),
            features = ?state.all_feature_status(),
            "reportd ready"
        );
        let stopping = CancellationToken::new();
        let config_uploads = config.max_uploads_in_flight;
        Ok(Arc::new(Self {
            config,
            db,
            state,
            tasks,
            cache,
            imports,
            assistants,
            tokens,
            passwords,
            limits,
            accounts: AccountCheck::new(),
            uploads: Arc::new(tokio::sync::Semaphore::new(config_uploads)),
            background,
            stopping,
        }))
    }
}

/// The assistants, their stores and their provider (a model when
/// `LLM_BASE_URL` is set, else the offline one).
fn build_assistants(
    config: &Config,
    db: &Database,
    state: &Arc<StateLayer>,
    background: &CancellationToken,
) -> anyhow::Result<Assistants> {
    let sessions = ChatSessionStore::new(
        state.clone(),
        ChatSettings {
            ttl: Duration::from_secs(config.chat_session_ttl_seconds),
            max_messages: config.chat_max_messages,
            lease_ttl: Duration::from_secs(config.chat_lock_ttl_seconds),
        },
    );
    let turn_timeout = Duration::from_secs(config.ai_turn_timeout_seconds.max(1));
    let streams = Arc::new(StreamLog::new(
        state.clone(),
        StreamSettings {
            ttl: Duration::from_secs(config.ai_stream_ttl_seconds),
            max_events: config.ai_stream_max_events,
            max_running: config.ai_max_streams,
            finished_budget: 256 * 1024 * 1024,
            poll_interval: Duration::from_millis(100),
            // A turn never runs longer than its timeout: a stream read from
            // Redis that is silent for longer has lost its instance.
            stale_after: turn_timeout + Duration::from_secs(30),
        },
    ));
    streams.spawn_background(background.clone());
    let provider = match config.llm_base_url.as_deref().filter(|u| !u.is_empty()) {
        Some(base_url) => {
            let client = LlmClient::new(LlmSettings {
                base_url: base_url.to_owned(),
                api_key: config.llm_api_key.clone().filter(|k| !k.is_empty()),
                model: config.llm_model.clone(),
                connect_timeout: Duration::from_secs(config.llm_connect_timeout_seconds.max(1)),
                first_token_timeout: Duration::from_secs(config.llm_first_token_timeout_seconds.max(1)),
                idle_timeout: Duration::from_secs(config.llm_idle_timeout_seconds.max(1)),
                max_retries: config.llm_max_retries,
                retry_base_delay: Duration::from_millis(config.llm_retry_base_ms),
                max_tokens: config.llm_max_tokens,
                temperature: config.llm_temperature,
                max_response_bytes: 32 * 1024 * 1024,
            })?;
            tracing::info!(base_url, model = %config.llm_model, "assistants use an OpenAI-compatible model");
            Provider::Llm(client)
        }
        None => {
            tracing::warn!(
                "LLM_BASE_URL is not set: the assistants use the built-in OFFLINE provider, which drafts from \
                 the user's own documents and is not a model"
            );
            Provider::Offline
        }
    };
    let web = match config.search_url.as_deref().filter(|u| !u.is_empty()) {
        Some(url) => Some(WebSearch::new(url, Duration::from_secs(config.search_timeout_seconds.max(1)))?),
        None => None,
    };
    Ok(Assistants {
        db: db.clone(),
        sessions,
        streams,
        provider,
        prompts: Prompts::load(config.prompts_dir.as_deref())?,
        web,
        settings: AssistSettings {
            max_tool_rounds: config.ai_max_tool_rounds,
            max_answer_chars: config.ai_max_answer_chars,
            delta_interval: Duration::from_millis(config.ai_delta_interval_ms),
            turn_timeout,
        },
        turns: Default::default(),
        interrupt: Default::default(),
    })
}

/// Serves `app` on `listener` until `shutdown` completes, then lets
/// in-flight requests finish and stops the background work.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;
    use tower::ServiceExt;

    let router = crate::http::router(app.clone());
    let header_timeout = Duration::from_secs(app.config.http_header_timeout_seconds);
    // Every connection holds a slot: a flood of idle or half-sent
    // connections ends at the cap, not at the open-file limit (when
    // /healthz would stop answering too).
    let slots = Arc::new(tokio::sync::Semaphore::new(app.config.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: let some close.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!("reportd_http_connections_refused_total").increment(1);
            drop(tcp);
            continue;
        };
        // Without TCP_NODELAY, an SSE event written right after another
        // waits for the client's delayed ACK (Nagle): ~20-40 ms on every
        // first delta.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let service = router.clone().map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            req.map(axum::body::Body::new)
        });
        let mut builder = Builder::new(TokioExecutor::new());
        // A client that does not finish its request headers in time (a
        // slow or half-sent request, or an idle keep-alive connection) is
        // closed. SSE responses are not affected: their request is whole.
        // hyper's read buffer bounds a request head: past it, hyper answers
        // 431 itself, with no body (it checks while the head is incomplete,
        // so a head up to about twice this may still be read whole). It is
        // set above the service's own limits (URI and header block, refused
        // with a JSON body by `http::edge`) and well below hyper's default
        // (~400 KiB), which also bounds what a connection sending a huge
        // head can hold.
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .max_buf_size(2 * (crate::http::MAX_URI_BYTES + crate::http::MAX_HEADER_BYTES));
        let conn = builder.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(service)).into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::trace!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    // Open SSE responses end now, each with an `instance_stopping` event
    // that tells its client to resume on another instance (which reads the
    // answer's events from Redis); other requests get the grace period to
    // finish. The answers themselves go on here meanwhile, for as long as
    // the grace period: past it, the ones still running end with an
    // `instance_stopped` error.
    app.stopping.cancel();
    let grace = Duration::from_secs(app.config.shutdown_grace_seconds);
    let connections = async {
        if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
            tracing::warn!("connections still open after the shutdown grace period were dropped");
        }
    };
    let ((), interrupted) = tokio::join!(connections, app.assistants.drain(grace));
    if interrupted > 0 {
        tracing::warn!(answers = interrupted, "answers still running after the shutdown grace period were stopped");
    }
    app.background.cancel();
    if !app.imports.drain(grace).await {
        tracing::warn!("imports still running after the shutdown grace period were abandoned");
    }
    app.db.close().await;
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown signal received, finishing in-flight requests");
}
