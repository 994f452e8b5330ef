# Gateway configs of the benchmark, sourced by bench.sh and instructions.sh: the callgrind counts measure the
# very configurations the benchmark runs. Each function prints one YAML file; addresses are host:port.

# server_yaml NAME WORK ACCESS_LOG [THREADS]: one thread (like nginx's one worker) unless THREADS says, the
# pid file and upgrade socket WORK/NAME.pid and WORK/NAME.sock, the access log ("off" or a file).
server_yaml() {
  cat <<YAML
server:
  threads: ${4:-1}
  pid_file: $2/$1.pid
  upgrade_sock: $2/$1.sock
  access_log: { target: "$3" }
YAML
}

# gateway_yaml NAME WORK HTTP TLS ORIGIN LLM LLM20 STREAM [THREADS] [START]: the process that serves
# edge-http, edge-tls and the AI scenarios, access log off (as nginx's): plain HTTP on HTTP, TLS on TLS
# (WORK/cert.pem, WORK/key.pem), everything but /v1 proxied to ORIGIN; models bench, bench20, bench-stream
# and bench-start on the mock LLMs at LLM, LLM20, STREAM and START (default 127.0.0.1:19103).
gateway_yaml() {
  server_yaml "$1" "$2" off "${9:-1}"
  cat <<YAML
listeners:
  - { name: edge, address: "$3" }
  - name: tls
    address: "$4"
    tls: { certificates: [{ cert: "$2/cert.pem", key: "$2/key.pem", default: true }] }
clusters:
  - name: origin
    backends: [{ address: "$5" }]
ai:
  providers:
    - { name: llm, type: openai, base_url: "http://$6/v1" }
    - { name: llm20, type: openai, base_url: "http://$7/v1" }
    - { name: stream, type: openai, base_url: "http://$8/v1" }
    - { name: start, type: openai, base_url: "http://${10:-127.0.0.1:19103}/v1" }
  models:
    - { name: bench, provider: llm }
    - { name: bench20, provider: llm20 }
    - { name: bench-stream, provider: stream }
    - { name: bench-start, provider: start }
  profiles:
    default: [bench]
routes:
  - name: ai
    match: { path: { prefix: /v1 } }
    ai: {}
  - name: edge
    proxy: { cluster: origin }
YAML
}

# edge_secured_yaml LISTENER WORK LISTEN ORIGIN: what edge-full and its steps share: TLS on LISTEN
# (WORK/cert.pem, WORK/key.pem), the consumer whose API key is $BENCH_API_KEY, a rate limit never reached
# (`high`), and the cluster `origin` at ORIGIN. The caller adds the routes.
edge_secured_yaml() {
  cat <<YAML
listeners:
  - name: $1
    address: "$3"
    tls: { certificates: [{ cert: "$2/cert.pem", key: "$2/key.pem", default: true }] }
consumers:
  - name: bench
    api_keys: [{ env: BENCH_API_KEY }]
limits:
  - { name: high, rate: 1000000/second, burst: 100000, key: consumer }
clusters:
  - name: origin
    backends: [{ address: "$4" }]
YAML
}

# edge_full_yaml NAME WORK LISTEN ORIGIN [THREADS]: edge-full: the API key checked, the rate limit taken,
# and a JSON access log to WORK/NAME-access.log; every request proxied to ORIGIN.
edge_full_yaml() {
  server_yaml "$1" "$2" "$2/$1-access.log" "${5:-1}"
  edge_secured_yaml full "$2" "$3" "$4"
  cat <<YAML
routes:
  - name: full
    auth: { methods: [api_key] }
    limits: [high]
    proxy: { cluster: origin }
YAML
}

# edge_steps_yaml NAME WORK LISTEN ORIGIN: edge-full taken apart, access log off: /key checks the API key;
# /limit checks it and takes a token of the rate limit; anything else is TLS only. Every request proxied
# to ORIGIN.
edge_steps_yaml() {
  server_yaml "$1" "$2" off
  edge_secured_yaml steps "$2" "$3" "$4"
  cat <<YAML
routes:
  - name: key
    match: { path: { prefix: /key } }
    auth: { methods: [api_key] }
    proxy: { cluster: origin }
  - name: limit
    match: { path: { prefix: /limit } }
    auth: { methods: [api_key] }
    limits: [high]
    proxy: { cluster: origin }
  - name: tls
    proxy: { cluster: origin }
YAML
}
