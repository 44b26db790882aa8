#!/usr/bin/env bash
# The cost of the rate limits on the hottest request, the status poll
# (issue #7): poll throughput and p99 at 64 connections with the limits
# in Redis, in memory and off, and the same binary's /healthz, as ratios
# from one run. The bench user's poll limit is raised so that the limiter
# runs on every poll but never answers 429 (this measures the limiter, not
# the 429 path). Task status is in Redis for every run.
#
# Usage: bash bench/limits.sh   (env: DURATION=10 s per run, CONNECTIONS=64,
#        THREADS=2, PROFILE=1 to record `perf` of the Redis-limits run into
#        $TMP/perf.data and print its top functions, KEEP_TMP=1)
set -euo pipefail

DURATION="${DURATION:-10}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-2}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { printf '[limits.sh] %s\n' "$*" >&2; }
die() { printf '[limits.sh] ERROR: %s\n' "$*" >&2; exit 1; }

need=()
for pair in redis-server:redis-server redis-cli:redis-tools wrk:wrk curl:curl; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair##*:}")
done
if ((${#need[@]})); then
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    log "installing: ${need[*]}"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >&2
fi

TMP="$(mktemp -d "${TMPDIR:-/tmp}/reportd-limits.XXXXXX")"
PIDS=()
cleanup() {
    local rc=$?
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ "${KEEP_TMP:-0}" == 1 || $rc -ne 0 ]]; then log "logs kept in $TMP"; else rm -rf "$TMP"; fi
    exit $rc
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

log "building the release binary"
(cd "$ROOT" && cargo build --release --quiet --bin reportd) || die "build failed"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$TMP/reportd"; cp "$TARGET_DIR/release/reportd" "$BIN"

REDIS_PORT="$(free_port)"; REDIS_PASS="bench-$(date +%s)"
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --requirepass "$REDIS_PASS" --save "" --appendonly no \
    --dir "$TMP" --daemonize no --logfile "$TMP/redis.log" >/dev/null 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do REDISCLI_AUTH="$REDIS_PASS" redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
REDIS_URL="redis://:$REDIS_PASS@127.0.0.1:$REDIS_PORT/0"
JWT_SECRET="$(python3 -c 'import secrets; print(secrets.token_hex(32))')"

# start NAME VAR=VALUE... -> sets PORT, PID
start() {
    local name=$1; shift
    PORT="$(free_port)"; mkdir -p "$TMP/$name"
    (cd "$TMP/$name" && exec env -i PATH="$PATH" HOME="${HOME:-/tmp}" DATABASE_URL="sqlite://$TMP/$name/db.sqlite" \
        DATA_DIR="$TMP/$name" JWT_SECRET="$JWT_SECRET" HOST=127.0.0.1 PORT="$PORT" RUST_LOG=warn \
        REDIS_URL="$REDIS_URL" REDIS_ENABLED=1 REDIS_TASK_STATUS_ENABLED=1 REDIS_PREFIX="bench-$name" \
        LIMIT_POLLS_PER_SEC=1000000000 LIMIT_POLLS_BURST=1000000000 "$@" "$BIN") >"$TMP/$name.log" 2>&1 &
    PID=$!; PIDS+=("$PID")
    for _ in $(seq 150); do curl -fsS -o /dev/null "http://127.0.0.1:$PORT/healthz" 2>/dev/null && return 0; sleep 0.1; done
    tail -n 20 "$TMP/$name.log" >&2; die "$name did not start"
}

# user PORT -> sets TOKEN and TASK (a completed import)
user() {
    local base="http://127.0.0.1:$1" cred='{"username":"bench","password":"bench-password-123"}'
    curl -fsS -o /dev/null -H 'Content-Type: application/json' -d "$cred" "$base/auth/register"
    TOKEN=$(curl -fsS -H 'Content-Type: application/json' -d "$cred" "$base/auth/login" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
    printf '第一章 背景\n本报告用于轮询基准测试。\n' >"$TMP/sample.txt"
    TASK=$(curl -fsS -H "Authorization: Bearer $TOKEN" -F "file=@$TMP/sample.txt" "$base/imports" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["task_id"])')
    for _ in $(seq 100); do
        curl -fsS -H "Authorization: Bearer $TOKEN" "$base/imports/$TASK" | grep -q '"completed"' && return 0
        sleep 0.1
    done
    die "the bench import did not complete"
}

# run LABEL URL [auth] -> sets RPS P99 NON2XX
run() {
    local label=$1 url=$2 out="$TMP/wrk-$1.txt"
    local args=(-t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --timeout 5s --latency)
    [[ ${3:-} == auth ]] && args+=(-H "Authorization: Bearer $TOKEN")
    wrk "${args[@]}" "$url" >"$out" 2>&1 || { cat "$out" >&2; die "wrk failed ($label)"; }
    RPS=$(awk '/^Requests\/sec:/ {print $2}' "$out")
    P99=$(awk '/Latency Distribution/ {b=1; next} b && $1 == "99%" {v=$2; u=v; sub(/^[0-9.]+/,"",u); sub(/[a-z]+$/,"",v);
        if (u=="us") v/=1000; else if (u=="s") v*=1000; printf "%.2f", v; exit}' "$out")
    NON2XX=$(awk -F: '/Non-2xx/ {gsub(/ /,"",$2); print $2}' "$out"); NON2XX=${NON2XX:-0}
    printf '%-28s %10.0f req/s   p99 %7s ms   non-2xx %s\n' "$label" "$RPS" "$P99" "$NON2XX" | tee -a "$TMP/summary.txt" >&2
}

log "$(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg); wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s"
start shared REDIS_RATE_LIMIT_ENABLED=1; PORT_REDIS=$PORT; PID_REDIS=$PID; user "$PORT"; TOKEN_REDIS=$TOKEN; TASK_REDIS=$TASK
# (The raised limit's state lives a millisecond: look for the scripts' runs.)
SCRIPTS=$(REDISCLI_AUTH="$REDIS_PASS" redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' \
    | awk -F'[=,]' '/^cmdstat_(evalsha|eval):/ {n += $2} END {print n + 0}')
[[ $SCRIPTS -ge 1 ]] || die "the Redis run decides no limit in Redis"
start memory REDIS_RATE_LIMIT_ENABLED=0; PORT_MEMORY=$PORT; user "$PORT"; TOKEN_MEMORY=$TOKEN; TASK_MEMORY=$TASK
start off RATE_LIMITS_ENABLED=0; PORT_OFF=$PORT; user "$PORT"; TOKEN_OFF=$TOKEN; TASK_OFF=$TASK

run healthz "http://127.0.0.1:$PORT_REDIS/healthz"; H_RPS=$RPS
TOKEN=$TOKEN_OFF; run "poll, limits off" "http://127.0.0.1:$PORT_OFF/imports/$TASK_OFF" auth; OFF_RPS=$RPS; OFF_P99=$P99
TOKEN=$TOKEN_MEMORY; run "poll, limits in memory" "http://127.0.0.1:$PORT_MEMORY/imports/$TASK_MEMORY" auth; MEM_RPS=$RPS; MEM_P99=$P99
TOKEN=$TOKEN_REDIS
if [[ ${PROFILE:-0} == 1 ]] && command -v perf >/dev/null; then
    perf record -F 999 -g -p "$PID_REDIS" -o "$TMP/perf.data" -- sleep "$DURATION" >/dev/null 2>&1 &
    PERF=$!
fi
run "poll, limits in Redis" "http://127.0.0.1:$PORT_REDIS/imports/$TASK_REDIS" auth; RED_RPS=$RPS; RED_P99=$P99
if [[ -n ${PERF:-} ]]; then
    wait "$PERF" || true
    perf report -i "$TMP/perf.data" --no-children --percent-limit 1.5 --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -40 >&2
fi

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo
echo "poll throughput, limits in Redis / limits off:   $(ratio "$RED_RPS" "$OFF_RPS")   (p99 $RED_P99 vs $OFF_P99 ms)"
echo "poll throughput, limits in memory / limits off:  $(ratio "$MEM_RPS" "$OFF_RPS")   (p99 $MEM_P99 vs $OFF_P99 ms)"
echo "poll with limits in Redis / /healthz:            $(ratio "$RED_RPS" "$H_RPS")"
echo "poll with limits in memory / /healthz:           $(ratio "$MEM_RPS" "$H_RPS")"
echo "poll with limits off / /healthz:                 $(ratio "$OFF_RPS" "$H_RPS")"
