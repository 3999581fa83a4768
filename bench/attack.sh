#!/usr/bin/env bash
# The account attacks of issue 10 (concurrent guesses, huge emails) against the release binary
# with its default limits, printing what each attack got and the server's RSS around the
# huge-email run. Talks to 127.0.0.1 only. Rerun: bash bench/attack.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${BENCH_PORT:-18081}

cargo build --release --quiet
BIN=target/release/easy-writer
DIR=$(mktemp -d)
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$DIR"' EXIT

EASY_WRITER_DATA_DIR="$DIR" EASY_WRITER_BIND="127.0.0.1:$PORT" EASY_WRITER_CONFIG=/dev/null \
  "$BIN" serve > "$DIR/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
  sleep 0.1
done
python3 bench/attack.py "$PORT" "$SERVER"
