#!/usr/bin/env bash
# Read-cache benchmark: GET /documents/search answered from the cache
# (REDIS_CACHE_ENABLED=1) against the same request answered by the database
# (REDIS_CACHE_ENABLED=0), in one run, as a throughput ratio.
#
# It builds the release binary and the example `cache_bench`, starts its own
# redis-server (free port, requirepass, no persistence) and two reportd
# instances on one SQLite file and that Redis, one with the cache on and one
# with it off. `cache_bench` imports DOCUMENTS generated documents (~20 KB of
# mixed Chinese and English report text each), checks that both instances
# give the same answers, then drives each with CONNECTIONS clients for
# SECONDS, cycling through six queries, and prints req/s, p50, p99 and the
# ratio cached / uncached.
#
# Usage: bash bench/cache.sh    (env: SECONDS_PER_RUN=10, CONNECTIONS=32,
#        DOCUMENTS=20, KEEP_TMP=1 to keep the logs)
# Everything runs on 127.0.0.1 and shares the machine's CPUs with the load
# generator: compare figures between runs on one machine.
set -euo pipefail

SECONDS_PER_RUN="${SECONDS_PER_RUN:-10}"
CONNECTIONS="${CONNECTIONS:-32}"
DOCUMENTS="${DOCUMENTS:-20}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

log() { printf '[cache.sh] %s\n' "$*" >&2; }
die() { printf '[cache.sh] ERROR: %s\n' "$*" >&2; exit 1; }

if ! command -v redis-server >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || die "redis-server missing and no apt-get to install it"
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    log "installing redis-server"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server
fi
for cmd in cargo curl python3 redis-server redis-cli; do
    command -v "$cmd" >/dev/null 2>&1 || die "required command not found: $cmd"
done

TMP="$(mktemp -d "${TMPDIR:-/tmp}/reportd-cache-bench.XXXXXX")"
PIDS=()
cleanup() {
    local rc=$?
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ "${KEEP_TMP:-0}" == 1 || $rc -ne 0 ]]; then log "logs kept in $TMP"; else rm -rf "$TMP"; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

log "building the release binary and example (may wait for other builds)"
(cd "$ROOT" && cargo build --release --locked --quiet --bin reportd --example cache_bench) || die "cargo build failed"
# Private copies, so that a concurrent rebuild cannot swap them mid-run.
BIN="$TMP/reportd"
BENCH="$TMP/cache_bench"
cp "$TARGET_DIR/release/reportd" "$BIN"
cp "$TARGET_DIR/release/examples/cache_bench" "$BENCH"

REDIS_PASS="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
REDIS_PORT="$(free_port)"
mkdir -p "$TMP/redis"
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --requirepass "$REDIS_PASS" --save "" --appendonly no \
    --dir "$TMP/redis" --daemonize no --logfile "$TMP/redis.log" >/dev/null 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do
    [[ "$(REDISCLI_AUTH="$REDIS_PASS" redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]] && break
    sleep 0.1
done
[[ "$(REDISCLI_AUTH="$REDIS_PASS" redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]] \
    || die "redis-server did not start"
log "redis-server on 127.0.0.1:$REDIS_PORT"

JWT_SECRET="$(python3 -c 'import secrets; print(secrets.token_hex(32))')"

# start_reportd NAME PORT CACHE_FLAG
start_reportd() {
    local name=$1 port=$2 cache=$3 pid
    mkdir -p "$TMP/$name"
    # A clean environment (no REDIS_* or .env leaking in from the caller).
    # The rate limits (when present) are raised so that the run measures the
    # cache, not the 429 path.
    (cd "$TMP/$name" && exec env -i PATH="$PATH" HOME="${HOME:-/tmp}" \
        DATABASE_URL="sqlite://$TMP/db.sqlite" DATA_DIR="$TMP/$name" JWT_SECRET="$JWT_SECRET" \
        HOST=127.0.0.1 PORT="$port" RUST_LOG=warn \
        REDIS_URL="redis://:$REDIS_PASS@127.0.0.1:$REDIS_PORT/0" REDIS_ENABLED=1 \
        REDIS_TASK_STATUS_ENABLED=1 REDIS_CACHE_ENABLED="$cache" \
        LIMIT_REQUESTS_PER_SEC=1000000 LIMIT_REQUESTS_BURST=1000000 LIMIT_POLLS_PER_SEC=1000000 LIMIT_IMPORTS_PER_USER=1000 \
        "$BIN") >"$TMP/$name.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    for _ in $(seq 1 150); do
        curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$port/healthz" 2>/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || { tail -n 30 "$TMP/$name.log" >&2; die "reportd ($name) exited at start"; }
        sleep 0.1
    done
    die "reportd ($name) did not answer /healthz within 15 s"
}

CACHED_PORT="$(free_port)"
start_reportd cached "$CACHED_PORT" 1
UNCACHED_PORT="$(free_port)"
start_reportd uncached "$UNCACHED_PORT" 0
log "$(nproc) CPUs, load average: $(cut -d' ' -f1-3 /proc/loadavg)"

"$BENCH" --cached "http://127.0.0.1:$CACHED_PORT" --uncached "http://127.0.0.1:$UNCACHED_PORT" \
    --documents "$DOCUMENTS" --seconds "$SECONDS_PER_RUN" --connections "$CONNECTIONS"

hits=$(curl -fsS "http://127.0.0.1:$CACHED_PORT/metrics" \
    | awk '/^reportd_cache_requests_total\{endpoint="search",outcome="hit"\}/ {print $2}')
misses=$(curl -fsS "http://127.0.0.1:$CACHED_PORT/metrics" \
    | awk '/^reportd_cache_requests_total\{endpoint="search",outcome="miss"\}/ {print $2}')
log "cached instance: ${hits:-0} search hits, ${misses:-0} misses"
for name in cached uncached; do
    if grep -qiE 'warn|error' "$TMP/$name.log"; then
        log "warnings in the $name instance's log:"
        grep -iE 'warn|error' "$TMP/$name.log" | tail -n 5 >&2
    fi
done
