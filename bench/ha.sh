#!/usr/bin/env bash
# Benchmark of Redis high availability (issue #11), in one run so that the
# figures compare as ratios:
#
# 1. poll throughput (GET /check_import_status/{task_id}, rotating over the
#    tasks of one user) with one redis-server against a Redis Cluster of
#    three masters and three replicas;
# 2. a Sentinel failover (master + 1 replica + 3 sentinels): kill -9 of the
#    master while two reportd instances are polled continuously, the time
#    until both follow the new master, the polls that failed, and whether a
#    task's status or progress ever went backwards;
# 3. the same for the Cluster: kill -9 of the master holding most task keys,
#    until both instances see all 16384 slots served again.
#
# Usage: bash bench/ha.sh   (env: DURATION=8 seconds per wrk run, CONNECTIONS=64,
#        THREADS=2, TASKS=30 imported tasks per user, POLL_THREADS=2 poller
#        threads per instance, POLL_GAP_MS=10 pause between one thread's polls,
#        WARMUP=2 s of polling before a kill, AFTER=2 s after both instances
#        recovered, FAILOVER_TIMEOUT=30 s, KEEP_TMP=1 to keep the logs)
# Honours CARGO_TARGET_DIR. Everything runs on 127.0.0.1; everything started
# here is stopped on exit.
set -euo pipefail

DURATION="${DURATION:-8}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-2}"
TASKS="${TASKS:-30}"
POLL_THREADS="${POLL_THREADS:-2}"
POLL_GAP_MS="${POLL_GAP_MS:-10}"
WARMUP="${WARMUP:-2}"
AFTER="${AFTER:-2}"
FAILOVER_TIMEOUT="${FAILOVER_TIMEOUT:-30}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log() { printf '[ha.sh] %s\n' "$*" >&2; }
die() { printf '[ha.sh] ERROR: %s\n' "$*" >&2; exit 1; }
now_ms() { date +%s%3N; }

# ---------------------------------------------------------------- tools
need_install=()
for pair in redis-server:redis-server redis-cli:redis-tools wrk:wrk curl:curl; do
    cmd="${pair%%:*}"; pkg="${pair##*:}"
    command -v "$cmd" >/dev/null 2>&1 || need_install+=("$pkg")
