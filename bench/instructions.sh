#!/usr/bin/env bash
# Instructions per request under valgrind's callgrind: a figure that does not depend on machine noise.
# Counts gpt-api (usage recording on, and off with usage.enabled: false), a bare Pingora proxy (bench/floor.rs, the
# floor under gpt-api) and nginx, each proxying N and 3N sequential requests (BENCH_BODY) to bench-backend; the
# difference divided by 2N is the cost of one request, start-up excluded.
#
# Usage: bench/instructions.sh     (after bench/run.sh has built the release binaries; needs valgrind, nginx, python3)
# Env:   BENCH_N=300                requests of the short run (the long one sends 3N)
#        BENCH_TARGETS="nginx floor gpt_api_off gpt_api_on"   what to count (also floor_shaped: the floor asking
#                                   of Pingora what gpt-api must, see bench/floor.rs)
#        BENCH_BODY='{"model":"fast",...}'   the request (model fast; "stream":true for 20 SSE events)
#        BENCH_PRICE=1                      give model fast a price (pricing.models): every request is priced
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
N=${BENCH_N:-300}
[[ $N =~ ^[0-9]+$ ]] && (( N >= 10 && N <= 100000 )) || { echo "BENCH_N must be 10..100000" >&2; exit 1; }
for tool in valgrind nginx curl python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install valgrind nginx curl)" >&2; exit 1; }
done
GPT_API=$ROOT/target/release/gpt-api
BACKEND=$ROOT/target/release/examples/bench-backend
FLOOR=$ROOT/target/release/examples/bench-floor
[[ -x $GPT_API && -x $BACKEND && -x $FLOOR ]] || {
    echo "build first: cargo build --release --bin gpt-api --example bench-backend --example bench-floor" >&2; exit 1; }

TMP=$(mktemp -d -t gpt-api-instr.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BODY=${BENCH_BODY:-'{"model":"fast","messages":[{"role":"user","content":"Hello! Say something short."}]}'}
# A fixed number of sequential requests over one kept-alive connection.
send() { # url-port, count
    python3 - "$1" "$2" "$BODY" <<'PY'
import http.client, sys
port, count, body = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
for _ in range(count):
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.read()
    if resp.status != 200:
        sys.exit(f"status {resp.status}")
PY
}

"$BACKEND" --listen 127.0.0.1:0 >"$TMP/backend.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do BPORT=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$TMP/backend.log"); [[ -n $BPORT ]] && break; sleep 0.1; done
[[ -n ${BPORT:-} ]] || { echo "backend did not start" >&2; exit 1; }

wait_up() { for _ in $(seq 600); do curl -fsS -m 2 -o /dev/null -H 'Content-Type: application/json' -d "$BODY" "$1" 2>/dev/null && return 0; sleep 0.1; done; echo "$1 did not answer" >&2; exit 1; }

# Total instructions of one process run under callgrind that served COUNT requests (plus start-up).
measure() {
    local name=$1 count=$2; shift 2
    local p; p=$(port)
    local out="$TMP/$name-$count.cg"
    "$@" "$p" "$out" &
    local pid=$!
    wait_up "http://127.0.0.1:$p/v1/chat/completions"
    send "$p" "$count"
    kill -INT "$pid" 2>/dev/null || true
    # nginx under valgrind exits on SIGINT via its master; give callgrind time to write its file.
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    awk '/^summary:/ { s = $2 } /^totals:/ { t = $2 } END { print (s ? s : t) }' "$out"
}

run_gpt_api() { # $1 usage on|off, then port, outfile
    local usage=$1 p=$2 out=$3
    local cfg="$TMP/gw-$usage.yaml"
    printf 'openai_clients:\n  - {name: bench, base_url: "http://127.0.0.1:%s/v1", model_match: {type: exact, value: [fast]}}\n' "$BPORT" >"$cfg"
    [[ $usage == on ]] && printf 'usage: {dir: "%s/db"}\n' "$TMP" >>"$cfg"
    [[ $usage == off ]] && printf 'usage: {enabled: false}\n' >>"$cfg"
    # BENCH_PRICE=1: model fast has a price (pricing.models), so every request is priced; else it has none.
    [[ ${BENCH_PRICE:-} == 1 ]] && printf 'pricing: {models: {fast: {input: 1, output: 2}}}\n' >>"$cfg"
    printf -- '---\nversion: 1\nthreads: 1\nwork_stealing: false\ngrace_period_seconds: 0\ngraceful_shutdown_timeout_seconds: 1\npid_file: %s/pid\nupgrade_sock: %s/sock\n' "$TMP" "$TMP" >"$TMP/server.yaml"
    RUST_LOG=warn exec valgrind --tool=callgrind --trace-children=no --callgrind-out-file="$out" \
        "$GPT_API" --config "$cfg" -c "$TMP/server.yaml" --listen "127.0.0.1:$p" 2>"$TMP/gw.log"
}
run_gpt_api_on() { run_gpt_api on "$@"; }
run_gpt_api_off() { run_gpt_api off "$@"; }

run_floor() { # port, outfile, bench-floor's options
    exec valgrind --tool=callgrind --callgrind-out-file="$2" "$FLOOR" "127.0.0.1:$1" "127.0.0.1:$BPORT" "${@:3}" \
        2>"$TMP/floor.log"
}

# The floor doing what gpt-api must ask of Pingora for its promises (deadlines, the body read before routing, the
# backend's headers, request ids), and nothing of its own: see bench/floor.rs.
run_floor_shaped() { run_floor "$1" "$2" --shaped; }

run_nginx() { # port, outfile
    local p=$1 out=$2
    local prefix="$TMP/nginx-$p"
    mkdir -p "$prefix/logs"
    cat >"$prefix/nginx.conf" <<CONF
daemon off; master_process off; worker_processes 1; error_log $prefix/logs/error.log; pid $prefix/nginx.pid;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path $prefix; proxy_temp_path $prefix;
  upstream b { server 127.0.0.1:$BPORT; keepalive 64; }
  server { listen 127.0.0.1:$p; location / { proxy_pass http://b; proxy_http_version 1.1;
    proxy_set_header Connection ""; proxy_buffering off; } } }
CONF
    exec valgrind --tool=callgrind --callgrind-out-file="$out" nginx -p "$prefix" -c "$prefix/nginx.conf" 2>"$TMP/nginx.log"
}

# Instructions of gpt-api's usage writer thread in a callgrind file: its entry point's inclusive cost (0 if absent).
writer_instructions() {
    callgrind_annotate --inclusive=yes --threshold=100 "$1" 2>/dev/null |
        awk '/UsageWriterService as pingora_core::services::background::BackgroundService>::start/ {
                 gsub(",", "", $1); if ($1 + 0 > n) n = $1 + 0 } END { print n + 0 }'
}

echo "| target | instructions per request | of which the usage writer's thread |"
echo "|---|--:|--:|"
for target in ${BENCH_TARGETS:-nginx floor gpt_api_off gpt_api_on}; do
    [[ $(type -t "run_$target") == function ]] || { echo "unknown target $target" >&2; exit 1; }
    short=$(measure "$target" "$N" "run_$target")
    long=$(measure "$target" $((3 * N)) "run_$target")
    writer=-
    if [[ $target == gpt_api_on ]]; then
        writer=$(( ($(writer_instructions "$TMP/$target-$((3 * N)).cg") - $(writer_instructions "$TMP/$target-$N.cg")) / (2 * N) ))
    fi
    echo "| $target | $(( (long - short) / (2 * N) )) | $writer |"
done
