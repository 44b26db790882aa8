#!/usr/bin/env bash
# Benchmark of import-status polling (GET /check_import_status/{task_id}):
# reportd with task status in Redis vs in process memory, the raw Redis GET
# ceiling, and a Redis failover (kill -9, poll, restart, time to ready).
#
# Usage: bash bench/poll.sh        (env: DURATION=10 seconds per wrk run,
#        FAILOVER_DURATION=3, CONNECTIONS=64, THREADS=2, KEEP_TMP=1 to keep logs)
# Everything runs on 127.0.0.1; everything started here is stopped on exit.
set -euo pipefail

DURATION="${DURATION:-10}"
FAILOVER_DURATION="${FAILOVER_DURATION:-3}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-2}"
BENCH_N="${BENCH_N:-200000}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log() { printf '[poll.sh] %s\n' "$*" >&2; }
die() { printf '[poll.sh] ERROR: %s\n' "$*" >&2; exit 1; }
now_ms() { date +%s%3N; }

# ---------------------------------------------------------------- tools
need_install=()
for pair in redis-server:redis-server redis-cli:redis-tools redis-benchmark:redis-tools wrk:wrk; do
    cmd="${pair%%:*}"; pkg="${pair##*:}"
    command -v "$cmd" >/dev/null 2>&1 || need_install+=("$pkg")
