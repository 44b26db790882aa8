//! The shipped deployment files, parsed and checked against issue #8 and
//! SPEC §4/§8: docker-compose.yml (with Compose's interpolation and YAML
//! merge keys applied as Compose applies them), .env.example, .gitignore,
//! the Dockerfile, .dockerignore, nginx.conf, prometheus.yml and Grafana's
//! provisioning.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use crate::harness::read_repo_file;
use crate::helpers::binary;

/// The five feature flags of SPEC §4: all `0` in a fresh deployment.
pub const FLAGS: [&str; 5] = [
    "REDIS_ENABLED",
    "REDIS_TASK_STATUS_ENABLED",
    "REDIS_CHAT_SESSION_ENABLED",
    "REDIS_CACHE_ENABLED",
    "REDIS_RATE_LIMIT_ENABLED",
];

/// Every variable of SPEC §4 (the table, the connection settings of the
/// three topologies, and the timeouts); `every_app_variable_is_a_real_setting`
/// keeps the compose file from naming a setting that does not exist.
pub const SPEC4: [&str; 19] = [
    "REDIS_ENABLED",
    "REDIS_TASK_STATUS_ENABLED",
    "REDIS_CHAT_SESSION_ENABLED",
    "REDIS_CACHE_ENABLED",
    "REDIS_RATE_LIMIT_ENABLED",
    "REDIS_DUAL_WRITE",
    "REDIS_FALLBACK",
    "REDIS_HOST",
    "REDIS_PORT",
    "REDIS_PASSWORD",
    "REDIS_DB",
    "REDIS_PREFIX",
    "APP_ENV",
    "REDIS_CONNECT_TIMEOUT_MS",
    "REDIS_COMMAND_TIMEOUT_MS",
    "REDIS_SENTINELS",
    "REDIS_SENTINEL_MASTER",
    "REDIS_SENTINEL_PASSWORD",
    "REDIS_CLUSTER_NODES",
];

/// Parses YAML into JSON values and applies merge keys (`<<`), nested ones
/// included, as Compose does.
pub fn yaml(text: &str) -> Value {
    let mut value: Value = serde_yaml_ng::from_str(text).expect("valid YAML");
    apply_merges(&mut value);
    value
}

fn apply_merges(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(mut merged) = map.remove("<<") {
                apply_merges(&mut merged);
                let sources = match merged {
                    Value::Array(list) => list,
                    other => vec![other],
                };
                for source in sources {
                    let Value::Object(source) = source else { panic!("a merge key must name a mapping") };
                    for (k, v) in source {
                        map.entry(k).or_insert(v);
                    }
                }
            }
            map.values_mut().for_each(apply_merges);
        }
        Value::Array(list) => list.iter_mut().for_each(apply_merges),
        _ => {}
    }
}

/// Compose's interpolation: `$$`, `${NAME}`, `${NAME:-default}`,
/// `${NAME-default}`, `${NAME:?message}`. `Err` names a required variable
/// that is missing.
pub fn interpolate(text: &str, env: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(after) = rest.strip_prefix("${") {
            let end = after.find('}').expect("an unclosed ${");
            let expr = &after[..end];
            rest = &after[end + 1..];
            let name_end = expr.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(expr.len());
            let (name, op) = expr.split_at(name_end);
            let value = env.get(name).cloned();
            let resolved = if let Some(default) = op.strip_prefix(":-") {
                value.filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_owned())
            } else if let Some(default) = op.strip_prefix('-') {
                value.unwrap_or_else(|| default.to_owned())
            } else if let Some(message) = op.strip_prefix(":?") {
                value.filter(|v| !v.is_empty()).ok_or_else(|| format!("{name}: {message}"))?
            } else {
                assert!(op.is_empty(), "unsupported interpolation ${{{expr}}}");
                value.unwrap_or_default()
            };
            out.push_str(&resolved);
        } else {
            panic!("a bare $ in {text:?}: Compose would read it as a variable");
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// `.env.example` as a map (comments and blank lines skipped).
pub fn env_example() -> BTreeMap<String, String> {
    read_repo_file(".env.example")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("not NAME=value: {l}"));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

pub fn compose() -> Value {
    yaml(&read_repo_file("docker-compose.yml"))
}

pub fn services(compose: &Value) -> &Map<String, Value> {
    compose["services"].as_object().expect("services")
}

pub fn profiles(service: &Value) -> Vec<&str> {
    service["profiles"].as_array().map(|p| p.iter().map(|v| v.as_str().unwrap()).collect()).unwrap_or_default()
}

/// The services that run reportd (built from this repository).
pub fn app_services(compose: &Value) -> Vec<(&String, &Value)> {
    services(compose).iter().filter(|(_, s)| s.get("build").is_some()).collect()
}

/// A service's environment, interpolated with `env`.
pub fn environment(service: &Value, env: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (k, v) in service["environment"].as_object().expect("environment as a mapping") {
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        out.insert(k.clone(), interpolate(&text, env)?);
    }
    Ok(out)
}

fn strings(value: &Value) -> Vec<String> {
    value.as_array().map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect()).unwrap_or_default()
}

