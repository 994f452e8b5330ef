#!/usr/bin/env bash
# User-space instructions per request, counted by callgrind: unlike CPU time on these shared machines, the
# count repeats within about 1.5%, so two binaries (or the gateway and its floor) can be compared run against run.
#
#   loadtest/instructions.sh [GATEWAY_BINARY] [REQUESTS]              plain AI chat completion
#   loadtest/instructions.sh --edge-full [GATEWAY_BINARY] [REQUESTS]  edge-full: the gateway and bare Pingora
#   loadtest/instructions.sh --stream [GATEWAY_BINARY] [STREAMS]      a streamed answer: per stream, per chunk
#
# Defaults: target/release/gateway, 2,000 requests.
# - AI: the gateway runs under valgrind with the benchmark's config (loadtest/configs.sh: one thread, access
#   log off) in front of the mock LLM; REQUESTS chat completions go one at a time over one kept-alive connection.
# - stream: the same gateway, streams of 1 and then of 64 chunks 3 ms apart (two runs, STREAMS each, default 100,
#   one at a time over one kept-alive connection); per chunk is the difference over 63 chunks.
# - edge-full: the benchmark's edge-full gateway (TLS 1.3, API key, rate limit, JSON access log to a file) and
#   then the bare Pingora proxy (TLS only, the gateway's runtime setting), each in front of the mock origin;
#   REQUESTS GETs one at a time over one kept-alive TLS connection. Prints both counts and their ratio.
# Each process first gets 300 warm-up requests, then its counters are zeroed. Loopback only; every process
# started here is stopped at the end. Installs valgrind (and openssl) with apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/configs.sh
mode=ai
case "${1:-}" in
  --edge-full) mode=edge-full; shift ;;
  --stream) mode=stream; shift ;;
esac
binary=${1:-target/release/gateway}
requests=${2:-$([ "$mode" = stream ] && echo 100 || echo 2000)}
# Warm-up requests before the counters are zeroed (a stream takes up to 200 ms here).
warm=$([ "$mode" = stream ] && echo 20 || echo 300)
missing=()
command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Built every time (quick when nothing changed), so a stale binary is never measured; a gateway binary given
# on the command line is measured as it is.
cargo build --release -q -p loadtest
[ "$binary" != target/release/gateway ] || cargo build --release -q -p gateway
[ "$mode" != edge-full ] || cargo build --release -q --example bare-pingora
[ -x "$binary" ] || { echo "no gateway binary at $binary" >&2; exit 1; }

work=$(mktemp -d)
pids=()
stop() {
  # INT first: valgrind then removes its vgdb pipes from /tmp.
  kill -INT "$1" 2>/dev/null || true
  for _ in $(seq 20); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
cleanup() {
  for pid in "${pids[@]}"; do stop "$pid"; done
  rm -rf "$work"
}
trap cleanup EXIT

# send KIND PORT N: N requests, one at a time over one kept-alive connection; any answer but 200 fails.
send() {
  python3 - "$@" <<'PY'
import http.client, json, ssl, sys
kind, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if kind != "edge":
    # "ai", or "stream:MODEL": a streamed answer from MODEL, read to its [DONE].
    connection = http.client.HTTPConnection("127.0.0.1", port)
    model = kind.partition(":")[2] or "bench"
    body = json.dumps({"model": model, "stream": kind != "ai",
                       "messages": [{"role": "user", "content": "Say hello to the benchmark, please."}]})
    request = ("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
else:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context)
    request = ("GET", "/", None, {"x-api-key": sys.argv[4]})
for _ in range(n):
    connection.request(*request)
    response = connection.getresponse()
    answer = response.read()
    if response.status != 200:
        sys.exit(f"{kind}: the proxy answered {response.status}")
    if kind.startswith("stream") and b"[DONE]" not in answer:
        sys.exit(f"{kind}: a stream ended without [DONE]")
PY
}

# count NAME KIND PORT KEY -- COMMAND...: run COMMAND under callgrind, print its instructions per request
# (total, and without memcpy). Runs in a subshell (`< <(count ...)`): its own EXIT trap stops the process it
# started, whatever way it ends, and printing nothing makes the caller's `read` fail and the script stop.
count() {
  local name=$1 kind=$2 port=$3 key=$4
  shift 5
  local out="$work/$name.callgrind" ready=0 pid dump total copies
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" "$@" >/dev/null 2>"$work/$name.log" &
  pid=$!
  trap "stop $pid" EXIT
  for _ in $(seq 120); do
    curl -sk -o /dev/null "http$([ "$kind" != edge ] || echo s)://127.0.0.1:$port/" && { ready=1; break; }
    sleep 0.5
  done
  if [ "$ready" = 0 ]; then
    echo "$name did not start under valgrind within 60 s; its log:" >&2
    tail -20 "$work/$name.log" >&2
    exit 1
  fi
  send "$kind" "$port" "$warm" "$key"
  callgrind_control -z "$pid" >/dev/null 2>&1
  send "$kind" "$port" "$requests" "$key"
  callgrind_control -d "$pid" >/dev/null 2>&1
  sleep 1
  stop "$pid"
  dump=$(ls -t "$out".* 2>/dev/null | head -1 || true)
  [ -n "$dump" ] || { echo "callgrind wrote no dump for $name; see $work/$name.log" >&2; exit 1; }
  total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }')
  [ -n "$total" ] || { echo "callgrind_annotate found no total for $name in $dump" >&2; exit 1; }
  # callgrind counts a `rep movsb` copy as one instruction per byte, which overstates bulk copies (Pingora
  # boxing its futures) many times over: the count without memcpy/memmove is printed beside the total.
  copies=$(callgrind_annotate --auto=no --inclusive=no --threshold=100 "$dump" 2>/dev/null |
    awk '$3 !~ /^=>/ && /__mem(cpy|move)/ { gsub(",", "", $1); s += $1 } END { print s + 0 }')
  echo "$((total / requests)) $(((total - copies) / requests))"
}

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=localhost \
  -keyout "$work/key.pem" -out "$work/cert.pem" >/dev/null 2>&1