done
if ((${#need_install[@]})); then
    command -v apt-get >/dev/null 2>&1 || die "missing ${need_install[*]} and no apt-get to install them"
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    log "installing: ${need_install[*]}"
    $SUDO apt-get update -qq
    # shellcheck disable=SC2068
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $(printf '%s\n' "${need_install[@]}" | sort -u)
fi
for cmd in curl python3 cargo redis-server redis-cli redis-benchmark wrk; do
    command -v "$cmd" >/dev/null 2>&1 || die "required command not found: $cmd"
done

# ---------------------------------------------------------------- temp dir and cleanup
TMP="$(mktemp -d "${TMPDIR:-/tmp}/reportd-bench.XXXXXX")"
PIDS=()
cleanup() {
    local rc=$?
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ "${KEEP_TMP:-0}" == 1 || $rc -ne 0 ]]; then
        log "logs kept in $TMP"
    else
        rm -rf "$TMP"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# ---------------------------------------------------------------- build
log "building release binary (cargo build --release; may wait for other builds)"
(cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
[[ -x "$ROOT/target/release/reportd" ]] || die "target/release/reportd not found after build"
# A private copy, so that a concurrent rebuild cannot swap the binary mid-run.
BIN="$TMP/reportd"
cp "$ROOT/target/release/reportd" "$BIN"

# ---------------------------------------------------------------- redis
REDIS_PASS="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
REDIS_PORT="$(free_port)"
REDIS_PID=""
mkdir -p "$TMP/redis"

start_redis() {
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --requirepass "$REDIS_PASS" \
        --save "" --appendonly no --dir "$TMP/redis" --daemonize no \
        --logfile "$TMP/redis.log" >/dev/null 2>&1 &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
}

wait_redis() {
    for _ in $(seq 1 100); do
        if [[ "$(REDISCLI_AUTH="$REDIS_PASS" redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]]; then
            return 0
        fi
        kill -0 "$REDIS_PID" 2>/dev/null || { tail -n 20 "$TMP/redis.log" >&2 || true; die "redis-server exited at start"; }
        sleep 0.1
    done
    die "redis-server did not answer PING on port $REDIS_PORT within 10 s"
}

rcli() { REDISCLI_AUTH="$REDIS_PASS" redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }

log "starting redis-server on 127.0.0.1:$REDIS_PORT"
start_redis
wait_redis

# ---------------------------------------------------------------- reportd
JWT_SECRET="$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
REPORTD_PID=""

# start_reportd NAME PORT [VAR=VALUE...]
start_reportd() {
    local name=$1 port=$2; shift 2
    mkdir -p "$TMP/$name"
    # A clean environment (no REDIS_* or .env leaking in from the caller).
    (cd "$TMP/$name" && exec env -i PATH="$PATH" HOME="${HOME:-/tmp}" \
        DATABASE_URL="sqlite://$TMP/$name/db.sqlite" DATA_DIR="$TMP/$name" \
        JWT_SECRET="$JWT_SECRET" HOST=127.0.0.1 PORT="$port" RUST_LOG=warn \
        "$@" "$BIN") >"$TMP/$name.log" 2>&1 &
    REPORTD_PID=$!
    PIDS+=("$REPORTD_PID")
    for _ in $(seq 1 150); do
        if curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$port/healthz" 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$REPORTD_PID" 2>/dev/null; then
            tail -n 30 "$TMP/$name.log" >&2 || true
            die "reportd ($name) exited at start"
        fi
        sleep 0.1
    done
    tail -n 30 "$TMP/$name.log" >&2 || true
    die "reportd ($name) did not answer /healthz on port $port within 15 s"
}

stop_pid() {
    local pid=$1
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

json_field() { # json_field FIELD < json
    python3 -c 'import json,sys
try:
    v = json.load(sys.stdin)[sys.argv[1]]
except Exception:
    sys.exit(1)
print(v if not isinstance(v, bool) else str(v).lower())' "$1"
}

printf 'Ligne de test.\n第一章 背景\n本报告用于轮询基准测试。\nThis is a small text document used by the polling benchmark.\n' >"$TMP/sample.txt"

# setup_user NAME PORT -> sets TOKEN and TASK
setup_user() {
    local name=$1 port=$2 base="http://127.0.0.1:$2" code body
    local cred="{\"username\":\"bench_$name\",\"password\":\"bench-password-123\"}"
    code=$(curl -sS -o "$TMP/$name.register.json" -w '%{http_code}' --max-time 10 \
        -H 'Content-Type: application/json' -d "$cred" "$base/auth/register") || die "register request failed ($name)"
    [[ $code == 201 ]] || die "POST /auth/register ($name) answered $code: $(cat "$TMP/$name.register.json")"
    code=$(curl -sS -o "$TMP/$name.login.json" -w '%{http_code}' --max-time 10 \
        -H 'Content-Type: application/json' -d "$cred" "$base/auth/login") || die "login request failed ($name)"
    [[ $code == 200 ]] || die "POST /auth/login ($name) answered $code: $(cat "$TMP/$name.login.json")"
    TOKEN=$(json_field access_token <"$TMP/$name.login.json") || die "no access_token in login answer ($name)"
    code=$(curl -sS -o "$TMP/$name.upload.json" -w '%{http_code}' --max-time 30 \
        -H "Authorization: Bearer $TOKEN" -F "file=@$TMP/sample.txt;type=text/plain" "$base/imports") \
        || die "upload request failed ($name)"
    [[ $code == 202 ]] || die "POST /imports ($name) answered $code: $(cat "$TMP/$name.upload.json")"
    TASK=$(json_field task_id <"$TMP/$name.upload.json") || die "no task_id in upload answer ($name)"
    local status="" t0; t0=$(now_ms)
    for _ in $(seq 1 300); do
        body=$(curl -sS --max-time 5 -H "Authorization: Bearer $TOKEN" "$base/check_import_status/$TASK") || body=""
        status=$(json_field status <<<"$body") || status=""
        case $status in
            completed) log "$name: import $TASK completed in $(( $(now_ms) - t0 )) ms"; return 0 ;;
            failed) die "import failed ($name): $body" ;;
        esac
        sleep 0.1
    done
    die "import did not complete within 30 s ($name); last answer: $body"
}

# ---------------------------------------------------------------- wrk
# run_wrk LABEL PORT SECONDS -> sets W_RPS W_P50 W_P99 W_NON2XX W_ERRORS; prints raw output to stderr
run_wrk() {
    local label=$1 port=$2 secs=$3 out="$TMP/wrk-$1.txt"
    log "wrk $label: -t$THREADS -c$CONNECTIONS -d${secs}s"
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"${secs}s" --timeout 5s --latency \
        -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$port/check_import_status/$TASK" >"$out" 2>&1 \
        || { cat "$out" >&2; die "wrk failed ($label)"; }
    sed 's/^/    | /' "$out" >&2
    W_RPS=$(awk '/^Requests\/sec:/ {print $2}' "$out")
    [[ -n $W_RPS ]] || die "no Requests/sec in wrk output ($label)"
    W_P50=$(wrk_pct "$out" 50)
    W_P99=$(wrk_pct "$out" 99)
    W_NON2XX=$(awk -F: '/Non-2xx or 3xx responses/ {gsub(/ /,"",$2); print $2}' "$out")
    W_NON2XX=${W_NON2XX:-0}
    W_ERRORS=$(grep -E '^ *Socket errors:' "$out" | sed 's/^ *//' || true)
}

# wrk_pct FILE PCT -> latency in ms from the "Latency Distribution" block
wrk_pct() {
    awk -v pct="$2%" '
        /Latency Distribution/ {inblk=1; next}
        inblk && $1 == pct {
            v=$2; unit=v; sub(/^[0-9.]+/, "", unit); sub(/[a-z]+$/, "", v)
            if (unit == "us") v = v / 1000; else if (unit == "s") v = v * 1000; else if (unit == "m") v = v * 60000
            printf "%.3f", v; exit
        }' "$1"
}

# ---------------------------------------------------------------- 1. reportd, task status in Redis
PORT_ON="$(free_port)"
log "starting reportd (redis on) on 127.0.0.1:$PORT_ON"
start_reportd redis-on "$PORT_ON" \
    REDIS_URL="redis://:$REDIS_PASS@127.0.0.1:$REDIS_PORT/0" REDIS_ENABLED=1 REDIS_TASK_STATUS_ENABLED=1
PID_ON=$REPORTD_PID
setup_user on "$PORT_ON"
TOKEN_ON=$TOKEN TASK_ON=$TASK
READY_ON=$(curl -sS --max-time 5 "http://127.0.0.1:$PORT_ON/readyz" || true)
TS_BACKEND_ON=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["features"]["task_status"]["backend"])' "$READY_ON" 2>/dev/null || echo "?")
REDIS_TASK_KEYS=$(rcli --scan --pattern '*:task:import:*' 2>/dev/null | wc -l)
log "redis-on: /readyz task_status backend=$TS_BACKEND_ON, task keys in Redis: $REDIS_TASK_KEYS"
[[ $TS_BACKEND_ON == redis ]] || log "WARNING: task_status is not served by Redis ($READY_ON)"
redis_cmds() { rcli info stats 2>/dev/null | tr -d '\r' | awk -F: '$1 == "total_commands_processed" {print $2}'; }
CMDS0=$(redis_cmds)
run_wrk redis-on "$PORT_ON" "$DURATION"
CMDS1=$(redis_cmds)
# Requests wrk completed (its Requests/sec counts only completed ones).
ON_REQS=$(awk '/requests in/ {print $1}' "$TMP/wrk-redis-on.txt")
REDIS_CMDS_ON=$(( ${CMDS1:-0} - ${CMDS0:-0} ))
ON_RPS=$W_RPS ON_P50=$W_P50 ON_P99=$W_P99 ON_NON2XX=$W_NON2XX ON_ERR=$W_ERRORS

# ---------------------------------------------------------------- 2. reportd, Redis off
PORT_OFF="$(free_port)"
log "starting reportd (redis off) on 127.0.0.1:$PORT_OFF"
start_reportd redis-off "$PORT_OFF" REDIS_ENABLED=0
PID_OFF=$REPORTD_PID
setup_user off "$PORT_OFF"
run_wrk redis-off "$PORT_OFF" "$DURATION"
OFF_RPS=$W_RPS OFF_P50=$W_P50 OFF_P99=$W_P99 OFF_NON2XX=$W_NON2XX OFF_ERR=$W_ERRORS
stop_pid "$PID_OFF"

# ---------------------------------------------------------------- 3. raw Redis ceiling
log "redis-benchmark: -t get -c 64 -n $BENCH_N"
redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -a "$REDIS_PASS" -t get -c 64 -n "$BENCH_N" -q \
    >"$TMP/redis-benchmark.txt" 2>&1 || { cat "$TMP/redis-benchmark.txt" >&2; die "redis-benchmark failed"; }
BENCH_LINE=$(tr '\r' '\n' <"$TMP/redis-benchmark.txt" | grep -E '^GET: .*requests per second' | tail -n 1 || true)
[[ -n $BENCH_LINE ]] || { cat "$TMP/redis-benchmark.txt" >&2; die "cannot read redis-benchmark output"; }
log "    | $BENCH_LINE"
REDIS_RPS=$(sed -E 's/^GET: ([0-9.]+) requests per second.*/\1/' <<<"$BENCH_LINE")
REDIS_P50=$(grep -oE 'p50=[0-9.]+' <<<"$BENCH_LINE" | cut -d= -f2 || true)

# ---------------------------------------------------------------- 4. failover
TOKEN=$TOKEN_ON TASK=$TASK_ON
POLL_URL="http://127.0.0.1:$PORT_ON/check_import_status/$TASK"
READY_BEFORE=$(curl -sS --max-time 5 "http://127.0.0.1:$PORT_ON/readyz" | json_field status || echo "?")
log "failover: /readyz before = $READY_BEFORE; kill -9 redis-server (pid $REDIS_PID)"
# (stderr of the group hides bash's "Killed" job notice)
{ kill -9 "$REDIS_PID"; wait "$REDIS_PID" || true; } 2>/dev/null
FIRST=$(curl -sS -o "$TMP/first-poll.json" -w '%{http_code} %{time_total}' --max-time 10 \
    -H "Authorization: Bearer $TOKEN" "$POLL_URL" || echo "000 10")
FIRST_CODE=${FIRST%% *}
FIRST_MS=$(awk -v t="${FIRST##* }" 'BEGIN {printf "%.1f", t * 1000}')
FIRST_STATUS=$(json_field status <"$TMP/first-poll.json" 2>/dev/null || echo "?")
NEXT_MAX=0 NEXT_BAD=0
for _ in $(seq 1 9); do
    r=$(curl -sS -o /dev/null -w '%{http_code} %{time_total}' --max-time 10 \
        -H "Authorization: Bearer $TOKEN" "$POLL_URL" || echo "000 10")
    [[ ${r%% *} == 200 ]] || NEXT_BAD=$((NEXT_BAD + 1))
    NEXT_MAX=$(awk -v a="$NEXT_MAX" -v t="${r##* }" 'BEGIN {m = t * 1000; printf "%.1f", (m > a ? m : a)}')
done
READY_DOWN=$(curl -sS --max-time 5 "http://127.0.0.1:$PORT_ON/readyz" | json_field status || echo "?")
log "first poll after kill: HTTP $FIRST_CODE in $FIRST_MS ms (task status '$FIRST_STATUS'); next 9: max $NEXT_MAX ms, non-200: $NEXT_BAD; /readyz = $READY_DOWN"
run_wrk redis-down "$PORT_ON" "$FAILOVER_DURATION"
DOWN_RPS=$W_RPS DOWN_P50=$W_P50 DOWN_P99=$W_P99 DOWN_NON2XX=$W_NON2XX DOWN_ERR=$W_ERRORS

log "restarting redis-server on the same port $REDIS_PORT"
T0=$(now_ms)
start_redis
RECOVER_MS="" READY_STATUS=""
for _ in $(seq 1 200); do
    READY_STATUS=$(curl -sS --max-time 1 "http://127.0.0.1:$PORT_ON/readyz" 2>/dev/null | json_field status 2>/dev/null || true)
    if [[ $READY_STATUS == ready ]]; then
        RECOVER_MS=$(( $(now_ms) - T0 ))
        break
    fi
    (( $(now_ms) - T0 >= 10000 )) && break
    sleep 0.05
done
REDIS_UP_MS=$(( $(now_ms) - T0 ))
wait_redis
if [[ -n $RECOVER_MS ]]; then
    log "/readyz ready again after $RECOVER_MS ms"
else
    log "WARNING: /readyz not ready within 10 s after the restart (last status: '${READY_STATUS:-none}')"
fi
AFTER=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 -H "Authorization: Bearer $TOKEN" "$POLL_URL" || echo 000)

# A Redis that hangs (SIGSTOP: the port accepts, nothing answers) is the
# worst case for a client: it costs one REDIS_COMMAND_TIMEOUT_MS, once.
log "hang: SIGSTOP redis-server (pid $REDIS_PID)"
kill -STOP "$REDIS_PID"
HANG_TIMES=()
for _ in $(seq 1 10); do
    r=$(curl -sS -o /dev/null -w '%{http_code} %{time_total}' --max-time 10 \
        -H "Authorization: Bearer $TOKEN" "$POLL_URL" || echo "000 10")
    HANG_TIMES+=("$(awk -v t="${r##* }" 'BEGIN {printf "%.1f", t * 1000}')/${r%% *}")
done
kill -CONT "$REDIS_PID"
log "hang: polls (ms/HTTP code): ${HANG_TIMES[*]}"

strip_ansi() { sed -E 's/\x1b\[[0-9;]*m//g' "$1"; }
WARNS_ON=$(strip_ansi "$TMP/redis-on.log" | grep -ciE 'warn|error' || true)
WARNS_OFF=$(strip_ansi "$TMP/redis-off.log" | grep -ciE 'warn|error' || true)

# ---------------------------------------------------------------- summary
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "n/a" }'; }
{
    echo
    echo "===== reportd poll benchmark ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s) ====="
    printf 'poll redis-on:   %10.1f req/s  p50 %8.3f ms  p99 %8.3f ms  non-2xx %s\n' "$ON_RPS" "$ON_P50" "$ON_P99" "$ON_NON2XX"
    printf 'poll redis-off:  %10.1f req/s  p50 %8.3f ms  p99 %8.3f ms  non-2xx %s\n' "$OFF_RPS" "$OFF_P50" "$OFF_P99" "$OFF_NON2XX"
    printf 'redis GET (redis-benchmark -c 64 -n %s): %.1f req/s  p50 %s ms\n' "$BENCH_N" "$REDIS_RPS" "${REDIS_P50:-?}"
    echo "ratio reportd(redis on) / redis GET:        $(ratio "$ON_RPS" "$REDIS_RPS")"
    echo "ratio reportd(redis on) / reportd(redis off): $(ratio "$ON_RPS" "$OFF_RPS")"
    echo "task_status backend (redis-on run): $TS_BACKEND_ON; task keys in Redis: $REDIS_TASK_KEYS;" \
        "Redis commands during the redis-on wrk: $REDIS_CMDS_ON for $ON_REQS polls ($(ratio "$REDIS_CMDS_ON" "$ON_REQS") per poll)"
    echo "failover: first poll after kill -9: HTTP $FIRST_CODE in $FIRST_MS ms (status '$FIRST_STATUS'); next 9 polls max $NEXT_MAX ms, non-200 $NEXT_BAD"
    echo "failover: /readyz before kill '$READY_BEFORE', while down '$READY_DOWN'"
    printf 'poll redis-down (%ss): %10.1f req/s  p50 %8.3f ms  p99 %8.3f ms  non-2xx %s\n' "$FAILOVER_DURATION" "$DOWN_RPS" "$DOWN_P50" "$DOWN_P99" "$DOWN_NON2XX"
    if [[ -n $RECOVER_MS ]]; then
        echo "recovery: /readyz \"ready\" ${RECOVER_MS} ms after redis-server restart; poll after recovery: HTTP $AFTER"
    else
        echo "recovery: /readyz NOT ready within 10 s (${REDIS_UP_MS} ms waited, last '${READY_STATUS:-none}'); poll after: HTTP $AFTER"
    fi
    echo "hang (SIGSTOP): first poll ${HANG_TIMES[0]%/*} ms (HTTP ${HANG_TIMES[0]#*/}); all 10 (ms/code): ${HANG_TIMES[*]}"
    for l in "redis-on:$ON_ERR" "redis-off:$OFF_ERR" "redis-down:$DOWN_ERR"; do
        [[ -n ${l#*:} ]] && echo "wrk ${l%%:*}: ${l#*:}"
    done
    echo "reportd log lines with warn/error: redis-on $WARNS_ON, redis-off $WARNS_OFF"
    for f in redis-on redis-off; do
        strip_ansi "$TMP/$f.log" | grep -iE 'warn|error' | head -n 5 | sed "s/^/  $f: /" || true
    done
} | tee "$TMP/summary.txt"