/// The names of the settings reportd has (`[env: NAME` in `reportd --help`).
fn real_settings() -> BTreeSet<String> {
    let help = std::process::Command::new(binary()).arg("--help").env_clear().output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    help.split("[env: ")
        .skip(1)
        .map(|s| s.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).next().unwrap().to_owned())
        .collect()
}

#[test]
fn redis_is_the_seeds_service() {
    let compose = compose();
    let redis = &services(&compose)["redis"];
    assert_eq!(redis["image"], "redis:7.2-alpine");
    assert!(profiles(redis).is_empty(), "Redis runs in every profile (deployed, not enabled)");
    let command = strings(&redis["command"]);
    assert_eq!(command[0], "redis-server");
    let joined = command.join(" ");
    assert!(joined.contains("--appendonly yes"), "{joined}");
    assert!(joined.contains("--requirepass ${REDIS_PASSWORD"), "{joined}");
    for save in ["--save 900 1", "--save 300 10", "--save 60 10000"] {
        assert!(joined.contains(save), "{save} in {joined}");
    }
    let test = strings(&redis["healthcheck"]["test"]).join(" ");
    assert!(test.contains("redis-cli -a") && test.contains("REDIS_PASSWORD") && test.contains("ping"), "{test}");
    assert!(redis.get("ports").is_none(), "Redis publishes no port");
    assert!(redis.get("expose").is_none());
    assert_eq!(strings(&redis["networks"]), ["app_network"]);
    let volumes = strings(&redis["volumes"]);
    let named = volumes[0].split(':').next().unwrap();
    assert!(volumes[0].ends_with(":/data"), "{volumes:?}");
    assert!(compose["volumes"].get(named).is_some(), "{named} is a named volume");
    assert!(compose["networks"].get("app_network").is_some());
}

