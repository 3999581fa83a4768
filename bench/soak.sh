#!/usr/bin/env bash
# The soak (issue 16): the release binary under mixed traffic (sign-ups, logins, cookie
# refreshes, balances, quick and standard runs watched over WebSockets, pictures, T-Bank
# payments with repeated webhooks, health) for N minutes against fake upstreams on loopback.
# Every 10 s: server RSS, open files, requests, p50/p99 and errors, also appended to a CSV
# (SOAK_CSV, else next to the data dir). Then SIGTERM (must exit 0) and a ledger audit of the
# database. Exit status non-zero on any error. Talks to 127.0.0.1 only.
# Rerun: bench/soak.sh [minutes, default 10]    (SOAK_CONCURRENCY=24 tasks by default)
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-10}
cargo build --release --quiet --bin easy-writer --example soak
exec target/release/examples/soak "$MINUTES"
