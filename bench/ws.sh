#!/usr/bin/env bash
# Benchmark of WebSocket watchers (issue 5), two parts, talking to 127.0.0.1 only:
# 1. 10,000 idle sockets, each watching one of 100 standard jobs that a fake provider holds
#    running (it opens the stream and never answers): the server's RSS with and without them,
#    drops, and the gaps between heartbeats (EASY_WRITER_WS_HEARTBEAT_SECS=5 here).
# 2. 1,000 sockets watching one job whose provider streams 300 deltas 20 ms apart, each stamped
#    with its send time: the delay from the fake sending a delta to every watcher receiving it.
# Rerun: bash bench/ws.sh [idle connections, default 10000] [hold seconds, default 30]
set -euo pipefail
cd "$(dirname "$0")/.."
CONNECTIONS=${1:-10000}
HOLD=${2:-30}
PORT=${BENCH_PORT:-18080}
FAKE_PORT=${BENCH_FAKE_PORT:-18181}
BASE="http://127.0.0.1:$PORT"
ulimit -n "$(ulimit -Hn)"

cargo build --release --quiet
cargo build --release --quiet --example fake_openai --example ws_load
BIN=target/release/easy-writer
DIR=$(mktemp -d)
SERVER= FAKE=
cleanup() { kill $SERVER $FAKE 2>/dev/null || true; wait 2>/dev/null || true; }
trap 'cleanup; rm -rf "$DIR"' EXIT

start() { # $1: fake stream mode, $2: job slots
  cleanup
  rm -rf "$DIR"/*
  FAKE_STREAM=$1 target/release/examples/fake_openai "127.0.0.1:$FAKE_PORT" & FAKE=$!
  EASY_WRITER_DATA_DIR="$DIR" EASY_WRITER_BIND="127.0.0.1:$PORT" EASY_WRITER_COOKIE_SECURE=false \
  OPENAI_API_KEY=bench OPENAI_BASE_URL="http://127.0.0.1:$FAKE_PORT/v1" OPENAI_MAX_CONCURRENCY=200 \
  EASY_WRITER_JOB_CONCURRENCY=$2 EASY_WRITER_PROVIDER_TIMEOUT_SECS=3600 EASY_WRITER_WS_HEARTBEAT_SECS=5 \
  RUST_LOG=warn $BIN serve 2> "$DIR/server.log" & SERVER=$!
  for _ in $(seq 200); do curl -sf "$BASE/health" >/dev/null && break; sleep 0.05; done
  EASY_WRITER_DATA_DIR="$DIR" $BIN user create --email bench@example.com --password "bench password" >/dev/null
  EASY_WRITER_DATA_DIR="$DIR" $BIN user topup --email bench@example.com --raits 100000000 >/dev/null
  TOKEN=$(curl -sf -XPOST "$BASE/api/v1/auth/login" -H 'content-type: application/json' \
    -d '{"email":"bench@example.com","password":"bench password"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
}

jobs() { # $1: how many standard runs to start; prints their ids, comma-separated
  for _ in $(seq "$1"); do
    curl -sf -XPOST "$BASE/api/v1/tools/paraphrase/execute" -H "authorization: Bearer $TOKEN" \
      -H 'content-type: application/json' -d '{"input":{"text":"Текст для бенчмарка."},"mode":"standard"}' \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["session_id"])'
  done | paste -sd, -
}

echo "== $CONNECTIONS idle watchers over 100 held jobs, ${HOLD}s"
start hold 100
IDS=$(jobs 100)
sleep 1
target/release/examples/ws_load idle "127.0.0.1:$PORT" "$TOKEN" "$SERVER" "$CONNECTIONS" "$HOLD" 5 "$IDS"

echo "== 1000 watchers of one streaming job"
start stamped 8
ID=$(jobs 1)
target/release/examples/ws_load latency "127.0.0.1:$PORT" "$TOKEN" 1000 "http://127.0.0.1:$FAKE_PORT/release" "$ID"
