#!/usr/bin/env bash
# Runs every test from a clean clone: installs the wasm32-wasip2 target, builds the
# plugins, checks formatting and lints, then runs all unit and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> installing the wasm32-wasip2 target"
rustup target add wasm32-wasip2 >/dev/null
rustup component add rustfmt clippy >/dev/null 2>&1 || true

echo "==> building the plugins (wasm32-wasip2 components)"
(cd plugins && cargo build --release --target wasm32-wasip2)

echo "==> formatting and lints"
cargo fmt --all -- --check
(cd plugins && cargo fmt --all -- --check)
cargo clippy --workspace --all-targets -- -D warnings
(cd plugins && cargo clippy --release --target wasm32-wasip2 -- -D warnings)

echo "==> tests"
cargo test --workspace
