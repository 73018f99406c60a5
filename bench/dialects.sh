#!/usr/bin/env bash
# Time to the first event of a translated stream (#18): an Anthropic Messages caller (`POST /v1/messages`) in
# front of a chat-completions backend, the gateway translating each chat chunk into Messages events as it
# arrives. bench-ttfe times the first complete SSE event of N sequential streaming requests over one
# kept-alive connection, against bench-backend directly (chat), through gpt-api as chat (no translation) and
# through gpt-api as Messages (translated); the three alternate for BENCH_ROUNDS rounds and the medians of
# their p50s are compared. The target: the translated first event reaches the caller no later than 1 ms
# after the backend's (the direct p50).
#
# Usage: bench/dialects.sh       (needs curl, taskset, ss)
# Env:   BENCH_ROUNDS=5 BENCH_TTFE_REQUESTS=300
#        BENCH_PROXY_CPU=0 BENCH_LOAD_CPU=1   cores for gpt-api / bench-ttfe and the backend
#        BENCH_NO_BUILD=1        use the binaries already in target/release
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${BENCH_ROUNDS:-5}
N=${BENCH_TTFE_REQUESTS:-300}
PROXY_CPU=${BENCH_PROXY_CPU:-0}
LOAD_CPU=${BENCH_LOAD_CPU:-1}
for v in ROUNDS N PROXY_CPU LOAD_CPU; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "bench: $v must be a whole number" >&2; exit 1; }
done
(( ROUNDS >= 1 && ROUNDS <= 20 && N >= 10 && N <= 100000 )) \
    || { echo "bench: BENCH_ROUNDS 1..20, BENCH_TTFE_REQUESTS 10..100000" >&2; exit 1; }
die() { echo "bench: $*" >&2; exit 1; }
log() { echo "bench: $*" >&2; }
for tool in curl taskset ss; do
    command -v "$tool" >/dev/null || die "missing $tool (apt-get install -y curl util-linux iproute2)"
done

cd "$ROOT"
if [[ -z ${BENCH_NO_BUILD:-} ]]; then
    log "building (release): gpt-api, bench-backend, bench-ttfe"
    cargo build --release --quiet --bin gpt-api --example bench-backend --example bench-ttfe \
        || die "cargo build --release failed"
fi
GPT_API=$ROOT/target/release/gpt-api
BACKEND_BIN=$ROOT/target/release/examples/bench-backend
TTFE_BIN=$ROOT/target/release/examples/bench-ttfe
for bin in "$GPT_API" "$BACKEND_BIN" "$TTFE_BIN"; do
    [[ -x $bin ]] || die "$bin not built (run without BENCH_NO_BUILD)"
done

TMP=$(mktemp -d -t gpt-api-bench-dialects.XXXXXX)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail_with_log() { echo "bench: $1" >&2; tail -n 20 "$2" >&2 || true; exit 1; }

taskset -c "$LOAD_CPU" "$BACKEND_BIN" --listen 127.0.0.1:0 >"$TMP/backend.log" 2>&1 &
PIDS+=($!)
BACKEND_PORT=
for _ in $(seq 1 100); do
    BACKEND_PORT=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$TMP/backend.log")
    [[ -n $BACKEND_PORT ]] && break
    sleep 0.1
done
[[ -n $BACKEND_PORT ]] || fail_with_log "bench-backend did not report its port" "$TMP/backend.log"

PORT=
for _ in $(seq 1 200); do
    PORT=$((20000 + RANDOM % 40000))
    [[ -z $(ss -Htln "sport = :$PORT") && $PORT != "$BACKEND_PORT" ]] && break
done
cat >"$TMP/config.yaml" <<EOF
openai_clients:
  - name: bench
    base_url: "http://127.0.0.1:$BACKEND_PORT/v1"
    api_key: sk-backend
    model_match: { type: exact, value: [fast] }
usage:
  dir: $TMP/records
EOF
printf -- '---\nversion: 1\nthreads: 1\nwork_stealing: false\npid_file: %s/pid\nupgrade_sock: %s/sock\n' \
    "$TMP" "$TMP" >"$TMP/server.yaml"
RUST_LOG=warn taskset -c "$PROXY_CPU" "$GPT_API" --config "$TMP/config.yaml" --listen "127.0.0.1:$PORT" \
    -c "$TMP/server.yaml" >"$TMP/gpt-api.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do
    curl -fsS -m 1 -o /dev/null -H 'Content-Type: application/json' \
        -d '{"model":"fast","messages":[{"role":"user","content":"hi"}]}' \
        "http://127.0.0.1:$PORT/v1/chat/completions" 2>/dev/null && break
    sleep 0.1
done

declare -A ADDR=([direct]=127.0.0.1:$BACKEND_PORT [chat]=127.0.0.1:$PORT [messages]=127.0.0.1:$PORT)
declare -A URL=([direct]=/v1/chat/completions [chat]=/v1/chat/completions [messages]=/v1/messages)
declare -A V=()
for round in $(seq 1 "$ROUNDS"); do
    for t in direct chat messages; do
        out=$TMP/ttfe-$t-$round.txt
        timeout 300 taskset -c "$LOAD_CPU" "$TTFE_BIN" --addr "${ADDR[$t]}" --path "${URL[$t]}" --model fast \
            -n "$N" >"$out" 2>&1 || true
        line=$(grep '^ttfe ' "$out" || true)
        [[ -n $line ]] || fail_with_log "bench-ttfe failed against $t" "$out"
        p50=$(sed -n 's/.* p50_ms=\([0-9.]*\).*/\1/p' <<<"$line")
        p99=$(sed -n 's/.* p99_ms=\([0-9.]*\).*/\1/p' <<<"$line")
        V[$t,p50]+=" $p50" V[$t,p99]+=" $p99"
        log "round $round $t: first event p50 $p50 ms p99 $p99 ms"
    done
done

median() { printf '%s\n' $1 | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
m() { median "${V[$1]}"; }
echo
echo "Time to the first SSE event, $ROUNDS rounds x $N streams (medians of each round's p50 / p99), release build,"
echo "gpt-api on core $PROXY_CPU (1 thread, recording on), bench-backend and bench-ttfe on core $LOAD_CPU, $(uptime | sed 's/.*load/load/'):"
echo
echo "| path | p50 ms | p99 ms |"
echo "| --- | ---: | ---: |"
for t in direct chat messages; do
    printf '| %s | %s | %s |\n' "$t" "$(m "$t,p50")" "$(m "$t,p99")"
done
echo
awk -v a="$(m messages,p50)" -v b="$(m direct,p50)" -v c="$(m chat,p50)" 'BEGIN {
    printf "translated first event after the backend'"'"'s (messages - direct, p50): %.3f ms (target <= 1 ms)\n", a - b
    printf "of which translation (messages - chat through the gateway, p50): %.3f ms\n", a - c }'
