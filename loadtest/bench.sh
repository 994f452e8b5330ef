#!/usr/bin/env bash
# Side-by-side benchmark on 127.0.0.1 (first slice of the harness; see README "Benchmarks").
#   loadtest/bench.sh [--quick] [edge-http] [ai-overhead]
# Installs nginx-light and wrk when missing, builds the release binaries, starts every process on loopback,
# alternates contenders A B A B (3 rounds, 1 with --quick), stops everything it started, and writes
# loadtest/results/<date>.md and .json. Headline figure: CPU microseconds per request of the proxy process.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=3 duration=8 scenarios=()
for arg in "$@"; do
  case "$arg" in
    --quick) rounds=1 duration=3 ;;
    edge-http|ai-overhead) scenarios+=("$arg") ;;
    *) echo "usage: loadtest/bench.sh [--quick] [edge-http] [ai-overhead]" >&2; exit 2 ;;
  esac
done
[ ${#scenarios[@]} -gt 0 ] || scenarios=(edge-http ai-overhead)

need=()
command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
cargo build --release --workspace --quiet

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

bin=target/release
"$bin/mock-origin" --listen 127.0.0.1:19000 --name origin >/dev/null & pids+=($!)
"$bin/mock-llm" --listen 127.0.0.1:19100 --name llm >/dev/null & pids+=($!)

cat > "$work/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream origin { server 127.0.0.1:19000; keepalive 64; }
  server {
    listen 127.0.0.1:19200;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
NGINX
nginx -c "$work/nginx.conf"

cat > "$work/gateway.yaml" <<YAML
server:
  threads: 1
  pid_file: $work/gateway.pid
  upgrade_sock: $work/gateway.sock
  access_log: { target: "off" }
listeners:
  - { name: edge, address: "127.0.0.1:19300" }
clusters:
  - name: origin
    backends: [{ address: "127.0.0.1:19000" }]
ai:
  providers:
    - { name: llm, type: openai, base_url: "http://127.0.0.1:19100/v1" }
  models:
    - { name: bench, provider: llm }
  profiles:
    default: [bench]
routes:
  - name: ai
    match: { path: { prefix: /v1 } }
    ai: {}
  - name: edge
    proxy: { cluster: origin }
YAML
RUST_LOG=warn "$bin/gateway" run -c "$work/gateway.yaml" >/dev/null 2>"$work/gateway.log" & pids+=($!)
gateway_pid=$!
sleep 1.5

cat > "$work/chat.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"bench","messages":[{"role":"user","content":"Say hello to the benchmark, please."}]}'
LUA

origin_pid=${pids[0]} llm_pid=${pids[1]}
nginx_pid=$(pgrep -P "$(cat "$work/nginx.pid")" | head -1)
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
rss_kib() { awk '/VmHWM/{print $2}' "/proc/$1/status"; }

# measure SCENARIO CONTENDER PID URL CONNECTIONS [LUA]
results="$work/results.tsv"
measure() {
  local scenario=$1 contender=$2 pid=$3 url=$4 conns=$5 script=${6:-}
  local before after out
  before=$(cpu "$pid")
  out=$(wrk -t1 -c"$conns" -d"${duration}s" --latency ${script:+-s "$script"} "$url" 2>&1)
  after=$(cpu "$pid")
  echo "$out" | awk -v s="$scenario" -v c="$contender" -v b="$before" -v a="$after" -v t="$ticks" -v r="$(rss_kib "$pid")" '
    function us(v) { if (v ~ /us$/) return v+0; if (v ~ /ms$/) return (v+0)*1000; if (v ~ /s$/) return (v+0)*1000000; return v }
    /requests in/ { n=$1 } /Requests\/sec/ { rps=$2 } / 50%/ { p50=us($2) } / 99%/ { p99=us($2) }
    END { printf "%s\t%s\t%.1f\t%.0f\t%.0f\t%.0f\t%d\n", s, c, (a-b)/t*1e6/(n>0?n:1), rps, p50, p99, r }' >> "$results"
}

for round in $(seq "$rounds"); do
  for scenario in "${scenarios[@]}"; do
    case "$scenario" in
      edge-http)
        measure edge-http direct "$origin_pid" http://127.0.0.1:19000/ 32
        measure edge-http nginx "$nginx_pid" http://127.0.0.1:19200/ 32
        measure edge-http gateway "$gateway_pid" http://127.0.0.1:19300/ 32 ;;
      ai-overhead)
        measure ai-overhead direct "$llm_pid" http://127.0.0.1:19100/v1/chat/completions 1 "$work/chat.lua"
        measure ai-overhead gateway "$gateway_pid" http://127.0.0.1:19300/v1/chat/completions 1 "$work/chat.lua" ;;
    esac
  done
done

stamp=$(date -u +%Y-%m-%d)
out=loadtest/results/$stamp
python3 - "$results" "$out" "$rounds" "$duration" <<'PY'
import json, statistics, sys, platform, os
path, out, rounds, duration = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rows = [line.rstrip("\n").split("\t") for line in open(path)]
groups = {}
for s, c, cpu, rps, p50, p99, rss in rows:
    groups.setdefault((s, c), []).append((float(cpu), float(rps), float(p50), float(p99), int(rss)))
summary = []
for (s, c), values in groups.items():
    cpu = [v[0] for v in values]
    summary.append({"scenario": s, "contender": c, "rounds": len(values),
        "cpu_us_per_request": statistics.median(cpu), "cpu_spread": [min(cpu), max(cpu)],
        "requests_per_second": statistics.median(v[1] for v in values),
        "p50_us": statistics.median(v[2] for v in values), "p99_us": statistics.median(v[3] for v in values),
        "peak_rss_kib": max(v[4] for v in values)})
for row in summary:
    ref = next((r for r in summary if r["scenario"] == row["scenario"] and r["contender"] == ("nginx" if row["scenario"] == "edge-http" else "direct")), None)
    row["cpu_ratio_to_reference"] = round(row["cpu_us_per_request"] / ref["cpu_us_per_request"], 2) if ref else None
machine = {"cpus": os.cpu_count(), "kernel": platform.release()}
json.dump({"rounds": rounds, "duration_s": duration, "machine": machine, "results": summary}, open(out + ".json", "w"), indent=2)
lines = [f"# Benchmark {os.path.basename(out)}", "",
         f"{rounds} round(s) of {duration}s per contender, alternated; {machine['cpus']} CPUs; loopback only.",
         "edge-http: keep-alive GET through each proxy to the mock origin, 32 connections; the reference is nginx.",
         "ai-overhead: non-streaming chat completion at concurrency 1; the reference is the mock LLM called directly.", "",
         "| scenario | contender | CPU us/request (median, spread) | ratio | req/s | p50 us | p99 us | peak RSS KiB |",
         "|---|---|---|---|---|---|---|---|"]
for r in summary:
    lines.append(f"| {r['scenario']} | {r['contender']} | {r['cpu_us_per_request']:.1f} ({r['cpu_spread'][0]:.1f}-{r['cpu_spread'][1]:.1f}) | {r['cpu_ratio_to_reference']} | {r['requests_per_second']:.0f} | {r['p50_us']:.0f} | {r['p99_us']:.0f} | {r['peak_rss_kib']} |")
open(out + ".md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
echo "wrote $out.md and $out.json"