#[test]
fn dev_is_one_app_on_sqlite_and_prod_is_replicas_on_postgres_behind_nginx() {
    let compose = compose();
    let env = env_example();
    let apps = app_services(&compose);
    let dev: Vec<_> = apps.iter().filter(|(_, s)| profiles(s) == ["dev"]).collect();
    assert_eq!(dev.len(), 1, "one app in dev");
    let (_, app) = dev[0];
    assert!(environment(app, &env).unwrap()["DATABASE_URL"].starts_with("sqlite://"));
    assert!(!strings(&app["ports"]).is_empty(), "the dev app publishes its port");

    let prod: Vec<_> = apps.iter().filter(|(_, s)| profiles(s) == ["prod"]).collect();
    assert!(prod.len() >= 2, "several replicas in prod");
    let postgres = &services(&compose)["postgres"];
    assert_eq!(profiles(postgres), ["prod"]);
    let image = postgres["image"].as_str().unwrap();
    assert!(image.starts_with("postgres:16") || image.starts_with("postgres:15"), "{image}");
    assert!(strings(&postgres["healthcheck"]["test"]).join(" ").contains("pg_isready"));
    let pg_volume = strings(&postgres["volumes"])[0].clone();
    assert!(compose["volumes"].get(pg_volume.split(':').next().unwrap()).is_some(), "{pg_volume}");
    for (name, app) in &prod {
        let url = &environment(app, &env).unwrap()["DATABASE_URL"];
        assert!(url.starts_with("postgres://") && url.contains("@postgres:5432/"), "{name}: {url}");
        assert!(app.get("ports").is_none(), "{name} publishes no port");
        assert_eq!(strings(&app["healthcheck"]["test"]), ["CMD", "reportd", "healthcheck"]);
        let depends = app["depends_on"].as_object().unwrap();
        for dep in ["redis", "postgres"] {
            assert_eq!(depends[dep]["condition"], "service_healthy", "{name} waits for {dep}");
        }
    }
    // nginx is the only published port of the prod profile.
    let published: Vec<&String> = services(&compose)
        .iter()
        .filter(|(_, s)| profiles(s).contains(&"prod") || profiles(s).is_empty())
        .filter(|(_, s)| s.get("ports").is_some())
        .map(|(n, _)| n)
        .collect();
    assert_eq!(published, ["nginx"]);
    let nginx = &services(&compose)["nginx"];
    assert_eq!(profiles(nginx), ["prod"]);
    assert!(strings(&nginx["volumes"]).iter().any(|v| v.starts_with("./deploy/nginx.conf:/etc/nginx/nginx.conf")));
    for (name, _) in &prod {
        assert_eq!(nginx["depends_on"][name.as_str()]["condition"], "service_healthy");
    }
    // The upstream of nginx.conf is exactly the prod replicas.
    let conf = read_repo_file("deploy/nginx.conf");
    let upstream: BTreeSet<String> = conf
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("server "))
        .filter(|l| l.contains(":8000"))
        .map(|l| l.split(':').next().unwrap().to_owned())
        .collect();
    let replicas: BTreeSet<String> = prod.iter().map(|(n, _)| (*n).clone()).collect();
    assert_eq!(upstream, replicas);
}

#[test]
fn every_spec_variable_is_set_and_every_flag_starts_at_zero() {
    let compose = compose();
    let example = env_example();
    let empty = BTreeMap::new();
    for (name, app) in app_services(&compose) {
        for env in [&example, &empty] {
            let resolved = match environment(app, env) {
                Ok(r) => r,
                // Without .env only the secrets may be missing, which
                // Compose reports by name (`:?`).
                Err(e) => {
                    assert!(e.starts_with("JWT_SECRET") || e.contains("PASSWORD"), "{e}");
                    let mut secrets = empty.clone();
                    for s in ["JWT_SECRET", "REDIS_PASSWORD", "POSTGRES_PASSWORD"] {
                        secrets.insert(s.to_owned(), "x".repeat(40));
                    }
                    environment(app, &secrets).unwrap()
                }
            };
            for var in SPEC4 {
                assert!(resolved.contains_key(var), "{name} lacks {var}");
            }
            for flag in FLAGS {
                assert_eq!(resolved[flag], "0", "{name}: {flag}");
            }
            assert_eq!(resolved["REDIS_DUAL_WRITE"], "1", "{name}: dual write stays on during the rollout");
            assert_eq!(resolved["REDIS_FALLBACK"], "memory");
            assert_eq!(resolved["REDIS_HOST"], "redis");
            // The single redis service unless .env names sentinels or a cluster.
            assert_eq!(resolved["REDIS_SENTINELS"], "", "{name}");
            assert_eq!(resolved["REDIS_CLUSTER_NODES"], "", "{name}");
            assert_eq!(resolved["HOST"], "0.0.0.0");
        }
        assert!(app["depends_on"]["redis"]["condition"] == "service_healthy", "{name}");
    }
}

#[test]
fn every_app_variable_is_a_real_setting() {
    let settings = real_settings();
    assert!(settings.contains("REDIS_ENABLED") && settings.contains("TRUSTED_PROXIES"), "{settings:?}");
    let compose = compose();
    for (name, app) in app_services(&compose) {
        for var in app["environment"].as_object().unwrap().keys() {
            // RUST_LOG is read by the log filter, not by clap.
            assert!(var == "RUST_LOG" || settings.contains(var), "{name}: {var} is not a setting of reportd");
        }
    }
}

