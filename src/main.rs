//! The `reportd` binary: parse the command line, then hand over to the library.

use std::io::BufRead;

use anyhow::Context;
use clap::Parser;
use reportd::{App, Cli, Command, Config, UserCommand};

// glibc's allocator spent a fifth of the poll path's CPU (bench/limits.sh
// with PROFILE=1); mimalloc's thread-local free lists suit a server of many
// small short-lived allocations.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // A parse worker (a child of the service, see reportd::import::isolate)
    // needs no runtime, configuration or logging: it parses one file.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(reportd::import::isolate::WORKER_ARG) {
        return reportd::import::isolate::worker_main(&args[1..]);
    }
    raise_open_file_limit();
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(run()),
        Err(e) => {
            eprintln!("reportd: cannot start the async runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> std::process::ExitCode {
    // A .env file is optional; a malformed one is worth a word.
    if let Err(e) = dotenvy::dotenv()
        && !e.not_found()
    {
        eprintln!("reportd: ignoring .env: {e}");
    }
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    // A health check runs every few seconds in a container: it answers with
    // its exit status alone, without logging or touching any store. The
    // doctor's report is its output, not to be interleaved with log lines.
    if !matches!(command, Command::Healthcheck { .. } | Command::Doctor { .. }) {
        reportd::telemetry::init_logging(cli.config.log_format);
    }
    let result = match command {
        Command::Serve => serve(cli.config).await,
        Command::User(UserCommand::Add { name, admin }) => add_user(cli.config, &name, admin).await,
        Command::Healthcheck { timeout_ms } => {
            let timeout = std::time::Duration::from_millis(timeout_ms);
            return healthcheck(&cli.config.host, cli.config.port, timeout).await;
        }
        Command::Doctor { json } => return doctor(&cli.config, json).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("reportd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let addr = format!("{}:{}", config.host, config.port);
    let app = App::build(config).await?;
    let listener = tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(address = %listener.local_addr()?, "listening");
    reportd::serve(listener, app, reportd::shutdown_signal()).await
}

async fn add_user(config: Config, name: &str, admin: bool) -> anyhow::Result<()> {
    let password = match std::env::var("REPORTD_PASSWORD") {
        Ok(p) => p,
        Err(_) => {
            eprintln!("password for {name}:");
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).context("cannot read the password")?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    let name = reportd::http::check_username(name).map_err(|e| anyhow::anyhow!("{}", e.detail))?.to_owned();
    reportd::http::check_password(&password).map_err(|e| anyhow::anyhow!("{}", e.detail))?;
    config.validate()?;
    let db = reportd::db::Database::connect(&config.database_url()).await?;
    let hash = tokio::task::spawn_blocking(move || reportd::auth::hash_password(&password)).await??;
    let id = reportd::ids::UserId::generate();
    db.create_user(&id, &name, &hash, admin).await.map_err(|e| {
        if reportd::db::is_unique_violation(&e) { anyhow::anyhow!("the username {name:?} is taken") } else { e.into() }
    })?;
    println!("created {}user {name} ({id})", if admin { "admin " } else { "" });
    Ok(())
}

/// `reportd doctor [--json]`: prints the report (see [`reportd::doctor`]);
/// exit 0 when no check failed (warnings allowed), 1 otherwise.
async fn doctor(config: &Config, json: bool) -> std::process::ExitCode {
    let report = reportd::doctor::run(config).await;
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    if report.failed() { std::process::ExitCode::FAILURE } else { std::process::ExitCode::SUCCESS }
}

/// `reportd healthcheck`: one `GET /healthz` over a plain TCP connection to
/// the address the service listens on. A wildcard listen address (`0.0.0.0`,
/// `::`) is reached through the loopback. Exit 0 on a 200 status line, 1 on
/// anything else (refused, timed out, another status).
async fn healthcheck(host: &str, port: u16, timeout: std::time::Duration) -> std::process::ExitCode {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = match host.trim_start_matches('[').trim_end_matches(']') {
        "0.0.0.0" | "::" | "" => "127.0.0.1",
        other => other,
    };
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect((host, port)).await?;
        // HTTP/1.0 with `Connection: close`: the service closes after the
        // answer, so reading to the end needs no parsing of the body.
        let request = format!("GET /healthz HTTP/1.0\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        // The status line is all that matters; a small bounded read is enough.
        let mut head = Vec::with_capacity(64);
        let mut buf = [0u8; 64];
        while !head.contains(&b'\n') && head.len() < 1024 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        std::io::Result::Ok(head)
    };
    match tokio::time::timeout(timeout, probe).await {
        Ok(Ok(head)) => {
            let line = String::from_utf8_lossy(&head);
            let line = line.lines().next().unwrap_or_default();
            // "HTTP/1.1 200 OK": the second word is the status code.
            if line.starts_with("HTTP/") && line.split_whitespace().nth(1) == Some("200") {
                std::process::ExitCode::SUCCESS
            } else {
                eprintln!("reportd healthcheck: {host}:{port} answered {line:?}");
                std::process::ExitCode::FAILURE
            }
        }
        Ok(Err(e)) => {
            eprintln!("reportd healthcheck: {host}:{port}: {e}");
            std::process::ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("reportd healthcheck: {host}:{port}: no answer within {timeout:?}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit on open files to the hard limit: every client
/// connection, SSE stream and model call is a file descriptor, and the
/// usual soft default (1,024) would cap the service far below
/// `MAX_CONNECTIONS`.
fn raise_open_file_limit() {
    #[cfg(unix)]
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
