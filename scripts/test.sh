#!/usr/bin/env bash
# The test command: installs and starts what the tests need, builds, runs every test.
# Works on a fresh Debian 12 machine with the Rust toolchain (cargo-nextest if present).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/test-services.sh up
cargo build --release --workspace --all-targets
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --release --workspace --no-fail-fast "$@"
else
  cargo test --release --workspace --no-fail-fast "$@"
fi
