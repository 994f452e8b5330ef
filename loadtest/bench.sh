#!/usr/bin/env bash
# Side-by-side benchmark on 127.0.0.1: the gateway against nginx, HAProxy, a bare Pingora proxy and the AI
# gateways LiteLLM and Portkey, in one run (README "Benchmarks").
#   loadtest/bench.sh [--quick] [--no-peers] [scenario...]
#   scenarios: edge-http edge-tls edge-full edge-cores ai-overhead ai-stream memory (default: all)
# Every edge and AI run also counts the TCP connections the mock upstream accepted, as upstream connections
# opened per 1,000 requests: a proxy that keeps its upstream connections alive opens about none.
# Installs what it lacks (nginx-light, haproxy, wrk and openssl with apt-get; the peers with pip and npm into loadtest/.peers), builds the
# release binaries, starts every process on loopback, alternates contenders A B A B (3 rounds of 5 s; --quick:
# 1 round of 2 s and a 20 s soak instead of 10 min), stops everything it started, and writes
# loadtest/results/<date>.md, .json and .svg (<date>-<scenarios> and -quick for partial and quick runs). Headline figure: CPU microseconds per request of the proxy process.
set -euo pipefail
cd "$(dirname "$0")/.."
. loadtest/configs.sh

rounds=3 duration=5 soak=300 stream_timeout=30 peers=1 scenarios=()
all=(edge-http edge-tls edge-full edge-cores ai-overhead ai-stream memory)
for arg in "$@"; do
  case "$arg" in
    --quick) rounds=1 duration=2 soak=20 stream_timeout=10 ;;
    --no-peers) peers=0 ;;
    edge-http|edge-tls|edge-full|edge-cores|ai-overhead|ai-stream|memory) scenarios+=("$arg") ;;
    *) echo "usage: loadtest/bench.sh [--quick] [--no-peers] [${all[*]}]..." >&2; exit 2 ;;
  esac
