#!/usr/bin/env bash
# The assistants' figures (issue #6): the latency reportd adds to the first
# delta, Redis commands per streamed answer of 1,000 tokens, and the SSE
# streams one instance holds with the memory per stream. Builds reportd and
# the example `ai_bench` in release mode, starts a private redis-server for
# the Redis figure, raises the open-file limit for the streams figure, and
# prints each figure. The model is the test suite's fake (tests/api/fakes.rs).
#
# Usage: bash bench/ai.sh
# Environment: RUNS (200 latency samples), STREAMS (concurrent streams:
#   10000, or fewer when the open-file limit cannot be raised enough: each
#   stream is 2 sockets in reportd, the client's and the model's),
#   PHASES ("latency writes streams").
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUNS="${RUNS:-200}"
PHASES="${PHASES:-latency writes streams}"

die() { echo "[ai.sh] ERROR: $*" >&2; exit 1; }
command -v cargo >/dev/null 2>&1 || die "cargo not found"
if ! command -v redis-server >/dev/null 2>&1; then
    echo "[ai.sh] installing redis-server" >&2
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >&2
fi

cd "$ROOT"
echo "[ai.sh] building reportd and the example in release mode" >&2
cargo build --release --locked --bin reportd --example ai_bench >&2
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$TARGET_DIR/release/reportd"
BENCH="$TARGET_DIR/release/examples/ai_bench"

TMP="$(mktemp -d)"
REDIS_PID=""
cleanup() {
    [[ -n "$REDIS_PID" ]] && kill "$REDIS_PID" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

# 10,000 streams are 20,000 sockets in reportd (client + model) and as many
# in this process (the clients and the fake model's side).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
LIMIT="$(ulimit -n)"
FIT=$(( (LIMIT - 300) / 2 ))
STREAMS="${STREAMS:-$(( FIT < 10000 ? FIT : 10000 ))}"
echo "[ai.sh] open-file limit $LIMIT (streams: $STREAMS); $(nproc) CPUs, load average: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

for phase in $PHASES; do
    case "$phase" in
        latency) "$BENCH" "$BIN" latency "$RUNS" ;;
        writes)
            PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
            redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$TMP" \
                --daemonize no --loglevel warning >"$TMP/redis.log" 2>&1 &
            REDIS_PID=$!
            for _ in $(seq 100); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done
            "$BENCH" "$BIN" writes "redis://127.0.0.1:$PORT/0"
            kill "$REDIS_PID"; REDIS_PID=""
            ;;
        streams) "$BENCH" "$BIN" streams "$STREAMS" ;;
        *) die "unknown phase $phase" ;;
    esac
done