if [ "$mode" = ai ]; then
  # The benchmark's process A; only the mock LLM behind `bench` runs.
  gateway_yaml gateway "$work" 127.0.0.1:19700 127.0.0.1:19704 127.0.0.1:19703 127.0.0.1:19701 \
    127.0.0.1:19705 127.0.0.1:19706 > "$work/gateway.yaml"
  target/release/mock-llm --listen 127.0.0.1:19701 --name llm >/dev/null 2>&1 &
  pids+=($!)
  read -r per rest < <(count gateway ai 19700 "" -- "$binary" run -c "$work/gateway.yaml")
  echo "$binary: $per user-space instructions per plain AI request, $rest without memcpy ($requests requests)"
  exit 0
fi

if [ "$mode" = stream ]; then
  # bench-start streams one chunk, bench-stream 64, 3 ms apart: each chunk reaches the gateway in a read of
  # its own, even under valgrind.
  gateway_yaml gateway "$work" 127.0.0.1:19700 127.0.0.1:19704 127.0.0.1:19703 127.0.0.1:19701 \
    127.0.0.1:19705 127.0.0.1:19706 1 127.0.0.1:19707 > "$work/gateway.yaml"
  target/release/mock-llm --listen 127.0.0.1:19706 --name stream --chunks 64 --chunk-delay-ms 3 >/dev/null 2>&1 &
  pids+=($!)
  target/release/mock-llm --listen 127.0.0.1:19707 --name start --chunks 1 >/dev/null 2>&1 &
  pids+=($!)
  read -r one one_rest < <(count one stream:bench-start 19700 "" -- "$binary" run -c "$work/gateway.yaml")
  read -r long long_rest < <(count long stream:bench-stream 19700 "" -- "$binary" run -c "$work/gateway.yaml")
  echo "streamed answers, user-space instructions ($requests streams over one kept-alive connection):"
  echo "  per stream of 1 chunk: $one ($one_rest without memcpy)"
  echo "  per stream of 64 chunks: $long ($long_rest without memcpy)"
  echo "  per chunk: $(((long - one) / 63)) ($(((long_rest - one_rest) / 63)) without memcpy)"
  exit 0
fi

key="bench-$(openssl rand -hex 16)"
edge_full_yaml gateway "$work" 127.0.0.1:19702 127.0.0.1:19703 > "$work/gateway.yaml"
target/release/mock-origin --listen 127.0.0.1:19703 >/dev/null 2>&1 &
pids+=($!)
read -r gateway gateway_rest < <(BENCH_API_KEY=$key count gateway edge 19702 "$key" -- \
  "$binary" run -c "$work/gateway.yaml")
read -r bare bare_rest < <(count bare edge 19702 "$key" -- target/release/examples/bare-pingora \
  --listen 127.0.0.1:19702 --upstream 127.0.0.1:19703 --no-work-stealing --tls "$work/cert.pem" "$work/key.pem")
echo "edge-full, user-space instructions per request ($requests requests over one TLS connection):"
echo "  gateway ($binary): $gateway ($gateway_rest without memcpy)"
echo "  bare Pingora: $bare ($bare_rest without memcpy)"
awk -v g="$gateway" -v b="$bare" -v gr="$gateway_rest" -v br="$bare_rest" \
  'BEGIN { printf "  gateway / bare Pingora: %.2fx (%.2fx without memcpy)\n", g / b, gr / br }'
