#!/usr/bin/env bash
# Import benchmark: throughput (MB/s through parse + chunk + index) for a
# ~10 MB Chinese text, a ~5 MB docx and a ~5 MB PDF, and the time an
# instance's death takes to be noticed and its import taken over by another
# instance (see bench/import.py).
#
#   bash bench/import.sh
#   HEARTBEAT_SECONDS=3 bash bench/import.sh   # another heartbeat timeout
#
# Needs redis-server (installed with apt-get if missing) and python3.
# Set CARGO_TARGET_DIR to share a target directory with other builds.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null 2>&1; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
fi
cargo build --release --quiet
exec python3 bench/import.py "${CARGO_TARGET_DIR:-target}/release/reportd"
