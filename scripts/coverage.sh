#!/usr/bin/env bash
# Line coverage of the whole test suite (`cargo test`), measured with cargo-llvm-cov from
# crates.io and the toolchain's llvm-tools. Prints a per-file summary, writes an HTML report to
# target/llvm-cov/html/index.html, and fails below 80 % of lines.
#
#     scripts/coverage.sh
#
# The instrumented build lives in target/llvm-cov-target, apart from the normal one.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v rustup >/dev/null 2>&1; then
    rustup component add llvm-tools-preview >/dev/null
fi
if ! command -v cargo-llvm-cov >/dev/null 2>&1; then
    cargo install cargo-llvm-cov --locked --version 0.9.1
fi
cargo llvm-cov clean --workspace
cargo llvm-cov --no-report
cargo llvm-cov report --html
cargo llvm-cov report --summary-only --fail-under-lines "${COVERAGE_MIN_LINES:-80}"
