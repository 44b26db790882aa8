#!/usr/bin/env bash
# Runs the whole test suite: format and lint checks, then every test, with the
# API suite (tests/api) run twice at the same time, once on SQLite and once on
# PostgreSQL, and then its Redis-state tests a third time against a Redis
# Cluster. On Debian/Ubuntu it first installs what the tests need and is
# missing (redis-server, redis-sentinel, PostgreSQL, nginx, Chromium and its
# WebDriver; the Rust toolchain must be there).
#
# It starts a throw-away PostgreSQL cluster (a temp dir, a free port on
# 127.0.0.1, trust auth, fsync off) and removes it on exit. Tests get its
# server URL as REPORTD_TEST_POSTGRES and create a database each.
#
# `scripts/test.sh --postgres-shell` only starts the cluster and opens a shell
# with REPORTD_TEST_POSTGRES set (for running single tests on PostgreSQL);
# the cluster goes away when the shell exits.
set -euo pipefail
cd "$(dirname "$0")/.."

# The PostgreSQL binaries of the newest installed major version, if any.
find_pg_bin() {
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
            echo "$dir"
            return 0
        fi
    done
    return 1
}

# Everything the tests need from the system, installed in this one place.
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
# The failover tests start sentinels (`redis-sentinel`, the same binary).
command -v redis-sentinel >/dev/null 2>&1 || need+=(redis-sentinel)
# The deployment tests run the shipped nginx configuration.
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
find_pg_bin >/dev/null || need+=(postgresql)
# The console tests drive a headless Chromium over WebDriver.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
# A CJK font, so that the console's screenshots show Chinese text.
[ -e /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || need+=(fonts-wqy-microhei)
if [ ${#need[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "missing: ${need[*]} (install them, then re-run)" >&2
        exit 1
    fi
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing ${need[*]} ..."
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
PG_BIN="$(find_pg_bin)" || { echo "PostgreSQL binaries not found under /usr/lib/postgresql" >&2; exit 1; }

# The throw-away cluster. initdb refuses to run as root, so as root the
# cluster belongs to the `postgres` user (which the Debian package creates).
pg_dir="$(mktemp -d "${TMPDIR:-/tmp}/reportd-pg.XXXXXX")"
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
    chown postgres: "$pg_dir"
    as_pg=(runuser -u postgres --)
fi
out_dir="$(mktemp -d "${TMPDIR:-/tmp}/reportd-test.XXXXXX")"
cleanup() {
    pg pg_ctl -D "$pg_dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$pg_dir" "$out_dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A free port: the first one from a random start that nothing answers on.
pg_port=$((20000 + RANDOM % 20000))
while (: </dev/tcp/127.0.0.1/$pg_port) 2>/dev/null; do
    pg_port=$((pg_port + 1))
done
# Runs a PostgreSQL program (as the cluster's owner, from a directory it can read).
pg() {
    local program="$1"
    shift
    (cd "$pg_dir" && "${as_pg[@]}" "$PG_BIN/$program" "$@")
}
pg initdb -D "$pg_dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$pg_dir/initdb.log" 2>&1 ||
    { cat "$pg_dir/initdb.log" >&2; exit 1; }
# Parallel tests each open a database with its own pool: many connections.
# Durability is not wanted here, speed is.
pg pg_ctl -D "$pg_dir/data" -l "$pg_dir/server.log" -w -t 60 start \
    -o "-h 127.0.0.1 -p $pg_port -k $pg_dir -c max_connections=500 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=64MB" \
    >/dev/null || { cat "$pg_dir/server.log" >&2; exit 1; }
export REPORTD_TEST_POSTGRES="postgres://postgres@127.0.0.1:$pg_port/postgres"
echo "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$pg_port"

if [ "${1:-}" = "--postgres-shell" ]; then
    "${SHELL:-bash}" || true
    exit 0
fi

# The tests start their own redis-server processes on free ports; a Redis
# service the package may have started is not used.
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --all-targets --no-run

# The SQLite pass (every test; the lib's PostgreSQL tests use the cluster too)
# and the PostgreSQL pass of the API suite run at the same time, each with
# half the test threads, so the second backend costs little more wall time.
threads="${TEST_THREADS:-4}"
half=$(((threads + 1) / 2))
start=$SECONDS
cargo test --locked --all-targets -- --test-threads="$half" >"$out_dir/sqlite.log" 2>&1 &
sqlite_pid=$!
REPORTD_TEST_DB=postgres cargo test --locked --test api -- --test-threads="$half" >"$out_dir/postgres.log" 2>&1 &
postgres_pid=$!
sqlite_rc=0
postgres_rc=0
wait "$sqlite_pid" || sqlite_rc=$?
wait "$postgres_pid" || postgres_rc=$?

echo "==================== SQLite pass: all tests (exit $sqlite_rc) ===================="
cat "$out_dir/sqlite.log"
echo "==================== PostgreSQL pass: API suite (exit $postgres_rc) ===================="
cat "$out_dir/postgres.log"
echo "==================== both passes took $((SECONDS - start)) s ===================="

# The Redis-state tests once more against a Redis Cluster (three masters
# with a replica each, started per test by the harness): keys and TTLs, two
# instances, limits, answer streams, the import queue, the cache. The
# read-only-replica test needs REPLICAOF, which a cluster node refuses; it
# runs in the passes above.
cluster_start=$SECONDS
cluster_rc=0
REPORTD_TEST_REDIS=cluster cargo test --locked --test api -- --test-threads="$threads" \
    state:: instances:: limits:: ai:: durability:: cache:: imports:: \
    --skip state::a_read_only_replica_is_an_outage_not_an_error \
    --skip state::a_master_without_enough_replicas_is_an_outage_not_an_error >"$out_dir/cluster.log" 2>&1 || cluster_rc=$?
echo "==================== Cluster pass: Redis-state tests on a Redis Cluster (exit $cluster_rc) ===================="
cat "$out_dir/cluster.log"
echo "==================== the cluster pass took $((SECONDS - cluster_start)) s ===================="
if [ "$sqlite_rc" -ne 0 ] || [ "$postgres_rc" -ne 0 ] || [ "$cluster_rc" -ne 0 ]; then
    echo "FAILED: SQLite pass exit $sqlite_rc, PostgreSQL pass exit $postgres_rc, cluster pass exit $cluster_rc" >&2
    exit 1
fi
echo "all three passes passed"
