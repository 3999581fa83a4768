#!/usr/bin/env bash
# Benchmark of quick execution (issue 4): POST /api/v1/tools/spell_check/execute against a fake
# OpenAI-compatible provider that answers at once (the only configured provider), at 64
# connections and at 1, with money commits durable (synchronous=FULL). Checks the ledger after.
# Talks to 127.0.0.1 only. Rerun: bash bench/execute.sh [seconds per run, default 15]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-15}
PORT=${BENCH_PORT:-18080}
FAKE_PORT=${BENCH_FAKE_PORT:-18181}
BASE="http://127.0.0.1:$PORT"

command -v wrk >/dev/null || { echo "installing wrk (Debian package)"; apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }; }
cargo build --release --quiet
cargo build --release --quiet --example fake_openai
BIN=target/release/easy-writer
DIR=$(mktemp -d)
trap 'kill $SERVER $FAKE 2>/dev/null || true; rm -rf "$DIR"' EXIT

target/release/examples/fake_openai "127.0.0.1:$FAKE_PORT" & FAKE=$!
export EASY_WRITER_DATA_DIR="$DIR" EASY_WRITER_BIND="127.0.0.1:$PORT" EASY_WRITER_COOKIE_SECURE=false
export OPENAI_API_KEY=bench OPENAI_BASE_URL="http://127.0.0.1:$FAKE_PORT/v1" OPENAI_MAX_CONCURRENCY=64
$BIN serve 2> "$DIR/server.log" & SERVER=$!
for _ in $(seq 100); do curl -sf "$BASE/health" >/dev/null && break; sleep 0.05; done

$BIN user create --email bench@example.com --password "bench password" >/dev/null
$BIN user topup --email bench@example.com --raits 100000000 >/dev/null
export TOKEN=$(curl -sf -XPOST "$BASE/api/v1/auth/login" -H 'content-type: application/json' \
  -d '{"email":"bench@example.com","password":"bench password"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')

echo "== the fake provider alone, 1 connection, ${SECS}s"
wrk -t1 -c1 -d"${SECS}s" --latency -s bench/fake.lua "http://127.0.0.1:$FAKE_PORT" | grep -E 'Requests/sec|Non-2xx|50%|99%'
echo "== execute, 1 connection, ${SECS}s"
wrk -t1 -c1 -d"${SECS}s" --latency -s bench/execute.lua "$BASE" | grep -E 'Requests/sec|Non-2xx|Socket errors|50%|99%'
echo "== execute, 64 connections, ${SECS}s"
wrk -t2 -c64 -d"${SECS}s" --latency -s bench/execute.lua "$BASE" | grep -E 'Requests/sec|Non-2xx|Socket errors|50%|90%|99%'

echo "== ledger check (after a second for requests cut off by wrk's stop to settle)"
sleep 1
python3 - "$DIR/easy-writer.db" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
bad = c.execute("""select count(*) from users u where balance !=
    (select coalesce(sum(amount),0) from transactions t where t.user_id = u.id)""").fetchone()[0]
sessions = dict(c.execute("select status, count(*) from generation_sessions group by status").fetchall())
print(f"sessions by status: {sessions}; balances differing from their ledger: {bad}")
PY