done
[ ${#scenarios[@]} -gt 0 ] || scenarios=("${all[@]}")
wants() { [[ " ${scenarios[*]} " == *" $1 "* ]]; }
started_at=$(date +%s)

# --- what the run needs ---------------------------------------------------------------------------------------
need=()
command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v ss >/dev/null 2>&1 || need+=(iproute2)
command -v pgrep >/dev/null 2>&1 || need+=(procps)
if [ "$peers" = 1 ]; then
  command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
  python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
fi
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
peer_dir=loadtest/.peers
notes=()
have_litellm=0 have_portkey=0
if [ "$peers" = 1 ] && (wants ai-overhead || wants ai-stream); then
  # Peers go into a local folder, never system-wide; a peer that does not install is skipped and noted.
  mkdir -p "$peer_dir"
  if [ ! -x "$peer_dir/litellm/bin/litellm" ]; then
    echo "installing LiteLLM proxy into $peer_dir/litellm (pip)..."
    { python3 -m venv "$peer_dir/litellm" && "$peer_dir/litellm/bin/pip" install -q 'litellm[proxy]'; } \
      >"$peer_dir/litellm-install.log" 2>&1 || notes+=("LiteLLM did not install (see $peer_dir/litellm-install.log)")
  fi
  if [ ! -f "$peer_dir/portkey/node_modules/@portkey-ai/gateway/build/start-server.js" ]; then
    echo "installing Portkey gateway into $peer_dir/portkey (npm)..."
    { mkdir -p "$peer_dir/portkey" && (cd "$peer_dir/portkey" && npm install --no-audit --no-fund @portkey-ai/gateway); } \
      >"$peer_dir/portkey-install.log" 2>&1 || notes+=("Portkey did not install (see $peer_dir/portkey-install.log)")
  fi
  [ -x "$peer_dir/litellm/bin/litellm" ] && have_litellm=1
  [ -f "$peer_dir/portkey/node_modules/@portkey-ai/gateway/build/start-server.js" ] && have_portkey=1
fi
echo "building release binaries..."
cargo build --release --workspace --bins --examples --quiet
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d)
pids=()
cleanup() {
  exec 2>/dev/null # no "Killed" job notices
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  [ -f "$work/nginx2.pid" ] && kill "$(cat "$work/nginx2.pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
bin=target/release
results="$work/results.jsonl"
: > "$results"

# --- processes ----------------------------------------------------------------------------------------------
# One certificate for every TLS contender: ECDSA P-256, generated now, never stored.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
bench_key="bench-$(openssl rand -hex 16)"

"$bin/mock-origin" --listen 127.0.0.1:19000 --name origin >/dev/null & pids+=($!); origin_pid=$!
"$bin/mock-llm" --listen 127.0.0.1:19100 --name llm >/dev/null & pids+=($!); llm_pid=$!
"$bin/mock-llm" --listen 127.0.0.1:19101 --name llm20 --head-delay-ms 20 >/dev/null & pids+=($!); llm20_pid=$!
"$bin/mock-llm" --listen 127.0.0.1:19102 --name stream --chunks 64 --chunk-delay-ms 20 >/dev/null & pids+=($!)
stream_pid=$!
# One-token streams: the cost of starting a stream, nothing else.
"$bin/mock-llm" --listen 127.0.0.1:19103 --name start --chunks 1 >/dev/null & pids+=($!); start_pid=$!
# The bare Pingora floor runs with the gateway's runtime setting (one thread, work stealing off), which is
# also the faster one for it here: the features are measured against the best bare Pingora, not its default.
"$bin/examples/bare-pingora" --listen 127.0.0.1:19400 --upstream 127.0.0.1:19000 --no-work-stealing \
  >/dev/null 2>&1 & pids+=($!); bare_pid=$!
"$bin/examples/bare-pingora" --listen 127.0.0.1:19401 --upstream 127.0.0.1:19000 --no-work-stealing \
  --tls "$work/cert.pem" "$work/key.pem" >/dev/null 2>&1 & pids+=($!); bare_tls_pid=$!
bare2_pid="" bare2_tls_pid=""
if wants edge-cores; then
  "$bin/examples/bare-pingora" --listen 127.0.0.1:19410 --upstream 127.0.0.1:19000 --threads 2 --no-work-stealing \
    >/dev/null 2>&1 & pids+=($!); bare2_pid=$!
  "$bin/examples/bare-pingora" --listen 127.0.0.1:19411 --upstream 127.0.0.1:19000 --threads 2 --no-work-stealing \
    --tls "$work/cert.pem" "$work/key.pem" >/dev/null 2>&1 & pids+=($!); bare2_tls_pid=$!
fi

# nginx: one worker (the gateway runs one thread), upstream keep-alive, TLS 1.3 only, the same certificate.
# NGINX_WORKERS and NGINX_NAME make the all-cores instance (edge-cores) from the same text.
nginx_conf() {
cat <<NGINX
worker_processes $1;
worker_rlimit_nofile 65536;
pid $work/$2.pid;
error_log $work/$2-error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  upstream origin { server 127.0.0.1:19000; keepalive 64; }
  upstream llm { server 127.0.0.1:19100; keepalive 64; }
  upstream llm20 { server 127.0.0.1:19101; keepalive 128; }
  upstream llm_stream { server 127.0.0.1:19102; keepalive 128; }
  upstream llm_start { server 127.0.0.1:19103; keepalive 128; }
  ssl_protocols TLSv1.3;
  ssl_certificate $work/cert.pem;
  ssl_certificate_key $work/key.pem;
  map \$http_x_api_key \$consumer { "$bench_key" bench; default ""; }
  limit_req_zone \$consumer zone=perkey:1m rate=1000000r/s;
  log_format json escape=json '{"time":"\$time_iso8601","request_id":"\$request_id","client":"\$remote_addr",'
    '"method":"\$request_method","host":"\$host","path":"\$uri","status":\$status,"bytes":\$body_bytes_sent,'
    '"duration_s":\$request_time,"upstream":"\$upstream_addr","upstream_s":"\$upstream_response_time",'
    '"consumer":"\$consumer","user_agent":"\$http_user_agent"}';
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_set_header Host \$host;
  proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
  server {
    listen 127.0.0.1:${3}00;
    listen 127.0.0.1:${3}01 ssl;
    location / { proxy_pass http://origin; }
    # edge-full taken apart (access log off here): the key check, then the key check and the rate limit.
    location /key {
      if (\$consumer = "") { return 401; }
      proxy_pass http://origin;
    }
    location /limit {
      if (\$consumer = "") { return 401; }
      limit_req zone=perkey burst=100000 nodelay;
      proxy_pass http://origin;
    }
  }
  # ai-overhead and ai-throughput: a plain pass-through to the mock LLM (no body parsing, no routing, no usage),
  # the floor any proxy adds to a chat completion on this machine.
  server {
    listen 127.0.0.1:${3}04;
    location / { proxy_pass http://llm; }
  }
  server {
    listen 127.0.0.1:${3}05;
    location / { proxy_pass http://llm20; }
  }
  # ai-stream: a plain streaming pass-through to the mock LLM (no body parsing, no masking, no usage), the
  # floor any proxy pays on this machine for a stream's first token.
  server {
    listen 127.0.0.1:${3}03;
    location / { proxy_pass http://llm_stream; proxy_buffering off; }
  }
  server {
    listen 127.0.0.1:${3}06;
    location / { proxy_pass http://llm_start; proxy_buffering off; }
  }
  server {
    listen 127.0.0.1:${3}02 ssl;
    access_log $work/$2-access.log json buffer=64k flush=1s;
    location / {
      if (\$consumer = "") { return 401; }
      limit_req zone=perkey burst=100000 nodelay;
      # A proxy_set_header here replaces every inherited one, so all of them are repeated (without
      # Connection "" nginx would open a new upstream connection per request).
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Request-ID \$request_id;
      proxy_pass http://origin;
    }
  }
}
NGINX
}
nginx_conf 1 nginx 192 > "$work/nginx.conf"
nginx -c "$work/nginx.conf"
nginx2_pid=""
if wants edge-cores; then
  nginx_conf 2 nginx2 199 > "$work/nginx2.conf"
  nginx -c "$work/nginx2.conf"
fi

# HAProxy: one thread (nbthread 1), as an operator would write it: upstream connections reused
# (http-reuse always), TLS 1.3 with the same certificate, the key checked by an ACL, a stick-table rate limit
# never reached, a unique id sent as X-Request-ID, and a JSON log line per request to a file (stdout,
# redirected). Ports 197xx; the all-cores instance (nbthread 2) 198xx.
cat "$work/cert.pem" "$work/key.pem" > "$work/haproxy.pem"
haproxy_conf() {
cat <<HAPROXY
global
  nbthread $1
  maxconn 8000
  ssl-default-bind-options ssl-min-ver TLSv1.3
  log stdout format raw local0
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  timeout http-keep-alive 60s
frontend plain
  bind 127.0.0.1:${2}00
  default_backend origin
frontend tls
  bind 127.0.0.1:${2}01 ssl crt $work/haproxy.pem alpn http/1.1
  acl key_ok req.hdr(x-api-key) -m str $bench_key
  http-request deny deny_status 401 if { path_beg /key /limit } !key_ok
  http-request track-sc0 req.hdr(x-api-key) table per_key if { path_beg /limit }
  http-request deny deny_status 429 if { path_beg /limit } { sc_http_req_rate(0,per_key) gt 1000000 }
  default_backend origin
frontend full
  bind 127.0.0.1:${2}02 ssl crt $work/haproxy.pem alpn http/1.1
  log global
  unique-id-format %{+X}o\ %ci:%cp_%fi:%fp_%Ts_%rt:%pid
  unique-id-header X-Request-ID
  http-request capture req.hdr(host) len 64
  log-format "{\"time\":\"%t\",\"request_id\":\"%ID\",\"client\":\"%ci\",\"method\":\"%HM\",\"host\":\"%hr\",\"path\":\"%HP\",\"status\":%ST,\"bytes\":%B,\"duration_ms\":%Ta,\"upstream\":\"%si:%sp\"}"
  acl key_ok req.hdr(x-api-key) -m str $bench_key
  http-request deny deny_status 401 if !key_ok
  http-request track-sc0 req.hdr(x-api-key) table per_key
  http-request deny deny_status 429 if { sc_http_req_rate(0,per_key) gt 1000000 }
  default_backend origin
backend per_key
  stick-table type string len 64 size 10k expire 60s store http_req_rate(1s)
backend origin
  server origin 127.0.0.1:19000
HAPROXY
}
haproxy_conf 1 197 > "$work/haproxy.cfg"
haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy-access.log" 2>"$work/haproxy.log" & pids+=($!); haproxy_pid=$!
haproxy2_pid=""
if wants edge-cores; then
  haproxy_conf 2 198 > "$work/haproxy2.cfg"
  haproxy -db -f "$work/haproxy2.cfg" >"$work/haproxy2-access.log" 2>"$work/haproxy2.log" & pids+=($!); haproxy2_pid=$!
fi

# The gateway: one thread like nginx's one worker. Process A serves edge-http, edge-tls and the AI scenarios
# with the access log off (as nginx above); process B is edge-full: API key, rate limit and a JSON access log.
gateway_yaml gateway "$work" 127.0.0.1:19300 127.0.0.1:19301 127.0.0.1:19000 127.0.0.1:19100 127.0.0.1:19101 \
  127.0.0.1:19102 > "$work/gateway.yaml"
edge_full_yaml gateway-full "$work" 127.0.0.1:19302 127.0.0.1:19000 > "$work/gateway-full.yaml"
RUST_LOG=warn "$bin/gateway" run -c "$work/gateway.yaml" >/dev/null 2>"$work/gateway.log" & pids+=($!); gateway_pid=$!
BENCH_API_KEY=$bench_key RUST_LOG=warn "$bin/gateway" run -c "$work/gateway-full.yaml" >/dev/null 2>"$work/gateway-full.log" &
pids+=($!); gateway_full_pid=$!
# Process C: edge-full taken apart (access log off): /key, /limit, and TLS only elsewhere.
edge_steps_yaml gateway-steps "$work" 127.0.0.1:19303 127.0.0.1:19000 > "$work/gateway-steps.yaml"
BENCH_API_KEY=$bench_key RUST_LOG=warn "$bin/gateway" run -c "$work/gateway-steps.yaml" >/dev/null \
  2>"$work/gateway-steps.log" & pids+=($!); gateway_steps_pid=$!
gateway2_pid="" gateway2_full_pid=""
if wants edge-cores; then
  # All cores: the same two processes with two threads each.
  gateway_yaml gateway2 "$work" 127.0.0.1:19320 127.0.0.1:19321 127.0.0.1:19000 127.0.0.1:19100 127.0.0.1:19101 \
    127.0.0.1:19102 2 > "$work/gateway2.yaml"
  edge_full_yaml gateway2-full "$work" 127.0.0.1:19322 127.0.0.1:19000 2 > "$work/gateway2-full.yaml"
  RUST_LOG=warn "$bin/gateway" run -c "$work/gateway2.yaml" >/dev/null 2>"$work/gateway2.log" & pids+=($!)
  gateway2_pid=$!
  BENCH_API_KEY=$bench_key RUST_LOG=warn "$bin/gateway" run -c "$work/gateway2-full.yaml" >/dev/null \
    2>"$work/gateway2-full.log" & pids+=($!); gateway2_full_pid=$!
fi

litellm_pid="" portkey_pid=""
if [ "$have_litellm" = 1 ]; then
  cat > "$work/litellm.yaml" <<YAML
model_list:
  - { model_name: bench, litellm_params: { model: openai/bench, api_base: "http://127.0.0.1:19100/v1", api_key: none } }
  - { model_name: bench20, litellm_params: { model: openai/bench, api_base: "http://127.0.0.1:19101/v1", api_key: none } }
  - { model_name: bench-stream, litellm_params: { model: openai/bench, api_base: "http://127.0.0.1:19102/v1", api_key: none } }
YAML
  # LiteLLM refuses to start without a master key; this one lives only for the run.
  LITELLM_MASTER_KEY="$bench_key" "$peer_dir/litellm/bin/litellm" --config "$work/litellm.yaml" --host 127.0.0.1 \
    --port 19500 >"$work/litellm.log" 2>&1 & pids+=($!); litellm_pid=$!
fi
if [ "$have_portkey" = 1 ]; then
  node "$peer_dir/portkey/node_modules/@portkey-ai/gateway/build/start-server.js" --port=19600 --headless \
    >"$work/portkey.log" 2>&1 & pids+=($!); portkey_pid=$!
fi

wait_for() { # URL: until it answers at all (30 s)
  for _ in $(seq 150); do curl -s -o /dev/null -m 1 "$1" && return 0; sleep 0.2; done
  echo "bench: $1 did not come up" >&2; return 1
}
for url in http://127.0.0.1:19000/ http://127.0.0.1:19100/health http://127.0.0.1:19300/ http://127.0.0.1:19200/ \
    http://127.0.0.1:19400/ http://127.0.0.1:19700/; do wait_for "$url"; done
curl -sk -o /dev/null https://127.0.0.1:19302/ || wait_for https://127.0.0.1:19302/ || true
curl -sk -o /dev/null https://127.0.0.1:19303/ || wait_for https://127.0.0.1:19303/ || true
if wants edge-cores; then
  for url in http://127.0.0.1:19320/ http://127.0.0.1:19900/ http://127.0.0.1:19410/ http://127.0.0.1:19800/; do
    wait_for "$url"
  done
  curl -sk -o /dev/null https://127.0.0.1:19322/ || wait_for https://127.0.0.1:19322/ || true
  nginx2_pid=$(cat "$work/nginx2.pid")
fi
if [ -n "$litellm_pid" ] && ! wait_for http://127.0.0.1:19500/health/liveliness; then
  notes+=("LiteLLM did not start (log tail: $(tail -c 300 "$work/litellm.log" | tr '\n' ' '))"); litellm_pid=""
fi
if [ -n "$portkey_pid" ] && ! wait_for http://127.0.0.1:19600/; then
  notes+=("Portkey did not start"); portkey_pid=""
fi
nginx_pid=$(pgrep -P "$(cat "$work/nginx.pid")" | head -1)

# --- measuring ----------------------------------------------------------------------------------------------
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
# CPU of a process and its children (LiteLLM and Portkey may fork).
tree_cpu() { local t; t=$(cpu "$1"); for c in $(pgrep -P "$1" || true); do t=$((t + $(tree_cpu "$c"))); done; echo "$t"; }
rss_kib() { awk '/VmHWM/{print $2}' "/proc/$1/status"; }

for lua in chat:bench chat20:bench20; do
  name=${lua%%:*} model=${lua##*:}
  cat > "$work/$name.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $bench_key"
wrk.headers["x-portkey-provider"] = "openai"
wrk.body = '{"model":"$model","messages":[{"role":"user","content":"Say hello to the benchmark, please."}]}'
LUA
done

# TCP connections the mock upstream on PORT accepted so far.
accepted() { curl -s -m 2 "http://127.0.0.1:$1/_mock/connections" || echo 0; }
upstream=19000 wrk_threads=1 stream_upstream=19102 stream_model=bench-stream

# wrk_run SCENARIO CONTENDER PID URL CONNECTIONS [wrk options...]: one measured window, one JSON line, with the
# connections the upstream (port $upstream) accepted meanwhile.
wrk_run() {
  local scenario=$1 contender=$2 pid=$3 url=$4 conns=$5; shift 5
  local before after out opened
  opened=$(accepted "$upstream")
  before=$(tree_cpu "$pid")
  out=$(wrk -t"$wrk_threads" -c"$conns" -d"${duration}s" --timeout 10s --latency "$@" "$url" 2>&1)
  after=$(tree_cpu "$pid")
  opened=$(( $(accepted "$upstream") - opened ))
  echo "$out" | awk -v s="$scenario" -v c="$contender" -v b="$before" -v a="$after" -v t="$ticks" -v r="$(rss_kib "$pid")" \
      -v o="$opened" '
    function us(v) { if (v ~ /us$/) return v+0; if (v ~ /ms$/) return (v+0)*1000; if (v ~ /s$/) return (v+0)*1000000; return v }
    /requests in/ { n=$1 } /Requests\/sec/ { rps=$2 } / 50%/ { p50=us($2) } / 99%/ { p99=us($2) }
    /Non-2xx/ { bad=$4 } /Socket errors/ { err=1 }
    END { printf "{\"scenario\":\"%s\",\"contender\":\"%s\",\"requests\":%d,\"cpu_us\":%.2f,\"rps\":%.1f,\"p50_us\":%.0f,\"p99_us\":%.0f,\"rss_kib\":%d,\"non_2xx\":%d,\"upstream_conns_per_1000\":%.2f}\n",
          s, c, n, (a-b)/t*1e6/(n>0?n:1), rps, p50, p99, r, bad+0, o*1000/(n>0?n:1) }' >> "$results"
}

# stream_run SCENARIO CONTENDER PID URL [stream-load options...]: 512 concurrent streams, one JSON line.
stream_run() {
  local scenario=$1 contender=$2 pid=$3 url=$4; shift 4
  local before after out opened
  opened=$(accepted "$stream_upstream")
  before=$(tree_cpu "$pid")
  out=$("$bin/stream-load" --url "$url" --streams 512 --timeout-s "$stream_timeout" \
    --body "{\"model\":\"$stream_model\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"Stream a long answer, please.\"}]}" "$@")
  after=$(tree_cpu "$pid")
  opened=$(( $(accepted "$stream_upstream") - opened ))
  printf '{"scenario":"%s","contender":"%s","cpu_us":%.2f,"rss_kib":%d,"upstream_conns_per_1000":%.2f,"stream":%s}\n' \
    "$scenario" "$contender" \
    "$(awk -v a="$after" -v b="$before" -v t="$ticks" 'BEGIN { print (a - b) / t * 1000000 / 512 }')" \
    "$(rss_kib "$pid")" "$(awk -v o="$opened" 'BEGIN { print o * 1000 / 512 }')" "$out" >> "$results"
}

# Whether a contender's stream round already ran into the timeout. Its later rounds are skipped: another
# 30 s would only repeat "did not finish", and the whole run must stay under 20 minutes.
stream_timed_out() {
  grep "\"scenario\":\"ai-stream\",\"contender\":\"$1\"" "$results" 2>/dev/null | grep -o '"wall_s":[0-9.]*' |
    awk -F: -v t="$stream_timeout" '$2 >= t - 0.5 { hit = 1 } END { exit !hit }'
}

for round in $(seq "$rounds"); do
  echo "round $round of $rounds..."
  upstream=19000 wrk_threads=1
  if wants edge-http; then
    wrk_run edge-http direct "$origin_pid" http://127.0.0.1:19000/ 32
    wrk_run edge-http nginx "$nginx_pid" http://127.0.0.1:19200/ 32
    wrk_run edge-http haproxy "$haproxy_pid" http://127.0.0.1:19700/ 32
    wrk_run edge-http bare-pingora "$bare_pid" http://127.0.0.1:19400/ 32
    wrk_run edge-http gateway "$gateway_pid" http://127.0.0.1:19300/ 32
  fi
  if wants edge-tls; then
    wrk_run edge-tls nginx "$nginx_pid" https://127.0.0.1:19201/ 32
    wrk_run edge-tls haproxy "$haproxy_pid" https://127.0.0.1:19701/ 32
    wrk_run edge-tls bare-pingora "$bare_tls_pid" https://127.0.0.1:19401/ 32
    wrk_run edge-tls gateway "$gateway_pid" https://127.0.0.1:19301/ 32
    wrk_run edge-tls-handshake nginx "$nginx_pid" https://127.0.0.1:19201/ 32 -H "Connection: close"
    wrk_run edge-tls-handshake haproxy "$haproxy_pid" https://127.0.0.1:19701/ 32 -H "Connection: close"
    wrk_run edge-tls-handshake bare-pingora "$bare_tls_pid" https://127.0.0.1:19401/ 32 -H "Connection: close"
    wrk_run edge-tls-handshake gateway "$gateway_pid" https://127.0.0.1:19301/ 32 -H "Connection: close"
  fi
  if wants edge-full; then
    # edge-full and its steps: TLS only is edge-tls; + the key check; + the rate limit; + the JSON log.
    for step in key limit; do
      wrk_run "edge-$step" nginx "$nginx_pid" "https://127.0.0.1:19201/$step" 32 -H "x-api-key: $bench_key"
      wrk_run "edge-$step" haproxy "$haproxy_pid" "https://127.0.0.1:19701/$step" 32 -H "x-api-key: $bench_key"
      wrk_run "edge-$step" gateway "$gateway_steps_pid" "https://127.0.0.1:19303/$step" 32 -H "x-api-key: $bench_key"
    done
    wrk_run edge-full nginx "$nginx_pid" https://127.0.0.1:19202/ 32 -H "x-api-key: $bench_key"
    wrk_run edge-full haproxy "$haproxy_pid" https://127.0.0.1:19702/ 32 -H "x-api-key: $bench_key"
    wrk_run edge-full bare-pingora "$bare_tls_pid" https://127.0.0.1:19401/ 32 -H "x-api-key: $bench_key"
    wrk_run edge-full gateway "$gateway_full_pid" https://127.0.0.1:19302/ 32 -H "x-api-key: $bench_key"
  fi
  if wants edge-cores; then
    # Every contender on both CPUs, two wrk threads, nothing pinned.
    wrk_threads=2
    wrk_run edge-http-2cpu nginx "$nginx2_pid" http://127.0.0.1:19900/ 64
    wrk_run edge-http-2cpu haproxy "$haproxy2_pid" http://127.0.0.1:19800/ 64
    wrk_run edge-http-2cpu bare-pingora "$bare2_pid" http://127.0.0.1:19410/ 64
    wrk_run edge-http-2cpu gateway "$gateway2_pid" http://127.0.0.1:19320/ 64
    wrk_run edge-full-2cpu nginx "$nginx2_pid" https://127.0.0.1:19902/ 64 -H "x-api-key: $bench_key"
    wrk_run edge-full-2cpu haproxy "$haproxy2_pid" https://127.0.0.1:19802/ 64 -H "x-api-key: $bench_key"
    wrk_run edge-full-2cpu bare-pingora "$bare2_tls_pid" https://127.0.0.1:19411/ 64 -H "x-api-key: $bench_key"
    wrk_run edge-full-2cpu gateway "$gateway2_full_pid" https://127.0.0.1:19322/ 64 -H "x-api-key: $bench_key"
    wrk_threads=1
  fi
  upstream=19100
  if wants ai-overhead; then
    wrk_run ai-overhead direct "$llm_pid" http://127.0.0.1:19100/v1/chat/completions 1 -s "$work/chat.lua"
    wrk_run ai-overhead nginx "$nginx_pid" http://127.0.0.1:19204/v1/chat/completions 1 -s "$work/chat.lua"
    wrk_run ai-overhead gateway "$gateway_pid" http://127.0.0.1:19300/v1/chat/completions 1 -s "$work/chat.lua"
    [ -n "$litellm_pid" ] && wrk_run ai-overhead litellm "$litellm_pid" http://127.0.0.1:19500/v1/chat/completions 1 -s "$work/chat.lua"
    [ -n "$portkey_pid" ] && wrk_run ai-overhead portkey "$portkey_pid" http://127.0.0.1:19600/v1/chat/completions 1 \
      -s "$work/chat.lua" -H "x-portkey-custom-host: http://127.0.0.1:19100/v1"
    upstream=19101
    wrk_run ai-throughput direct "$llm20_pid" http://127.0.0.1:19101/v1/chat/completions 64 -s "$work/chat20.lua"
    wrk_run ai-throughput nginx "$nginx_pid" http://127.0.0.1:19205/v1/chat/completions 64 -s "$work/chat20.lua"
    wrk_run ai-throughput gateway "$gateway_pid" http://127.0.0.1:19300/v1/chat/completions 64 -s "$work/chat20.lua"
    [ -n "$litellm_pid" ] && wrk_run ai-throughput litellm "$litellm_pid" http://127.0.0.1:19500/v1/chat/completions 64 -s "$work/chat20.lua"
    [ -n "$portkey_pid" ] && wrk_run ai-throughput portkey "$portkey_pid" http://127.0.0.1:19600/v1/chat/completions 64 \
      -s "$work/chat20.lua" -H "x-portkey-custom-host: http://127.0.0.1:19101/v1"
  fi
  if wants ai-stream; then
    stream_run ai-stream direct "$stream_pid" http://127.0.0.1:19102/v1/chat/completions
    stream_run ai-stream nginx "$nginx_pid" http://127.0.0.1:19203/v1/chat/completions
    stream_run ai-stream gateway "$gateway_pid" http://127.0.0.1:19300/v1/chat/completions
    # The same 512 streams arriving over one second (they still overlap: each lasts 1.3 s).
    stream_run ai-stream-ramp direct "$stream_pid" http://127.0.0.1:19102/v1/chat/completions --ramp-ms 1000
    stream_run ai-stream-ramp nginx "$nginx_pid" http://127.0.0.1:19203/v1/chat/completions --ramp-ms 1000
    stream_run ai-stream-ramp gateway "$gateway_pid" http://127.0.0.1:19300/v1/chat/completions --ramp-ms 1000
    # Starting a stream: 512 one-token streams over one second, each on its own client connection.
    stream_upstream=19103 stream_model=bench-start
    stream_run ai-stream-start direct "$start_pid" http://127.0.0.1:19103/v1/chat/completions --ramp-ms 1000
    stream_run ai-stream-start nginx "$nginx_pid" http://127.0.0.1:19206/v1/chat/completions --ramp-ms 1000
    stream_run ai-stream-start gateway "$gateway_pid" http://127.0.0.1:19300/v1/chat/completions --ramp-ms 1000
    stream_upstream=19102 stream_model=bench-stream
    [ -n "$litellm_pid" ] && ! stream_timed_out litellm && stream_run ai-stream litellm "$litellm_pid" http://127.0.0.1:19500/v1/chat/completions \
      --header "Authorization: Bearer $bench_key"
    [ -n "$portkey_pid" ] && ! stream_timed_out portkey && stream_run ai-stream portkey "$portkey_pid" http://127.0.0.1:19600/v1/chat/completions \
      --header "x-portkey-provider: openai" --header "authorization: Bearer none" \
      --header "x-portkey-custom-host: http://127.0.0.1:19102/v1"
  fi
  true
done

for peer in litellm portkey; do
  if [ "$rounds" -gt 1 ] && stream_timed_out "$peer"; then
    notes+=("$peer: its first ai-stream round ran into the ${stream_timeout} s timeout, so its later stream rounds were skipped")
  fi
  # A peer whose requests failed: keep the first error line of its log for the results' notes.
  if grep -q "\"scenario\":\"ai-[a-z-]*\",\"contender\":\"$peer\".*\"failed\":[1-9]" "$results" 2>/dev/null; then
    line=$(grep -m1 -E "Error|error|Exception" "$work/$peer.log" 2>/dev/null | cut -c1-200 || true)
    notes+=("$peer: some streamed requests failed${line:+; its log says: $line}")
  fi
done

# --- memory: idle, 1,000 open keep-alive connections, and a soak that must not keep growing ----------------
if wants memory; then
  now_rss() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
  # A fresh gateway, so idle means idle.
  gateway_yaml mem "$work" 127.0.0.1:19310 127.0.0.1:19311 127.0.0.1:19000 127.0.0.1:19100 127.0.0.1:19101 \
    127.0.0.1:19102 > "$work/mem.yaml"
  RUST_LOG=warn "$bin/gateway" run -c "$work/mem.yaml" >/dev/null 2>"$work/mem.log" & pids+=($!); mem_pid=$!
  wait_for http://127.0.0.1:19310/
  sleep 1
  for contender in gateway:$mem_pid:19310 nginx:$nginx_pid:19200; do
    IFS=: read -r name pid port <<<"$contender"
    idle=$(now_rss "$pid")
    wrk -t1 -c1000 -d"$((duration + 3))s" --timeout 10s "http://127.0.0.1:$port/" >/dev/null 2>&1 &
    wrk_pid=$!
    sleep $((duration + 1)); open=$(ss -Htn state established "( sport = :$port )" | wc -l); at_1000=$(now_rss "$pid")
    wait "$wrk_pid" || true
    printf '{"scenario":"memory","contender":"%s","idle_kib":%d,"connections":%d,"at_1000_kib":%d}\n' \
      "$name" "$idle" "$open" "$at_1000" >> "$results"
  done
  echo "soak: ${soak}s of mixed edge and AI traffic against the gateway..."
  wrk -t1 -c16 -d"${soak}s" --timeout 10s http://127.0.0.1:19310/ >/dev/null 2>&1 & soak_edge=$!
  wrk -t1 -c4 -d"${soak}s" --timeout 10s -s "$work/chat.lua" http://127.0.0.1:19310/v1/chat/completions >/dev/null 2>&1 &
  soak_ai=$!
  samples=()
  for _ in $(seq 10); do sleep $((soak / 10)); samples+=("$(now_rss "$mem_pid")"); done
  wait "$soak_edge" "$soak_ai" || true
  printf '{"scenario":"soak","contender":"gateway","seconds":%d,"rss_kib":[%s]}\n' "$soak" \
    "$(IFS=,; echo "${samples[*]}")" >> "$results"
fi

stamp=$(date -u +%Y-%m-%d)
# A run of chosen scenarios gets its own file, so it never replaces the day's full results.
[ ${#scenarios[@]} -eq ${#all[@]} ] || stamp="$stamp-$(IFS=-; echo "${scenarios[*]}")"
[ "$rounds" = 3 ] || stamp="$stamp-quick"
elapsed=$(( $(date +%s) - started_at ))
notes_json=$(printf '%s\n' "${notes[@]+"${notes[@]}"}" | python3 -c 'import json,sys; print(json.dumps([l.rstrip() for l in sys.stdin if l.strip()]))')
python3 loadtest/report.py "$results" "loadtest/results/$stamp" --rounds "$rounds" --duration "$duration" \
  --elapsed "$elapsed" --notes "$notes_json"
