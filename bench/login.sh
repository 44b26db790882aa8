#!/usr/bin/env bash
# Logins under a password-guessing flood (issue #7): 64 connections send
# wrong passwords for DURATION seconds while a valid user logs in once
# every 200 ms from another address. Printed: the flood's answers, the
# server's peak RSS, and the valid logins' latency. Two runs:
#   1. the login limits raised out of the way: the flood reaches argon2,
#      and only the bounded hashing pool (AUTH_HASH_THREADS,
#      AUTH_HASH_QUEUE) keeps the memory flat;
#   2. the default LIMIT_LOGINS_PER_MIN: the flood's address is limited
#      (429) after its first attempts, and the valid user's address is not.
# Behind a trusted proxy (TRUSTED_PROXIES=127.0.0.1), as in the Compose
# deployment, so that X-Forwarded-For tells the two addresses apart.
#
# Usage: bash bench/login.sh   (env: DURATION=5, CONNECTIONS=64)
set -euo pipefail
DURATION="${DURATION:-5}"
CONNECTIONS="${CONNECTIONS:-64}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { printf '[login.sh] %s\n' "$*" >&2; }
die() { printf '[login.sh] ERROR: %s\n' "$*" >&2; exit 1; }
for pair in wrk:wrk curl:curl; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || {
        SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
        $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${pair##*:}" >&2
    }
done
TMP="$(mktemp -d "${TMPDIR:-/tmp}/reportd-login.XXXXXX")"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

log "building the release binary"
(cd "$ROOT" && cargo build --release --quiet --bin reportd) || die "build failed"
BIN="$TMP/reportd"; cp "${CARGO_TARGET_DIR:-$ROOT/target}/release/reportd" "$BIN"

cat >"$TMP/flood.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"username":"victim","password":"a wrong guess"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Forwarded-For"] = "203.0.113.66"
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init() c401 = 0; c429 = 0; c503 = 0; other = 0 end
function response(status)
  if status == 401 then c401 = c401 + 1 elseif status == 429 then c429 = c429 + 1
  elseif status == 503 then c503 = c503 + 1 else other = other + 1 end
end
function done()
  local t = {0, 0, 0, 0}
  for _, th in ipairs(threads) do
    t[1] = t[1] + th:get("c401"); t[2] = t[2] + th:get("c429"); t[3] = t[3] + th:get("c503"); t[4] = t[4] + th:get("other")
  end
  io.write(string.format("STATUS 401=%d 429=%d 503=%d other=%d\n", t[1], t[2], t[3], t[4]))
end
LUA

# phase LABEL VAR=VALUE...
phase() {
    local label=$1; shift
    local port; port="$(free_port)"; mkdir -p "$TMP/$label"
    (cd "$TMP/$label" && exec env -i PATH="$PATH" HOME="${HOME:-/tmp}" DATABASE_URL="sqlite://$TMP/$label/db.sqlite" \
        DATA_DIR="$TMP/$label" JWT_SECRET="$(printf 'x%.0s' {1..40})" HOST=127.0.0.1 PORT="$port" RUST_LOG=warn \
        TRUSTED_PROXIES=127.0.0.1 "$@" "$BIN") >"$TMP/$label.log" 2>&1 &
    local pid=$!; PIDS+=("$pid")
    for _ in $(seq 150); do curl -fsS -o /dev/null "http://127.0.0.1:$port/healthz" 2>/dev/null && break; sleep 0.1; done
    local base="http://127.0.0.1:$port"
    # Valid users, each of whom logs in once during the flood.
    for u in $(seq 0 39); do
        curl -fsS -o /dev/null -H 'Content-Type: application/json' -H "X-Forwarded-For: 198.51.100.$u" \
            -d "{\"username\":\"alice$u\",\"password\":\"correct horse battery\"}" "$base/auth/register"
    done
    curl -fsS -o /dev/null -H 'Content-Type: application/json' -H 'X-Forwarded-For: 198.51.100.2' \
        -d '{"username":"victim","password":"victim password"}' "$base/auth/register"
    local rss0; rss0=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --timeout 10s -s "$TMP/flood.lua" "$base/auth/login" >"$TMP/wrk-$label.txt" 2>&1 &
    local wrk_pid=$!
    local peak=$rss0 i=0
    : >"$TMP/valid-$label.txt"
    while kill -0 "$wrk_pid" 2>/dev/null; do
        local r; r=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status"); (( r > peak )) && peak=$r
        if (( i % 4 == 0 )); then
            # A valid login from its own address, one every 200 ms.
            local n=$(( (i / 4) % 40 ))
            curl -sS -o /dev/null -w '%{http_code} %{time_total}\n' --max-time 10 -H 'Content-Type: application/json' \
                -H "X-Forwarded-For: 198.51.100.$(( 100 + n ))" \
                -d "{\"username\":\"alice$n\",\"password\":\"correct horse battery\"}" "$base/auth/login" \
                >>"$TMP/valid-$label.txt" || true
        fi
        i=$((i + 1)); sleep 0.05
    done
    wait "$wrk_pid" || true
    local reqs statuses rss1
    reqs=$(awk '/requests in/ {print $1}' "$TMP/wrk-$label.txt")
    statuses=$(sed -n 's/^STATUS //p' "$TMP/wrk-$label.txt")
    sleep 1; rss1=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    local ok total p50 p99
    total=$(wc -l <"$TMP/valid-$label.txt"); ok=$(grep -c '^200 ' "$TMP/valid-$label.txt" || true)
    read -r p50 p99 < <(awk '{print $2 * 1000}' "$TMP/valid-$label.txt" | sort -n | awk '{v[NR]=$1} END {
        i50 = int(NR * 0.5); if (i50 < 1) i50 = 1; i99 = int(NR * 0.99 + 0.999); if (i99 > NR) i99 = NR;
        printf "%.0f %.0f\n", v[i50], v[i99]}')
    echo "$label: flood of $reqs wrong-password logins in ${DURATION}s (answers: $statuses);" \
        "RSS $((rss0 / 1024)) MiB before, peak $((peak / 1024)) MiB, $((rss1 / 1024)) MiB 1 s after;" \
        "valid logins $ok/$total OK, latency p50 ${p50} ms, p99 ${p99} ms"
    kill "$pid"; wait "$pid" 2>/dev/null || true
}

log "$(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
phase limits-raised LIMIT_LOGINS_PER_MIN=100000000
phase limits-default
