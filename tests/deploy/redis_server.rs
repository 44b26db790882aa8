//! The compose file's exact `redis-server` command line, run against the
//! local binary (there is no Docker engine here): it demands the password,
//! its persistence settings are the seed's, AOF keeps writes across a
//! SIGKILL and a restart, and the compose health check passes only with the
//! right password.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::files::{compose, interpolate, services};
use crate::harness::wait_for_redis;
use crate::helpers::{find_binary, free_port};

const PASSWORD: &str = "deploy-test-password-0123";

/// The command of the compose file's redis service, interpolated with the
/// test's password, the local binary in place of `redis-server`, and this
/// test's port, directory and bind address appended (later options win).
fn redis_command(port: u16, dir: &Path) -> Command {
    let compose = compose();
    let env = BTreeMap::from([("REDIS_PASSWORD".to_owned(), PASSWORD.to_owned())]);
    let args: Vec<String> = services(&compose)["redis"]["command"]
        .as_array()
        .expect("the command as a list")
        .iter()
        .map(|v| interpolate(v.as_str().unwrap(), &env).unwrap())
        .collect();
    assert_eq!(args[0], "redis-server");
    let binary =
        find_binary(&["redis-server", "valkey-server"]).expect("redis-server (Debian: apt-get install redis-server)");
    let mut command = Command::new(binary);
    command
        .args(&args[1..])
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

async fn connect(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap()
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn the_compose_redis_needs_its_password_and_aof_survives_a_kill() {
    let dir = tempfile::TempDir::new().unwrap();
    let port = free_port();
    let authed = format!("redis://:{PASSWORD}@127.0.0.1:{port}/0");
    let mut server = redis_command(port, dir.path()).spawn().expect("start redis-server");
    wait_for_redis(&authed, Duration::from_secs(10)).await;

    // Without the password, nothing but an authentication error.
    let anonymous = redis::Client::open(format!("redis://127.0.0.1:{port}/0")).unwrap();
    let err = match anonymous.get_multiplexed_async_connection().await {
        Ok(mut c) => redis::cmd("GET").arg("k").query_async::<Option<String>>(&mut c).await.unwrap_err(),
        Err(e) => e,
    };
    assert!(err.to_string().contains("NOAUTH"), "{err}");
    let wrong = redis::Client::open(format!("redis://:wrong@127.0.0.1:{port}/0")).unwrap();
    assert!(wrong.get_multiplexed_async_connection().await.is_err(), "a wrong password is refused");

    // The seed's persistence: AOF, fsync every second, the three snapshot rules.
    let mut c = connect(&authed).await;
    let config = |name: &'static str| {
        let mut c = c.clone();
        async move {
            let pair: Vec<String> = redis::cmd("CONFIG").arg("GET").arg(name).query_async(&mut c).await.unwrap();
            pair[1].clone()
        }
    };
    assert_eq!(config("appendonly").await, "yes");
    assert_eq!(config("appendfsync").await, "everysec");
    assert_eq!(config("save").await, "900 1 300 10 60 10000");

    // A write survives SIGKILL (no shutdown, no snapshot) once a second has
    // passed for the AOF fsync.
    let _: () = redis::cmd("SET").arg("deploy:k").arg("kept").query_async(&mut c).await.unwrap();
    let _: () = redis::cmd("RPUSH").arg("deploy:list").arg("a").arg("b").query_async(&mut c).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    kill(&mut server);
    assert!(!dir.path().join("dump.rdb").exists(), "no snapshot was written: the data can come only from the AOF");
    let mut server = redis_command(port, dir.path()).spawn().expect("restart redis-server");
    wait_for_redis(&authed, Duration::from_secs(10)).await;
    let mut c = connect(&authed).await;
    let v: Option<String> = redis::cmd("GET").arg("deploy:k").query_async(&mut c).await.unwrap();
    assert_eq!(v.as_deref(), Some("kept"));
    let list: Vec<String> = redis::cmd("LRANGE").arg("deploy:list").arg(0).arg(-1).query_async(&mut c).await.unwrap();
    assert_eq!(list, ["a", "b"]);
    kill(&mut server);
}

/// The compose health check, run by `sh` as Docker's CMD-SHELL does (with
/// Compose's `$$` unescaped), pointed at this server's port.
#[tokio::test]
async fn the_compose_health_check_passes_only_with_the_password() {
    let dir = tempfile::TempDir::new().unwrap();
    let port = free_port();
    let mut server = redis_command(port, dir.path()).spawn().expect("start redis-server");
    wait_for_redis(&format!("redis://:{PASSWORD}@127.0.0.1:{port}/0"), Duration::from_secs(10)).await;
    let compose = compose();
    let test: Vec<&str> = services(&compose)["redis"]["healthcheck"]["test"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(test[0], "CMD-SHELL");
    let script = interpolate(test[1], &BTreeMap::new()).unwrap().replace("redis-cli", &format!("redis-cli -p {port}"));
    let run = |password: &str| {
        Command::new("sh").arg("-c").arg(&script).env("REDIS_PASSWORD", password).status().unwrap().success()
    };
    assert!(run(PASSWORD), "healthy with the password: {script}");
    assert!(!run("wrong"), "unhealthy with a wrong password");
    assert!(!run(""), "unhealthy without one");
    kill(&mut server);
    assert!(!run(PASSWORD), "unhealthy when Redis is down");
}
