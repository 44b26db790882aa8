#!/usr/bin/env bash
# Search latency benchmark: builds the release example `search_bench`, which
# generates 10,000 mixed Chinese/English chunks (Chinese words drawn from
# jieba's dictionary by their frequency, English by Zipf's law), stores them
# through the library into a temporary SQLite database (FTS5 index kept by
# triggers) and prints p50/p99 latency of SearchIndex::search for Chinese and
# English queries (segmentation + SQL + snippets; one client, no HTTP).
#
# Usage: bash bench/search.sh
# Environment: CHUNKS (10000), ITERATIONS (300 timed runs per query),
#   LIMIT (10), DATABASE_URL (optional: a PostgreSQL database to bench
#   instead of the temporary SQLite file; it must be empty or already
#   migrated, and the generated rows stay in it).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHUNKS="${CHUNKS:-10000}"
ITERATIONS="${ITERATIONS:-300}"
LIMIT="${LIMIT:-10}"

die() { echo "[search.sh] ERROR: $*" >&2; exit 1; }
command -v cargo >/dev/null 2>&1 || die "cargo not found"
command -v python3 >/dev/null 2>&1 || die "python3 not found (used to read cargo metadata)"

cd "$ROOT"
echo "[search.sh] building the release example (this can take a while the first time)" >&2
cargo build --release --locked --example search_bench >&2
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

# jieba's dictionary, from the jieba-rs source cargo downloaded for the build.
JIEBA_DIR="$(cargo metadata --locked --format-version 1 | python3 -c '
import json, os, sys
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "jieba-rs":
        print(os.path.dirname(p["manifest_path"]))
        break
')"
ZH_DICT="$JIEBA_DIR/src/data/dict.txt"
[[ -f "$ZH_DICT" ]] || die "jieba's dict.txt not found (looked at $ZH_DICT)"

args=(--chunks "$CHUNKS" --iterations "$ITERATIONS" --limit "$LIMIT" --zh-dict "$ZH_DICT")
if [[ -n "${DATABASE_URL:-}" ]]; then
    args+=(--database-url "$DATABASE_URL")
fi
echo "[search.sh] $(nproc) CPUs, load average: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"$TARGET_DIR/release/examples/search_bench" "${args[@]}"
