#!/usr/bin/env bash
# Chunking benchmark: builds examples/chunk_bench.rs in release mode and prints
# the time per MB of a text import (decode, parse, bound, chunk, search text)
# and of chunking alone, for long single lines (Latin 1/5/20 MB, Chinese 1/5 MB), 1/5/50 MB of
# paragraphs and a Markdown file with a 200,000-character heading. The column
# "vs first" divides each case's import time per MB by that of the first
# (1 MB) case of its kind: values near 1 mean the time per MB is flat.
#
#   bash bench/chunk.sh            # best of 3 runs per case
#   RUNS=5 bash bench/chunk.sh
#   bash bench/chunk.sh chinese    # only the cases whose name contains "chinese"
#
# Times are the CPU time of the benchmark thread (the machine may be shared).
#
# Set CARGO_TARGET_DIR to share a target directory with other builds.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --example chunk_bench
cargo run --release --quiet --example chunk_bench -- "$@"
