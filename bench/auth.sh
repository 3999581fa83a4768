#!/usr/bin/env bash
# Benchmarks of the foundation (issue 2): GET /auth/me throughput and latency, register and login
# throughput, /auth/me during a login storm, binary size, idle RSS and time to first /health 200.
# Talks to 127.0.0.1 only. Rerun: bash bench/auth.sh [seconds per run, default 15]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-15}
PORT=${BENCH_PORT:-18080}
BASE="http://127.0.0.1:$PORT"

command -v wrk >/dev/null || { echo "installing wrk (Debian package)"; apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }; }
cargo build --release --quiet
BIN=target/release/easy-writer
DIR=$(mktemp -d)
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$DIR"' EXIT

echo "== binary"
echo "size: $(stat -c %s $BIN) bytes ($(( $(stat -c %s $BIN) / 1024 / 1024 )) MiB)"

echo "== start-up"
# The server runs with its defaults; request logs go to a file as they would in production.
export EASY_WRITER_DATA_DIR="$DIR" EASY_WRITER_BIND="127.0.0.1:$PORT" EASY_WRITER_COOKIE_SECURE=false
# The register run signs up thousands of users from one address.
export EASY_WRITER_REGISTER_MAX_PER_IP=1000000000
python3 bench/startup.py "$BIN" "$PORT" "$DIR/server.log" > "$DIR/startup.txt"
cat "$DIR/startup.txt"
SERVER=$(sed -n 's/^pid: //p' "$DIR/startup.txt")
sleep 2
echo "idle RSS after start: $(awk '/VmRSS/ {print $2, $3}' /proc/$SERVER/status)"

TOKEN=$(curl -sf -XPOST "$BASE/api/v1/auth/register" -H 'content-type: application/json' \
  -d '{"email":"bench@example.com","password":"bench password"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')

echo "== GET /api/v1/auth/me, 64 connections, ${SECS}s"
wrk -t2 -c64 -d"${SECS}s" --latency -H "Authorization: Bearer $TOKEN" "$BASE/api/v1/auth/me" | grep -E 'Requests/sec|Non-2xx|Socket errors|50%|90%|99%'

echo "== POST /api/v1/auth/register alone, 8 connections, ${SECS}s"
wrk -t2 -c8 -d"${SECS}s" --latency -s bench/register.lua "$BASE" | grep -E 'Requests/sec|Non-2xx|Socket errors|50%|99%'

echo "== POST /api/v1/auth/login alone, 8 connections, ${SECS}s"
wrk -t2 -c8 -d"${SECS}s" --latency -s bench/login.lua "$BASE" | grep -E 'Requests/sec|Non-2xx|Socket errors|50%|99%'

echo "== GET /api/v1/auth/me at 64 connections during a login storm (32 connections)"
wrk -t1 -c32 -d"$((SECS + 4))s" -s bench/login.lua "$BASE" > "$DIR/storm.txt" &
STORM=$!
sleep 2
wrk -t1 -c64 -d"${SECS}s" --latency -H "Authorization: Bearer $TOKEN" "$BASE/api/v1/auth/me" | grep -E 'Requests/sec|Non-2xx|Socket errors|50%|90%|99%'
wait $STORM
echo "login storm: $(grep 'Requests/sec' "$DIR/storm.txt")"

sleep 15  # blocking-pool threads exit after 10 s idle
echo "== idle RSS after the runs: $(awk '/VmRSS/ {print $2, $3}' /proc/$SERVER/status)"
echo "== ledger check"
python3 - "$DIR/easy-writer.db" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
bad = c.execute("""select count(*) from users u where balance !=
    (select coalesce(sum(amount),0) from transactions t where t.user_id = u.id)""").fetchone()[0]
users = c.execute("select count(*) from users").fetchone()[0]
print(f"users: {users}, balances differing from their ledger: {bad}")
PY
