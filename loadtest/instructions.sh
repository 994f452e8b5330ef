#!/usr/bin/env bash
# User-space instructions per plain AI request of a gateway binary, counted by callgrind: unlike CPU time on
# these shared machines, the count repeats within about 1.5%, so two binaries can be compared run against run.
#
#   loadtest/instructions.sh [GATEWAY_BINARY] [REQUESTS]
#
# Defaults: target/release/gateway, 2,000 requests. The gateway runs under valgrind with the benchmark's AI
# config (one thread, access log off) in front of the mock LLM; 300 warm-up requests, then the counters are
# zeroed and REQUESTS chat completions go one at a time over one kept-alive connection. Loopback only; every
# process started here is stopped at the end. Installs valgrind with apt-get when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
binary=${1:-target/release/gateway}
requests=${2:-2000}
command -v valgrind >/dev/null 2>&1 || {
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq valgrind >/dev/null
}
[ -x target/release/mock-llm ] || cargo build --release -q -p loadtest
[ "$binary" != target/release/gateway ] || [ -x "$binary" ] || cargo build --release -q -p gateway
[ -x "$binary" ] || { echo "no gateway binary at $binary" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    # INT first: valgrind then removes its vgdb pipes from /tmp.
    kill -INT "$pid" 2>/dev/null || true
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

cat > "$work/gateway.yaml" <<YAML
server:
  threads: 1
  pid_file: $work/gateway.pid
  upgrade_sock: $work/gateway.sock
  access_log: { target: "off" }
listeners:
  - { name: edge, address: "127.0.0.1:19700" }
ai:
  providers:
    - { name: llm, type: openai, base_url: "http://127.0.0.1:19701/v1" }
  models:
    - { name: bench, provider: llm }
  profiles:
    default: [bench]
routes:
  - name: ai
    match: { path: { prefix: /v1 } }
    ai: {}
YAML

target/release/mock-llm --listen 127.0.0.1:19701 --name llm >/dev/null 2>&1 & pids+=($!)
RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" \
  "$binary" run -c "$work/gateway.yaml" >/dev/null 2>"$work/valgrind.log" & pids+=($!)
gateway_pid=$!
ready=0
for _ in $(seq 120); do
  curl -s -o /dev/null http://127.0.0.1:19700/v1/models && { ready=1; break; }
  sleep 0.5
done
if [ "$ready" = 0 ]; then
  echo "the gateway did not start under valgrind within 60 s; its log:" >&2
  tail -20 "$work/valgrind.log" >&2
  exit 1
fi

send() {
  python3 - "$1" <<'PY'
import http.client, json, sys
body = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "Say hello to the benchmark, please."}]})
connection = http.client.HTTPConnection("127.0.0.1", 19700)
for _ in range(int(sys.argv[1])):
    connection.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    response.read()
    if response.status != 200:
        sys.exit(f"the gateway answered {response.status}")
PY
}
send 300
callgrind_control -z "$gateway_pid" >/dev/null 2>&1
send "$requests"
callgrind_control -d "$gateway_pid" >/dev/null 2>&1
sleep 1
dump=$(ls -t "$work"/callgrind.out.* 2>/dev/null | head -1 || true)
[ -n "$dump" ] || { echo "callgrind wrote no dump; see $work/valgrind.log" >&2; exit 1; }
total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }')
echo "$binary: $((total / requests)) user-space instructions per plain AI request ($requests requests)"
