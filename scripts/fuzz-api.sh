#!/usr/bin/env bash
# Property-based pass over the OpenAPI document with schemathesis (PyPI): every operation is
# called with generated valid and invalid input, and every answer is checked against the
# document — no 5xx, no undocumented status, no body that violates its schema.
#
#     scripts/fuzz-api.sh [max examples per operation, default 100]
#
# The server runs from a debug build on a temporary data directory, with a fake
# OpenAI-compatible provider (bench/fake_openai.rs) so generation works, an image provider that
# never draws, OAuth configured so its redirects answer, and mail pointed at a closed port (letters are sent off the request path
# and only fail in the log). The operations that end the fuzzer's own session (logout, password
# change and reset) run last, in a pass of their own. Exit status: schemathesis's.
set -euo pipefail
cd "$(dirname "$0")/.."
examples="${1:-100}"
work="$(mktemp -d)"
venv="target/fuzz-venv"
if [ ! -x "$venv/bin/st" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet 'schemathesis==4.32.5'
fi
cargo build --quiet --bin easy-writer --example fake_openai
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
fake_port="$(free_port)"
port="$(free_port)"
target/debug/examples/fake_openai "127.0.0.1:$fake_port" >"$work/fake.log" 2>&1 &
fake_pid=$!
export EASY_WRITER_DATA_DIR="$work/data"
export OPENAI_API_KEY=sk-fuzz OPENAI_BASE_URL="http://127.0.0.1:$fake_port/v1"
# An image provider that never draws: image requests are answered (202) and their jobs fail
# and are refunded in the background.
export FUSIONBRAIN_API_KEY=fuzz FUSIONBRAIN_SECRET_KEY=fuzz FUSIONBRAIN_BASE_URL="http://127.0.0.1:$fake_port"
export GOOGLE_CLIENT_ID=fuzz GOOGLE_CLIENT_SECRET=fuzz YANDEX_CLIENT_ID=fuzz YANDEX_CLIENT_SECRET=fuzz
export SMTP_URL="smtp://127.0.0.1:9" EASY_WRITER_MAIL_FROM="fuzz@example.com"
# The throttles are tested elsewhere; here they would only turn the fuzzer's calls into 429s.
export EASY_WRITER_REGISTER_MAX_PER_IP=1000000 EASY_WRITER_LOGIN_MAX_FAILURES_PER_IP=1000000
target/debug/easy-writer serve --bind "127.0.0.1:$port" >"$work/server.log" 2>&1 &
server_pid=$!
trap 'kill $server_pid $fake_pid 2>/dev/null || true; wait 2>/dev/null || true' EXIT
base="http://127.0.0.1:$port"
for _ in $(seq 100); do curl -fs "$base/health" >/dev/null && break; sleep 0.1; done
token="$(curl -fs -XPOST "$base/api/v1/auth/register" -H 'content-type: application/json' \
    -d '{"email":"fuzz@example.com","password":"a long fuzz password"}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')"
target/debug/easy-writer user topup --email fuzz@example.com --raits 1000000 >/dev/null
session_enders='^/api/v1/(auth/logout|user/password|auth/password/reset)$'
st=("$venv/bin/st" --config-file scripts/schemathesis.toml run "$base/api/v1/openapi.json" --url "$base" --checks all
    --max-examples "$examples" --workers 2 --request-timeout 30 --seed 1
    -H "Authorization: Bearer $token" --warnings off)
status=0
"${st[@]}" --exclude-path-regex "$session_enders" || status=$?
"${st[@]}" --include-path-regex "$session_enders" --phases examples,coverage,fuzzing || status=$?
if grep -q '"level":"ERROR"\|panicked' "$work/server.log"; then
    echo "server logged errors:"; grep '"level":"ERROR"\|panicked' "$work/server.log" | head -20
    status=1
fi
exit $status
