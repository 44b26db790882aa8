#!/usr/bin/env bash
# Upload memory (issue #7, item 3): builds reportd and examples/upload_bench.rs
# in release mode, starts one reportd with the default settings (SQLite in a
# temporary directory), sends 50 uploads of 50 MiB at once (valid text,
# generated as it is sent) and prints how many were accepted (202) and
# refused (503, MAX_UPLOADS_IN_FLIGHT), and the service's resident memory:
# before, at its peak while the uploads are received, at its peak while the
# accepted files are imported, and once idle afterwards.
#
#   bash bench/uploads.sh              # 50 x 50 MiB
#   UPLOADS=20 SIZE_MIB=40 bash bench/uploads.sh
#
# Set CARGO_TARGET_DIR to share a target directory with other builds. The
# uploads and their imports use about UPLOADS_IN_FLIGHT x SIZE_MIB of disk
# in a temporary directory (the spool and the staged parts in SQLite).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
UPLOADS="${UPLOADS:-50}"
SIZE_MIB="${SIZE_MIB:-50}"

cd "$ROOT"
echo "[uploads.sh] building reportd and upload_bench in release mode" >&2
cargo build --release --locked --bin reportd --example upload_bench >&2
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
echo "[uploads.sh] $(nproc) CPUs, load average: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"$TARGET_DIR/release/examples/upload_bench" "$TARGET_DIR/release/reportd" "$UPLOADS" "$SIZE_MIB"