#[test]
fn env_example_holds_every_required_variable_and_env_is_ignored() {
    let example = env_example();
    for flag in FLAGS {
        assert_eq!(example[flag], "0", "{flag}");
    }
    let text = read_repo_file("docker-compose.yml");
    // Every `${NAME:?…}` (required) has a line in .env.example.
    for part in text.split("${").skip(1) {
        let expr = part.split('}').next().unwrap();
        if let Some((name, _)) = expr.split_once(":?") {
            assert!(example.contains_key(name), "{name} is required but not in .env.example");
        }
    }
    assert!(example["JWT_SECRET"].len() >= 32);
    let gitignore = read_repo_file(".gitignore");
    assert!(gitignore.lines().any(|l| l.trim() == ".env" || l.trim() == "/.env"), ".env is git-ignored");
}

#[test]
fn the_apps_behind_nginx_trust_exactly_the_compose_network() {
    let compose = compose();
    let subnet = compose["networks"]["app_network"]["ipam"]["config"][0]["subnet"].as_str().unwrap();
    for (name, app) in app_services(&compose) {
        let env = environment(app, &env_example()).unwrap();
        if profiles(app) == ["prod"] {
            assert_eq!(env["TRUSTED_PROXIES"], subnet, "{name}");
        } else {
            assert_eq!(env["TRUSTED_PROXIES"], "", "{name}: nothing is in front of the dev app");
        }
        assert_eq!(strings(&app["networks"]), ["app_network"]);
    }
}

/// `client_max_body_size` is MAX_UPLOAD_MB plus 1m of multipart envelope.
#[test]
fn nginx_body_limit_goes_with_max_upload_mb() {
    let compose = compose();
    let conf = read_repo_file("deploy/nginx.conf");
    let nginx_mb: u64 = conf
        .lines()
        .find_map(|l| l.trim().strip_prefix("client_max_body_size "))
        .and_then(|v| v.trim_end_matches(';').strip_suffix('m'))
        .and_then(|v| v.parse().ok())
        .expect("client_max_body_size NNm");
    for (name, app) in app_services(&compose) {
        let mb: u64 = environment(app, &env_example()).unwrap()["MAX_UPLOAD_MB"].parse().unwrap();
        assert_eq!(nginx_mb, mb + 1, "{name}");
    }
}

#[test]
fn monitoring_scrapes_every_replica_and_the_exporter() {
    let compose = compose();
    let services = services(&compose);
    for name in ["redis_exporter", "prometheus", "grafana"] {
        assert_eq!(profiles(&services[name]), ["monitoring"], "{name}");
    }
    assert!(services["redis_exporter"]["image"].as_str().unwrap().starts_with("oliver006/redis_exporter"));
    let prometheus = yaml(&read_repo_file("deploy/prometheus.yml"));
    let targets: BTreeSet<String> = prometheus["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|job| job["static_configs"].as_array().unwrap().iter())
        .flat_map(|c| strings(&c["targets"]))
        .collect();
    for (name, _) in app_services(&compose) {
        assert!(targets.contains(&format!("{name}:8000")), "{name} is scraped: {targets:?}");
    }
    assert!(targets.contains("redis_exporter:9121"), "{targets:?}");
    assert!(strings(&services["prometheus"]["volumes"]).iter().any(|v| v.starts_with("./deploy/prometheus.yml:")));

    // Grafana: the provisioned datasource is the one the dashboard names,
    // and the dashboards folder is where the provider looks.
    let grafana_volumes = strings(&services["grafana"]["volumes"]);
    let mount = |host: &str| {
        grafana_volumes
            .iter()
            .find_map(|v| v.strip_prefix(&format!("{host}:")))
            .map(|t| t.trim_end_matches(":ro").to_owned())
            .unwrap_or_else(|| panic!("{host} is mounted into Grafana"))
    };
    let provider = yaml(&read_repo_file("deploy/grafana/provisioning/dashboards/reportd.yml"));
    assert_eq!(provider["providers"][0]["options"]["path"], mount("./deploy/grafana/dashboards"));
    assert_eq!(mount("./deploy/grafana/provisioning"), "/etc/grafana/provisioning");
    let datasource = yaml(&read_repo_file("deploy/grafana/provisioning/datasources/prometheus.yml"));
    let uid = datasource["datasources"][0]["uid"].as_str().unwrap();
    assert_eq!(datasource["datasources"][0]["url"], "http://prometheus:9090");
    let dashboard: Value =
        serde_json::from_str(&read_repo_file("deploy/grafana/dashboards/reportd-rollout.json")).unwrap();
    for panel in dashboard["panels"].as_array().unwrap().iter().filter(|p| p["type"] != "row") {
        assert_eq!(panel["datasource"]["uid"], uid, "{}", panel["title"]);
        assert!(!panel["targets"].as_array().unwrap().is_empty());
    }
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let text = read_repo_file("Dockerfile");
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (op, args) = current.split_once(' ').unwrap_or((&current, ""));
        out.push((op.to_ascii_uppercase(), args.trim().to_owned()));
        current.clear();
    }
    out
}

