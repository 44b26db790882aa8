//! Building the service from its configuration, and serving it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::{TokenKeys, load_or_create_secret};
use crate::config::Config;
use crate::db::Database;
use crate::import::chunk::ChunkSettings;
use crate::import::isolate::ParserConfig;
use crate::import::{ImportService, ImportSettings};
use crate::keys::KeySpace;
use crate::state::{Flags, MemoryBackend, RedisBackend, StateLayer};
use crate::stores::import_queue::{ImportQueue, QueueSettings};
use crate::stores::tasks::TaskStatusStore;

/// TTL of the import stream, refreshed on every add (SPEC §2).
const IMPORT_STREAM_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Everything a request handler can reach.
pub struct App {
    pub config: Config,
    pub db: Database,
    pub state: Arc<StateLayer>,
    pub tasks: TaskStatusStore,
    pub imports: Arc<ImportService>,
    pub tokens: TokenKeys,
    /// Stops the background work (workers, monitors) of this app.
    pub background: CancellationToken,
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

        let tasks = TaskStatusStore::new(state.clone(), Duration::from_secs(config.task_status_ttl_seconds));
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
            },
            background.clone(),
        );
        imports.recover_statuses().await;
        // The first search would otherwise pay for loading jieba's dictionary.
        tokio::task::spawn_blocking(crate::search::tokenize::warm_up);
        tracing::info!(
            redis_configured = state.redis().is_some(),
            features = ?state.all_feature_status(),
            "reportd ready"
        );
        Ok(Arc::new(Self { config, db, state, tasks, imports, tokens, background }))
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then lets
/// in-flight requests finish and stops the background work.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let router = crate::http::router(app.clone());
    let result = axum::serve(listener, router.into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
        .context("server error");
    app.background.cancel();
    let grace = Duration::from_secs(app.config.shutdown_grace_seconds);
    if !app.imports.drain(grace).await {
        tracing::warn!("imports still running after the shutdown grace period were abandoned");
    }
    app.db.close().await;
    result
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