done
if ((${#need_install[@]})); then
    command -v apt-get >/dev/null 2>&1 || die "missing ${need_install[*]} and no apt-get to install them"
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    log "installing: ${need_install[*]}"
    $SUDO apt-get update -qq
    mapfile -t packages < <(printf '%s\n' "${need_install[@]}" | sort -u)
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${packages[@]}"
fi
for cmd in curl python3 cargo redis-server redis-cli wrk; do
    command -v "$cmd" >/dev/null 2>&1 || die "required command not found: $cmd"
done

# ---------------------------------------------------------------- temp dir and cleanup
TMP="$(mktemp -d "${TMPDIR:-/tmp}/reportd-ha-bench.XXXXXX")"
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

# free_ports N -> N distinct free ports (all held until all are chosen)
free_ports() {
    python3 -c 'import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}

# cluster_ports N -> N ports whose cluster bus port (port + 10000) is free too.
# They are drawn below the kernel's ephemeral range (32768 and up here), so
# that no outgoing connection takes one between this check and the bind.
cluster_ports() {
    python3 -c 'import random, socket, sys
chosen, held = [], []
while len(chosen) < int(sys.argv[1]):
    p = random.randrange(10000, 22000)
    if any(p in (c, c + 10000, c - 10000) for c in chosen):
        continue
    socks = []
    try:
        for q in (p, p + 10000):
            s = socket.socket(); socks.append(s); s.bind(("127.0.0.1", q))
    except OSError:
        for s in socks:
            s.close()
        continue
    chosen.append(p); held += socks
print(" ".join(map(str, chosen)))' "$1"
}

stop_pid() {
    local pid=$1
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# ---------------------------------------------------------------- build
log "building release binary (cargo build --release; may wait for other builds)"
(cd "$ROOT" && cargo build --release --quiet --bin reportd) || die "cargo build --release failed"
TARGET_DIR=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])') \
    || die "cargo metadata failed"
[[ -x "$TARGET_DIR/release/reportd" ]] || die "$TARGET_DIR/release/reportd not found after build"
# A private copy, so that a concurrent rebuild cannot swap the binary mid-run.
BIN="$TMP/reportd"
cp "$TARGET_DIR/release/reportd" "$BIN"

# ---------------------------------------------------------------- the Python helper
# The poller must record every answer of two instances with its time while
# the script waits for the failover, and the analysis needs the order of
# answers per task: that is easier to get right in (standard-library) Python
# than in a loop of curls, and one process keeps its connections open.
HELPER="$TMP/ha_helper.py"
cat >"$HELPER" <<'PY'
"""ha.sh's helper (standard library only): waits for imports, polls tasks on
several reportd instances, watches a failover, and summarises the polls."""

import argparse
import collections
import http.client
import json
import os
import subprocess
import sys
import threading
import time

# A task's status only moves up this order (both final states share the top).
RANK = {"pending": 0, "processing": 1, "completed": 2, "failed": 2}


def now_ms():
    return time.time() * 1000.0


def get(port, path, token=None, timeout=5.0):
    """One GET on a fresh connection: (HTTP code, parsed JSON or None); code 0 without an answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        resp = conn.getresponse()
        body = resp.read()
        try:
            return resp.status, json.loads(body)
        except ValueError:
            return resp.status, None
    except (OSError, http.client.HTTPException):
        return 0, None
    finally:
        conn.close()


def read_ids(path):
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def targets(specs):
    return [(name, int(port)) for name, port in (s.split("=", 1) for s in specs)]


def wait_tasks(a):
    ids = read_ids(a.ids)
    t0 = time.monotonic()
    pending = set(ids)
    while pending:
        for task in sorted(pending):
            code, doc = get(a.port, f"/check_import_status/{task}", a.token)
            status = doc.get("status") if code == 200 and isinstance(doc, dict) else None
            if status == "completed":
                pending.discard(task)
            elif status == "failed":
                sys.exit(f"import {task} failed: {doc}")
        if pending:
            if time.monotonic() - t0 > a.timeout:
                sys.exit(f"{len(pending)} of {len(ids)} imports not completed within {a.timeout} s")
            time.sleep(0.1)
    print(round((time.monotonic() - t0) * 1000))


def poll(a):
    """Polls every task on every target until the stop file appears; one
    row per answer: start, end (epoch ms), instance, task index, HTTP code
    (0: no answer), status rank, progress, error."""
    ids = read_ids(a.ids)
    headers = {"Authorization": f"Bearer {a.token}"}
    stop = threading.Event()
    results = []

    def worker(name, port, offset):
        rows = []
        results.append(rows)
        conn, i = None, offset
        while not stop.is_set():
            task = i % len(ids)
            i += 1
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=a.timeout)
            t0, code, rank, progress, err = now_ms(), 0, None, None, None
            try:
                conn.request("GET", f"/check_import_status/{ids[task]}", headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                code = resp.status
                if code == 200:
                    doc = json.loads(body)
                    rank, progress = RANK.get(doc.get("status"), -1), doc.get("progress")
                if resp.will_close:
                    conn.close()
                    conn = None
            # ValueError and AttributeError: a 200 whose body is not a task
            # object; it is recorded as a failed poll, not a crash.
            except (OSError, http.client.HTTPException, ValueError, AttributeError) as e:
                err = type(e).__name__
                conn.close()
                conn = None
            rows.append((t0, now_ms(), name, task, code, rank, progress, err))
            stop.wait(a.gap_ms / 1000.0)
        if conn is not None:
            conn.close()

    threads = []
    for name, port in targets(a.target):
        for k in range(a.threads):
            t = threading.Thread(target=worker, args=(name, port, k * len(ids) // a.threads), daemon=True)
            t.start()
            threads.append(t)
    while not os.path.exists(a.stop):
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(a.timeout + 1)
    with open(a.out, "w") as f:
        for rows in results:
            f.writelines(json.dumps(row) + "\n" for row in rows)


def redis_cli(port, password, *args):
    env = dict(os.environ, REDISCLI_AUTH=password)
    try:
        out = subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
            check=False,
            env=env,
            capture_output=True,
            text=True,
            timeout=1,
        )
        return out.stdout
    except subprocess.TimeoutExpired:
        return ""


def redis_promoted(a):
    """Redis's side of the failover is done: the sentinels name the replica
    (Sentinel), or the replica is a master of a cluster that is ok (Cluster)."""
    if a.mode == "sentinel":
        out = redis_cli(a.sentinel, os.environ["HA_SENTINEL_PASS"], "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster")
        return ":".join(out.split()) == a.new_master
    port = a.new_master.rsplit(":", 1)[1]
    role = redis_cli(port, os.environ["HA_REDIS_PASS"], "ROLE").split()
    info = redis_cli(port, os.environ["HA_REDIS_PASS"], "CLUSTER", "INFO")
    return role[:1] == ["master"] and "cluster_state:ok" in info


def instance_ready(a, redis):
    topo = redis.get("topology") or {}
    if not redis.get("connected") or topo.get("failovers_seen", 0) < 1:
        return False
    if a.mode == "sentinel":
        return topo.get("master") == a.new_master
    return topo.get("slots_covered") == 16384


def watch(a):
    """From the kill on: when Redis promoted the replica, when each instance
    first said Redis is not connected, and when each instance serves from
    the new master again (ms after the kill, None if not within the timeout)."""
    names = targets(a.target)
    ready = {name: None for name, _ in names}
    down = {name: None for name, _ in names}
    last = {}
    promoted = None
    deadline = a.t_kill + a.timeout * 1000
    while now_ms() < deadline:
        if promoted is None and redis_promoted(a):
            promoted = round(now_ms() - a.t_kill)
        for name, port in names:
            if ready[name] is not None:
                continue
            _code, doc = get(port, "/readyz", timeout=1.0)
            if not isinstance(doc, dict):
                continue
            last[name] = doc
            redis = doc.get("redis") or {}
            if down[name] is None and not redis.get("connected"):
                down[name] = round(now_ms() - a.t_kill)
            if instance_ready(a, redis):
                ready[name] = round(now_ms() - a.t_kill)
        if promoted is not None and all(v is not None for v in ready.values()):
            break
        time.sleep(0.05)
    with open(a.out, "w") as f:
        json.dump({"promoted": promoted, "ready": ready, "down": down, "last": last}, f)


def pct(sorted_values, p):
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p / 100))]


def backwards(rows):
    """Answers (200) whose (status rank, progress) is below that of an answer
    for the same task that had arrived before this poll was sent."""
    count = 0
    by_task = collections.defaultdict(list)
    for r in rows:
        by_task[r[3]].append(r)
    for polls in by_task.values():
        by_end = sorted(polls, key=lambda r: r[1])
        best, j = (-1, -1), 0
        for r in sorted(polls, key=lambda r: r[0]):
            while j < len(by_end) and by_end[j][1] < r[0]:
                best = max(best, (by_end[j][5], by_end[j][6] or 0))
                j += 1
            if (r[5], r[6] or 0) < best:
                count += 1
    return count


def analyse(a):
    with open(a.records) as f:
        rows = [json.loads(line) for line in f]
    with open(a.watch) as f:
        w = json.load(f)
    t_kill = a.t_kill
    readies = list(w["ready"].values())
    recovered = all(v is not None for v in readies)
    t_end = t_kill + (max(readies) if recovered else a.timeout * 1000)

    def ok(r):
        return r[4] == 200 and r[7] is None and r[5] is not None and r[5] >= 0

    good = [r for r in rows if ok(r)]
    for name in sorted({r[2] for r in rows}):
        mine = [r for r in rows if r[2] == name]
        bad = collections.Counter(r[7] or str(r[4]) for r in mine if not ok(r))
        before = sorted(r[1] - r[0] for r in mine if r[1] < t_kill)
        gap = [r for r in mine if t_kill <= r[0] < t_end]
        lat = sorted(r[1] - r[0] for r in gap)
        span = (max(r[1] for r in mine) - min(r[0] for r in mine)) / 1000
        bad_text = ", ".join(f"{k}: {v}" for k, v in sorted(bad.items())) or "none"
        print(
            f"  {name}: {len(mine)} polls in {span:.1f} s, not 200: {sum(bad.values())} ({bad_text}); "
            f"before the kill p50 {pct(before, 50):.1f} ms; in the gap {sum(1 for r in gap if ok(r))} of "
            f"{len(gap)} answered 200, p50 {pct(lat, 50):.1f} ms, p99 {pct(lat, 99):.1f} ms, "
            f"max {lat[-1] if lat else float('nan'):.1f} ms"
        )
    per = ", ".join(f"{n} {backwards([r for r in good if r[2] == n])}" for n in sorted({r[2] for r in good}))
    print(
        f"  status/progress backwards: {per}, across the instances {backwards(good)} "
        f"(of {len(good)} answers 200 for {len({r[3] for r in good})} tasks)"
    )


def metrics(a):
    """The replica-read and fallback counters of one instance, summed and by label."""
    code, text = 0, ""
    conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        code, text = resp.status, resp.read().decode()
    except (OSError, http.client.HTTPException):
        pass
    finally:
        conn.close()
    if code != 200:
        print(f"/metrics answered {code}")
        return
    parts = []
    for name in ("reportd_state_replica_reads_total", "reportd_state_fallback_total"):
        total, by = 0.0, []
        for line in text.splitlines():
            if line.startswith((name + "{", name + " ")):
                labels, value = line.rsplit(" ", 1)
                v = float(value)
                total += v
                inner = labels[len(name) :].strip("{}")
                tags = "/".join(kv.split("=", 1)[1].strip('"') for kv in inner.split(",") if "=" in kv)
                by.append(f"{tags} {v:g}")
        short = name.removeprefix("reportd_state_")
        parts.append(f"{short} {total:g}" + (f" ({', '.join(by)})" if by else ""))
    print("; ".join(parts))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("wait-tasks")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--token", required=True)
    s.add_argument("--ids", required=True)
    s.add_argument("--timeout", type=float, default=60)
    s = sub.add_parser("poll")
    s.add_argument("--token", required=True)
    s.add_argument("--ids", required=True)
    s.add_argument("--stop", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--gap-ms", type=float, default=10)
    s.add_argument("--timeout", type=float, default=5)
    s.add_argument("target", nargs="+", help="NAME=PORT")
    s = sub.add_parser("watch")
    s.add_argument("--mode", choices=["sentinel", "cluster"], required=True)
    s.add_argument("--t-kill", type=float, required=True)
    s.add_argument("--timeout", type=float, required=True)
    s.add_argument("--new-master", required=True, help="host:port of the replica that must take over")
    s.add_argument("--sentinel", type=int, default=0)
    s.add_argument("--out", required=True)
    s.add_argument("target", nargs="+", help="NAME=PORT")
    s = sub.add_parser("analyse")
    s.add_argument("--records", required=True)
    s.add_argument("--watch", required=True)
    s.add_argument("--t-kill", type=float, required=True)
    s.add_argument("--timeout", type=float, required=True)
    s = sub.add_parser("metrics")
    s.add_argument("--port", type=int, required=True)
    a = p.parse_args()
    {"wait-tasks": wait_tasks, "poll": poll, "watch": watch, "analyse": analyse, "metrics": metrics}[a.cmd](a)


main()
PY
helper() { python3 "$HELPER" "$@"; }

# ---------------------------------------------------------------- redis
REDIS_PASS="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
SENTINEL_PASS="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"

# rcli PORT ARGS... (a data node; the password through the environment, not argv)
rcli() { local port=$1; shift; REDISCLI_AUTH="$REDIS_PASS" redis-cli -h 127.0.0.1 -p "$port" "$@"; }
scli() { local port=$1; shift; REDISCLI_AUTH="$SENTINEL_PASS" redis-cli -h 127.0.0.1 -p "$port" "$@"; }

# start_redis NAME PORT [redis-server options...] -> sets REDIS_PID
start_redis() {
    local name=$1 port=$2; shift 2
    mkdir -p "$TMP/$name"
    redis-server --bind 127.0.0.1 --port "$port" --requirepass "$REDIS_PASS" --masterauth "$REDIS_PASS" \
        --save "" --appendonly no --dir "$TMP/$name" --daemonize no --logfile "$TMP/$name.log" "$@" \
        >/dev/null 2>&1 &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    for _ in $(seq 1 100); do
        [[ "$(rcli "$port" ping 2>/dev/null)" == PONG ]] && return 0
        kill -0 "$REDIS_PID" 2>/dev/null || { tail -n 20 "$TMP/$name.log" >&2 || true; die "redis-server $name exited at start"; }
        sleep 0.1
    done
    die "redis-server $name did not answer PING on port $port within 10 s"
}

# info_field PORT SECTION FIELD -> the field's value in INFO SECTION
info_field() {
    rcli "$1" info "$2" 2>/dev/null | tr -d '\r' | awk -F: -v f="$3" '$1 == f {print $2}'
}

# ---------------------------------------------------------------- reportd
JWT_SECRET="$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
REPORTD_PID=""
# Every Redis feature on, the health probe every 200 ms, and limits raised
# so that the runs measure Redis, not the 429 path.
REPORTD_ENV=(REDIS_ENABLED=1 REDIS_TASK_STATUS_ENABLED=1 REDIS_CHAT_SESSION_ENABLED=1 REDIS_CACHE_ENABLED=1
    REDIS_RATE_LIMIT_ENABLED=1 REDIS_HEALTH_INTERVAL_MS=200 REDIS_PASSWORD="$REDIS_PASS"
    LIMIT_POLLS_PER_SEC=1000000000 LIMIT_POLLS_BURST=1000000000 LIMIT_REQUESTS_PER_SEC=1000000
    LIMIT_REQUESTS_BURST=1000000 LIMIT_IMPORTS_PER_USER=1000 LIMIT_LOGINS_PER_MIN=100000)

# start_reportd NAME PORT DB_FILE [VAR=VALUE...]
start_reportd() {
    local name=$1 port=$2 db=$3; shift 3
    mkdir -p "$TMP/$name"
    # A clean environment (no REDIS_* or .env leaking in from the caller).
    (cd "$TMP/$name" && exec env -i PATH="$PATH" HOME="${HOME:-/tmp}" \
        DATABASE_URL="sqlite://$db" DATA_DIR="$TMP/$name" \
        JWT_SECRET="$JWT_SECRET" HOST=127.0.0.1 PORT="$port" RUST_LOG=warn \
        "${REPORTD_ENV[@]}" "$@" "$BIN") >"$TMP/$name.log" 2>&1 &
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

# wait_connected NAME PORT: /readyz says Redis is connected
wait_connected() {
    local body=""
    for _ in $(seq 1 100); do
        body=$(curl -sS --max-time 1 "http://127.0.0.1:$2/readyz" 2>/dev/null || true)
        grep -q '"connected":true' <<<"$body" && return 0
        sleep 0.1
    done
    die "reportd ($1) does not see Redis connected within 10 s: $body"
}

json_field() { # json_field FIELD < json
    python3 -c 'import json,sys
try:
    v = json.load(sys.stdin)[sys.argv[1]]
except Exception:
    sys.exit(1)
print(v if not isinstance(v, bool) else str(v).lower())' "$1"
}

# setup_user NAME PORT -> sets TOKEN and IDS (a file of TASKS completed task ids)
setup_user() {
    local name=$1 port=$2 base="http://127.0.0.1:$2" code i task ms
    local cred="{\"username\":\"bench_$name\",\"password\":\"bench-password-123\"}"
    code=$(curl -sS -o "$TMP/$name.register.json" -w '%{http_code}' --max-time 10 \
        -H 'Content-Type: application/json' -d "$cred" "$base/auth/register") || die "register request failed ($name)"
    [[ $code == 201 ]] || die "POST /auth/register ($name) answered $code: $(cat "$TMP/$name.register.json")"
    code=$(curl -sS -o "$TMP/$name.login.json" -w '%{http_code}' --max-time 10 \
        -H 'Content-Type: application/json' -d "$cred" "$base/auth/login") || die "login request failed ($name)"
    [[ $code == 200 ]] || die "POST /auth/login ($name) answered $code: $(cat "$TMP/$name.login.json")"
    TOKEN=$(json_field access_token <"$TMP/$name.login.json") || die "no access_token in login answer ($name)"
    IDS="$TMP/$name.ids"
    : >"$IDS"
    mkdir -p "$TMP/$name-docs"
    for i in $(seq 1 "$TASKS"); do
        printf '第%s章 背景\n本报告用于高可用基准测试，文档编号 %s。\nHigh-availability benchmark document %s of %s.\n' \
            "$i" "$i" "$i" "$TASKS" >"$TMP/$name-docs/doc-$i.txt"
        code=$(curl -sS -o "$TMP/$name.upload.json" -w '%{http_code}' --max-time 30 \
            -H "Authorization: Bearer $TOKEN" -F "file=@$TMP/$name-docs/doc-$i.txt;type=text/plain" "$base/imports") \
            || die "upload request failed ($name)"
        [[ $code == 202 ]] || die "POST /imports ($name) answered $code: $(cat "$TMP/$name.upload.json")"
        task=$(json_field task_id <"$TMP/$name.upload.json") || die "no task_id in upload answer ($name)"
        echo "$task" >>"$IDS"
    done
    ms=$(helper wait-tasks --port "$port" --token "$TOKEN" --ids "$IDS" --timeout 60) || die "imports did not complete ($name)"
    log "$name: $TASKS imports completed ${ms} ms after the last upload"
}

# ---------------------------------------------------------------- wrk
# write_lua FILE: a wrk script that rotates over the user's tasks, one per
# request, so that their keys (spread over the cluster's slots) are all read;
# each wrk thread starts at another task.
write_lua() {
    {
        echo "-- Written by bench/ha.sh: rotates over the bench user's tasks."
        echo "local token = \"$TOKEN\""
        printf 'local ids = {'
        sed 's/.*/"&",/' "$IDS" | tr -d '\n'
        echo '}'
        cat <<'LUA'
local threads = 0
function setup(thread)
    thread:set("offset", threads * 7)
    threads = threads + 1
end
local n = nil
function request()
    n = (n or offset or 0) + 1
    return wrk.format("GET", "/check_import_status/" .. ids[(n % #ids) + 1], { ["Authorization"] = "Bearer " .. token })
end
LUA
    } >"$1"
}

# run_wrk LABEL PORT SECONDS -> sets W_RPS W_P50 W_P99 W_NON2XX W_ERRORS; prints raw output to stderr
run_wrk() {
    local label=$1 port=$2 secs=$3 out="$TMP/wrk-$1.txt" lua="$TMP/wrk-$1.lua"
    write_lua "$lua"
    log "wrk $label: -t$THREADS -c$CONNECTIONS -d${secs}s over $TASKS tasks"
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"${secs}s" --timeout 5s --latency -s "$lua" \
        "http://127.0.0.1:$port" >"$out" 2>&1 || { cat "$out" >&2; die "wrk failed ($label)"; }
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

# ---------------------------------------------------------------- failover
# failover LABEL MODE NEW_MASTER KILL_PID SENTINEL_PORT PORT_A PORT_B
# Polls every task on both instances, kill -9s KILL_PID after WARMUP s,
# waits until both instances follow NEW_MASTER, polls AFTER s more, then
# sets F_LINES (the summary lines), F_OK (1 when both recovered in time).
failover() {
    local label=$1 mode=$2 new_master=$3 kill_pid=$4 sentinel=$5 port_a=$6 port_b=$7
    local stop="$TMP/$label.stop" records="$TMP/$label.polls.jsonl" watch="$TMP/$label.watch.json"
    local poller t_kill promoted ready_a ready_b down_a down_b
    rm -f "$stop"
    helper poll --token "$TOKEN" --ids "$IDS" --stop "$stop" --out "$records" --threads "$POLL_THREADS" \
        --gap-ms "$POLL_GAP_MS" A="$port_a" B="$port_b" 2>"$TMP/$label.poller.log" &
    poller=$!
    PIDS+=("$poller")
    sleep "$WARMUP"
    t_kill=$(now_ms)
    log "$label: kill -9 the master (pid $kill_pid)"
    # (stderr of the group hides bash's "Killed" job notice)
    { kill -9 "$kill_pid"; wait "$kill_pid" || true; } 2>/dev/null
    HA_REDIS_PASS="$REDIS_PASS" HA_SENTINEL_PASS="$SENTINEL_PASS" helper watch --mode "$mode" --t-kill "$t_kill" \
        --timeout "$FAILOVER_TIMEOUT" --new-master "$new_master" --sentinel "$sentinel" --out "$watch" \
        A="$port_a" B="$port_b" || die "the failover watcher failed ($label)"
    sleep "$AFTER"
    touch "$stop"
    wait "$poller" || die "the poller failed ($label): $(tail -n 5 "$TMP/$label.poller.log")"
    read -r promoted ready_a ready_b down_a down_b < <(python3 -c 'import json,sys
w = json.load(open(sys.argv[1]))
v = [w["promoted"], w["ready"]["A"], w["ready"]["B"], w["down"]["A"], w["down"]["B"]]
print(" ".join("never" if x is None else str(x) for x in v))' "$watch")
    F_OK=1
    [[ $ready_a == never || $ready_b == never ]] && F_OK=0
    local gap
    gap=$(awk -v a="$ready_a" -v b="$ready_b" 'BEGIN { if (a == "never" || b == "never") print "NOT reached"; else print (a > b ? a : b) " ms" }')
    log "$label: promoted after $promoted ms; A ready after $ready_a ms, B after $ready_b ms"
    F_LINES="  gap (kill -9 until both instances serve from $new_master): $gap;"
    F_LINES+=" Redis promoted it after $promoted ms; A ready after $ready_a ms, B after $ready_b ms;"
    F_LINES+=" /readyz said \"not connected\" first after: A $down_a ms, B $down_b ms"
    F_LINES+=$'\n'"$(helper analyse --records "$records" --watch "$watch" --t-kill "$t_kill" --timeout "$FAILOVER_TIMEOUT")" \
        || die "analysis failed ($label)"
    F_LINES+=$'\n'"  metrics A: $(helper metrics --port "$port_a")"
    F_LINES+=$'\n'"  metrics B: $(helper metrics --port "$port_b")"
    if [[ $F_OK != 1 ]]; then
        log "$label: last /readyz answers: $(python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))["last"]))' "$watch")"
    fi
}

strip_ansi() { sed -E 's/\x1b\[[0-9;]*m//g' "$1"; }
warn_count() { strip_ansi "$TMP/$1.log" | grep -ciE 'warn|error' || true; }
# warn_top NAME -> the three commonest warn/error messages of an instance's log, with their counts
warn_top() {
    strip_ansi "$TMP/$1.log" | grep -iE 'warn|error' | sed -E 's/^[0-9TZ:.-]+ +//' | cut -c1-120 \
        | sort | uniq -c | sort -rn | head -n 3 | sed -E "s/^ *([0-9]+) /    $1: \1x /" || true
}

# ================================================================ 1a. single redis-server
read -r SINGLE_PORT PORT_SINGLE_APP < <(free_ports 2)
log "single: redis-server on 127.0.0.1:$SINGLE_PORT"
start_redis single-redis "$SINGLE_PORT"
SINGLE_REDIS_PID=$REDIS_PID
start_reportd single "$PORT_SINGLE_APP" "$TMP/single.sqlite" REDIS_HOST=127.0.0.1 REDIS_PORT="$SINGLE_PORT"
SINGLE_APP_PID=$REPORTD_PID
wait_connected single "$PORT_SINGLE_APP"
setup_user single "$PORT_SINGLE_APP"
run_wrk single "$PORT_SINGLE_APP" "$DURATION"
S_RPS=$W_RPS S_P50=$W_P50 S_P99=$W_P99 S_NON2XX=$W_NON2XX S_ERR=$W_ERRORS
S_WARN=$(warn_count single)
stop_pid "$SINGLE_APP_PID"
stop_pid "$SINGLE_REDIS_PID"

# ================================================================ 1b. cluster: 3 masters + 3 replicas
read -r -a CPORTS < <(cluster_ports 6)
log "cluster: nodes on 127.0.0.1 ports ${CPORTS[*]} (bus ports +10000)"
declare -A CPID=()
for p in "${CPORTS[@]}"; do
    start_redis "node-$p" "$p" --cluster-enabled yes --cluster-config-file "$TMP/node-$p/nodes-$p.conf" \
        --cluster-node-timeout 1000 --cluster-allow-reads-when-down yes
    CPID[$p]=$REDIS_PID
done
create_args=()
for p in "${CPORTS[@]}"; do create_args+=("127.0.0.1:$p"); done
redis-cli -a "$REDIS_PASS" --no-auth-warning --cluster create "${create_args[@]}" --cluster-replicas 1 --cluster-yes \
    >"$TMP/cluster-create.log" 2>&1 || { cat "$TMP/cluster-create.log" >&2; die "redis-cli --cluster create failed"; }
cluster_ready() {
    local p replicas=0
    for p in "${CPORTS[@]}"; do
        rcli "$p" cluster info 2>/dev/null | tr -d '\r' | grep -qx 'cluster_state:ok' || return 1
        if [[ $(info_field "$p" replication role) == slave ]]; then
            [[ $(info_field "$p" replication master_link_status) == up ]] || return 1
            replicas=$((replicas + 1))
        fi
    done
    ((replicas == 3))
}
T0=$(now_ms)
until cluster_ready; do
    (($(now_ms) - T0 < 30000)) || die "the cluster is not ok with 3 linked replicas within 30 s"
    sleep 0.2
done
log "cluster: state ok, 3 replicas linked ($(($(now_ms) - T0)) ms after create)"
CLUSTER_NODES=$(printf '127.0.0.1:%s,' "${CPORTS[@]}"); CLUSTER_NODES=${CLUSTER_NODES%,}
CLUSTER_DB="$TMP/cluster.sqlite"
read -r PORT_CA PORT_CB < <(free_ports 2)
start_reportd cluster-a "$PORT_CA" "$CLUSTER_DB" REDIS_CLUSTER_NODES="$CLUSTER_NODES"
CA_PID=$REPORTD_PID
wait_connected cluster-a "$PORT_CA"
setup_user cluster "$PORT_CA"
CLUSTER_TOKEN=$TOKEN CLUSTER_IDS=$IDS
# Where the task keys live: SCAN on a cluster node sees only its own keys.
KEYS_PER_MASTER=() KILL_PORT="" KILL_KEYS=-1
for p in "${CPORTS[@]}"; do
    [[ $(info_field "$p" replication role) == master ]] || continue
    n=$(rcli "$p" --scan --pattern '*:task:import:*' 2>/dev/null | wc -l)
    KEYS_PER_MASTER+=("127.0.0.1:$p=$n")
    if ((n > KILL_KEYS)); then KILL_KEYS=$n KILL_PORT=$p; fi
done
log "cluster: task keys per master: ${KEYS_PER_MASTER[*]}"
run_wrk cluster "$PORT_CA" "$DURATION"
C_RPS=$W_RPS C_P50=$W_P50 C_P99=$W_P99 C_NON2XX=$W_NON2XX C_ERR=$W_ERRORS

# ================================================================ 3. cluster failover
# The replica of the master to kill is the node whose INFO names it as master.
CLUSTER_NEW=""
for p in "${CPORTS[@]}"; do
    if [[ $(info_field "$p" replication role) == slave && $(info_field "$p" replication master_port) == "$KILL_PORT" ]]; then
        CLUSTER_NEW="127.0.0.1:$p"
    fi
done
[[ -n $CLUSTER_NEW ]] || die "no replica of 127.0.0.1:$KILL_PORT found"
start_reportd cluster-b "$PORT_CB" "$CLUSTER_DB" REDIS_CLUSTER_NODES="$CLUSTER_NODES"
wait_connected cluster-b "$PORT_CB"
log "cluster failover: killing master 127.0.0.1:$KILL_PORT ($KILL_KEYS of $TASKS task keys); its replica is $CLUSTER_NEW"
TOKEN=$CLUSTER_TOKEN IDS=$CLUSTER_IDS
failover cluster-failover cluster "$CLUSTER_NEW" "${CPID[$KILL_PORT]}" 0 "$PORT_CA" "$PORT_CB"
CF_LINES=$F_LINES CF_OK=$F_OK
CF_WARN="A $(warn_count cluster-a), B $(warn_count cluster-b)"
CF_WARN_TOP="$(warn_top cluster-a; warn_top cluster-b)"
# The instances first, so that their logs do not fill with the nodes' shutdown.
stop_pid "$CA_PID"
stop_pid "$REPORTD_PID"
for p in "${CPORTS[@]}"; do stop_pid "${CPID[$p]}"; done

# ================================================================ 2. sentinel failover
read -r M_PORT R_PORT S1 S2 S3 PORT_SA PORT_SB < <(free_ports 7)
log "sentinel: master 127.0.0.1:$M_PORT, replica 127.0.0.1:$R_PORT, sentinels $S1 $S2 $S3"
start_redis sentinel-master "$M_PORT"
SM_PID=$REDIS_PID
start_redis sentinel-replica "$R_PORT" --replicaof 127.0.0.1 "$M_PORT"
T0=$(now_ms)
until [[ $(info_field "$R_PORT" replication master_link_status) == up ]]; do
    (($(now_ms) - T0 < 10000)) || die "the replica did not link to the master within 10 s"
    sleep 0.1
done
for s in "$S1" "$S2" "$S3"; do
    mkdir -p "$TMP/sentinel-$s"
    # Sentinel rewrites its configuration file (what it learns), so the file is its own and writable.
    cat >"$TMP/sentinel-$s/sentinel.conf" <<EOF
bind 127.0.0.1
port $s
daemonize no
dir $TMP/sentinel-$s
logfile $TMP/sentinel-$s.log
requirepass $SENTINEL_PASS
sentinel monitor mymaster 127.0.0.1 $M_PORT 2
sentinel auth-pass mymaster $REDIS_PASS
sentinel down-after-milliseconds mymaster 1000
sentinel failover-timeout mymaster 10000
sentinel parallel-syncs mymaster 1
EOF
    redis-server "$TMP/sentinel-$s/sentinel.conf" --sentinel >/dev/null 2>&1 &
    PIDS+=($!)
done
# The failover needs a quorum and a majority of sentinels that know each
# other and the replica: wait until every sentinel sees 1 replica and 3 sentinels.
sentinels_ready() {
    local s line
    for s in "$S1" "$S2" "$S3"; do
        line=$(scli "$s" info sentinel 2>/dev/null | tr -d '\r' | grep '^master0:' || true)
        [[ $line == *"status=ok"* && $line == *"slaves=1,"* && $line == *"sentinels=3"* ]] || return 1
    done
}
T0=$(now_ms)
until sentinels_ready; do
    (($(now_ms) - T0 < 30000)) || die "the sentinels do not see the replica and each other within 30 s"
    sleep 0.2
done
log "sentinel: 3 sentinels see the master, its replica and each other ($(($(now_ms) - T0)) ms)"
SENTINEL_ENV=(REDIS_SENTINELS="127.0.0.1:$S1,127.0.0.1:$S2,127.0.0.1:$S3" REDIS_SENTINEL_MASTER=mymaster
    REDIS_SENTINEL_PASSWORD="$SENTINEL_PASS")
SENTINEL_DB="$TMP/sentinel.sqlite"
start_reportd sentinel-a "$PORT_SA" "$SENTINEL_DB" "${SENTINEL_ENV[@]}"
wait_connected sentinel-a "$PORT_SA"
setup_user sentinel "$PORT_SA"
# Started after A answered /healthz: A ran the migrations of the shared SQLite file.
start_reportd sentinel-b "$PORT_SB" "$SENTINEL_DB" "${SENTINEL_ENV[@]}"
wait_connected sentinel-b "$PORT_SB"
failover sentinel-failover sentinel "127.0.0.1:$R_PORT" "$SM_PID" "$S1" "$PORT_SA" "$PORT_SB"
SF_LINES=$F_LINES SF_OK=$F_OK
SF_WARN="A $(warn_count sentinel-a), B $(warn_count sentinel-b)"
SF_WARN_TOP="$(warn_top sentinel-a; warn_top sentinel-b)"

# ---------------------------------------------------------------- summary
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "n/a" }'; }
{
    echo
    echo "===== reportd Redis HA benchmark ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores," \
        "wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s over $TASKS tasks) ====="
    echo "1. poll throughput, one redis-server vs a cluster of 3 masters + 3 replicas"
    printf '  single:  %10.1f req/s  p50 %8.3f ms  p99 %8.3f ms  non-2xx %s\n' "$S_RPS" "$S_P50" "$S_P99" "$S_NON2XX"
    printf '  cluster: %10.1f req/s  p50 %8.3f ms  p99 %8.3f ms  non-2xx %s\n' "$C_RPS" "$C_P50" "$C_P99" "$C_NON2XX"
    echo "  ratio cluster/single: req/s $(ratio "$C_RPS" "$S_RPS"), p50 $(ratio "$C_P50" "$S_P50"), p99 $(ratio "$C_P99" "$S_P99")"
    echo "  task keys per cluster master: ${KEYS_PER_MASTER[*]}"
    for l in "single:$S_ERR" "cluster:$C_ERR"; do
        [[ -n ${l#*:} ]] && echo "  wrk ${l%%:*}: ${l#*:}"
    done
    echo "2. Sentinel failover (master + 1 replica + 3 sentinels, quorum 2, down-after 1000 ms;" \
        "$POLL_THREADS poller threads per instance, $TASKS tasks created on A)"
    echo "$SF_LINES"
    echo "3. Cluster failover (kill -9 master 127.0.0.1:$KILL_PORT, $KILL_KEYS of $TASKS task keys; node-timeout 1000 ms)"
    echo "$CF_LINES"
    echo "reportd log lines with warn/error: single $S_WARN; sentinel $SF_WARN; cluster $CF_WARN; the commonest:"
    echo "$SF_WARN_TOP"
    echo "$CF_WARN_TOP"
} | tee "$TMP/summary.txt"
[[ $SF_OK == 1 && $CF_OK == 1 ]] || die "a failover did not complete within ${FAILOVER_TIMEOUT} s (see above)"