#[test]
fn the_dockerfile_is_multi_stage_non_root_and_checks_its_health_with_reportd() {
    let instructions = dockerfile();
    let froms: Vec<usize> =
        instructions.iter().enumerate().filter(|(_, (op, _))| op == "FROM").map(|(i, _)| i).collect();
    assert!(froms.len() >= 2, "multi-stage");
    let (builder, runtime) = (&instructions[froms[0]..froms[1]], &instructions[*froms.last().unwrap()..]);
    assert!(builder[0].1.starts_with("rust:") && builder[0].1.contains("bookworm"), "{:?}", builder[0]);
    let build = builder.iter().find(|(op, args)| op == "RUN" && args.contains("cargo build")).expect("a cargo build");
    assert!(build.1.contains("--release") && build.1.contains("--locked"), "{}", build.1);
    // What the build reads: the sources, and the folders compiled into the
    // binary (migrations, prompts, the console's files embedded by
    // rust-embed: every `#[folder = …]` in src/ must be among them).
    let inputs = ["src", "migrations", "prompts", "console"];
    let embed = read_repo_file("src/http/console.rs");
    for folder in embed.lines().filter_map(|l| l.trim().strip_prefix("#[folder = \"")) {
        let dir = folder.trim_end_matches("\"]").trim_end_matches('/');
        assert!(inputs.contains(&dir), "{dir} is embedded, so the image build must copy it");
    }
    for dir in inputs {
        assert!(builder.iter().any(|(op, args)| op == "COPY" && args.starts_with(&format!("{dir} "))), "{dir} copied");
    }
    // The runtime stage: a non-root user, the health check through reportd,
    // nothing downloaded.
    let user = runtime.iter().rev().find(|(op, _)| op == "USER").expect("a USER in the final stage");
    let name = user.1.split(':').next().unwrap();
    assert!(name != "root" && name != "0", "{}", user.1);
    let health = runtime.iter().find(|(op, _)| op == "HEALTHCHECK").expect("a HEALTHCHECK");
    let cmd = health.1.split_once("CMD").expect("HEALTHCHECK … CMD").1;
    assert!(cmd.contains("\"reportd\", \"healthcheck\"") || cmd.contains("reportd healthcheck"), "{cmd}");
    for tool in ["curl", "wget"] {
        assert!(!cmd.contains(tool), "{cmd}");
    }
    for (op, args) in runtime {
        assert!(op != "ADD", "ADD could download: {args}");
        if op == "RUN" {
            for fetch in ["apt-get", "apk", "curl", "wget"] {
                assert!(!args.contains(fetch), "the runtime stage downloads nothing: {args}");
            }
        }
    }
    assert!(runtime.iter().any(|(op, args)| op == "EXPOSE" && args == "8000"));
    let env = runtime.iter().filter(|(op, _)| op == "ENV").map(|(_, a)| a.as_str()).collect::<Vec<_>>().join(" ");
    for setting in ["HOST=0.0.0.0", "DATA_DIR=/data", "DATABASE_URL=sqlite:///data/reportd.db"] {
        assert!(env.contains(setting), "{setting} in {env}");
    }
    // The build context keeps what the build copies.
    let ignored: Vec<String> = read_repo_file(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    for needed in inputs.into_iter().chain(["Cargo.toml", "Cargo.lock"]) {
        assert!(!ignored.iter().any(|i| i == needed || i == &format!("{needed}/")), "{needed} is in the context");
    }
    assert!(ignored.iter().any(|i| i == "target") && ignored.iter().any(|i| i == ".env"));
}
