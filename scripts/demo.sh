#!/usr/bin/env bash
# The main job in one command: builds everything, starts a demo node with three agents on
# embedded defaults (in-process bus, file KV store), shows messages flowing through them,
# then stops the node (it saves every agent's state). DEMO_KEEP=1 keeps the node running
# in the foreground afterwards (Ctrl-C stops it).
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2 >/dev/null
echo "==> building the agents (wasm32-wasip2 components)"
(cd plugins && cargo build --release --target wasm32-wasip2 --quiet)
echo "==> building the host"
cargo build --release -p host --quiet
HOST="$PWD/target/release/host"
export HOST_CONTROL="$PWD/data/host.sock"

echo "==> starting the demo node (configs/demo.toml); its log: data/node.log"
mkdir -p data
"$HOST" run --config configs/demo.toml 2>data/node.log &
NODE=$!
trap 'kill -TERM $NODE 2>/dev/null || true; wait $NODE 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  [ -S "$HOST_CONTROL" ] && "$HOST" list >/dev/null 2>&1 && break
  sleep 0.1
done
kill -0 $NODE 2>/dev/null || { cat data/node.log; exit 1; }
grep -E "subscribed to|is ready" data/node.log

show() { echo; echo "\$ host $*"; "$HOST" "$@" || true; }
show list
show send agent.to.echo.hello "Hello, agents" --wait 2
for n in 1 2 3; do show send agent.to.counter.cmd "add $n" --wait 2; done
show send agent.to.counter.cmd get --wait 2
echo "# (the count is kept in data/ across node restarts: run the demo again and it goes on)"
show send agent.to.greeter.cmd "ask echo hi hello from greeter, via echo" --wait 2
show send agent.to.greeter.cmd "config greeting" --wait 2
echo; echo "# the greeter's manifest does not grant this subject: the host refuses"
show send agent.to.greeter.cmd "publish agent.secret.plans hi" --wait 2
show status greeter
show health
echo; echo "\$ curl -s http://127.0.0.1:9464/metrics | grep messages_handled"
(exec 3<>/dev/tcp/127.0.0.1/9464 && printf 'GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' >&3 && grep messages_handled <&3) || true

echo; echo "# the node logged the refused call:"
grep "denied" data/node.log || true

if [ "${DEMO_KEEP:-0}" = "1" ]; then
  echo; echo "node running (control socket $HOST_CONTROL); Ctrl-C stops it"
  wait $NODE
fi
