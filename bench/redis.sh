#!/usr/bin/env bash
# What sharing limits through Redis costs (#17): gpt-api with a key limited by rpm and tpm, its windows in this
# process's memory against the same in a redis-server on loopback (`cluster.redis_url`), in front of
# bench-backend answering in 0 ms. One connection gives the added latency (p50, p99), BENCH_CONNECTIONS the
# throughput; the gateways alternate for BENCH_ROUNDS rounds and the medians are compared. Three gateways: in
# memory, Redis (the key admitted mostly from grants), and Redis with one call per request (`redis-each`: the same
# key with a max_concurrent, which grants never serve). None records usage (usage.enabled: false), so the
# difference is the limit store alone.
#
# Usage: bench/redis.sh          (after or without bench/run.sh; needs wrk, curl, taskset, redis-server)
# Env:   BENCH_SECONDS=5 BENCH_ROUNDS=3 BENCH_CONNECTIONS=64
#        BENCH_PROXY_CPU=0 BENCH_LOAD_CPU=1   cores (taskset lists, e.g. 0 or 0,1) for gpt-api (its Redis thread
#                                too) / wrk and the backend; BENCH_REDIS_CPU (default: BENCH_LOAD_CPU) for redis-server
#        BENCH_NO_BUILD=1        use the binaries already in target/release
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SECS=${BENCH_SECONDS:-5}
ROUNDS=${BENCH_ROUNDS:-3}
CONNS=${BENCH_CONNECTIONS:-64}
PROXY_CPU=${BENCH_PROXY_CPU:-0}
LOAD_CPU=${BENCH_LOAD_CPU:-1}
REDIS_CPU=${BENCH_REDIS_CPU:-$LOAD_CPU}
for v in SECS ROUNDS CONNS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "bench: $v must be a whole number" >&2; exit 1; }
done
for v in PROXY_CPU LOAD_CPU REDIS_CPU; do
    [[ ${!v} =~ ^[0-9]{1,3}(,[0-9]{1,3}){0,63}$ ]] || { echo "bench: $v must be a list of cores (0 or 0,1)" >&2; exit 1; }
done
(( SECS >= 1 && SECS <= 60 && ROUNDS >= 1 && ROUNDS <= 20 && CONNS >= 1 && CONNS <= 1000 )) \
    || { echo "bench: BENCH_SECONDS 1..60, BENCH_ROUNDS 1..20, BENCH_CONNECTIONS 1..1000" >&2; exit 1; }
die() { echo "bench: $*" >&2; exit 1; }
log() { echo "bench: $*" >&2; }
for tool in wrk curl taskset redis-server redis-cli redis-benchmark ss; do
    command -v "$tool" >/dev/null || die "missing $tool (apt-get install -y wrk curl redis-server iproute2)"
done

cd "$ROOT"
if [[ -z ${BENCH_NO_BUILD:-} ]]; then
    log "building (release): gpt-api, bench-backend"
    cargo build --release --quiet --bin gpt-api --example bench-backend || die "cargo build --release failed"
fi
GPT_API=$ROOT/target/release/gpt-api
BACKEND_BIN=$ROOT/target/release/examples/bench-backend
[[ -x $GPT_API && -x $BACKEND_BIN ]] || die "build first (run without BENCH_NO_BUILD)"

TMP=$(mktemp -d -t gpt-api-bench-redis.XXXXXX)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

USED=" "
free_port() {
    local p
    for _ in $(seq 1 200); do
        p=$((20000 + RANDOM % 40000))
        [[ $USED == *" $p "* || -n $(ss -Htln "sport = :$p") ]] && continue
        USED+="$p "
        echo "$p"
        return 0
    done
    die "no free port"
}
fail_with_log() { echo "bench: $1" >&2; tail -n 20 "$2" >&2 || true; exit 1; }

KEY=sk-bench-0123456789
BODY='{"model":"fast","messages":[{"role":"user","content":"Hello! Say something short."}]}'
wait_ready() {
    local name=$1 pid=$2 url=$3 logfile=$4
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || fail_with_log "$name exited while starting" "$logfile"
        curl -fsS -m 1 -o /dev/null -H 'Content-Type: application/json' -H "Authorization: Bearer $KEY" \
            -d "$BODY" "$url" 2>/dev/null && return 0
        sleep 0.1
    done
    fail_with_log "$name does not answer $url" "$logfile"
}

REDIS_PORT=$(free_port)
taskset -c "$REDIS_CPU" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$TMP" >"$TMP/redis.log" 2>&1 &
PIDS+=($!)
REDIS_PID=$!
for _ in $(seq 1 100); do [[ $(redis-cli -p "$REDIS_PORT" PING 2>/dev/null) == PONG ]] && break; sleep 0.05; done
[[ $(redis-cli -p "$REDIS_PORT" PING) == PONG ]] || fail_with_log "redis-server did not start" "$TMP/redis.log"

taskset -c "$LOAD_CPU" "$BACKEND_BIN" --listen 127.0.0.1:0 >"$TMP/backend.log" 2>&1 &
PIDS+=($!)
BACKEND_PORT=
for _ in $(seq 1 100); do
    BACKEND_PORT=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$TMP/backend.log")
    [[ -n $BACKEND_PORT ]] && break
    sleep 0.1
done
[[ -n $BACKEND_PORT ]] || fail_with_log "bench-backend did not report its port" "$TMP/backend.log"

# One gpt-api on the proxy's core (one worker thread); `cluster` is the extra config section, `extra` more limits
# of the key. Sets STARTED_PID.
start_gpt_api() {
    local name=$1 port=$2 cluster=$3 extra=${4:-} dir=$TMP/$1
    mkdir -p "$dir"
    cat >"$dir/config.yaml" <<EOF
openai_clients:
  - name: bench
    base_url: "http://127.0.0.1:$BACKEND_PORT/v1"
    api_key: sk-backend
    model_match: { type: exact, value: [fast] }
auth:
  keys:
    - { name: bench, key: $KEY, rpm: 1000000000, tpm: 1000000000000$extra }
usage:
  enabled: false
$cluster
EOF
    # No grace period: a stopped gateway exits at once (Pingora's default waits minutes).
    printf -- '---\nversion: 1\nthreads: 1\nwork_stealing: false\ngrace_period_seconds: 0\ngraceful_shutdown_timeout_seconds: 1\npid_file: %s/pid\nupgrade_sock: %s/sock\n' \
        "$dir" "$dir" >"$dir/server.yaml"
    RUST_LOG=warn taskset -c "$PROXY_CPU" "$GPT_API" --config "$dir/config.yaml" --listen "127.0.0.1:$port" \
        -c "$dir/server.yaml" >"$dir/gpt-api.log" 2>&1 &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    wait_ready "$name" "$STARTED_PID" "http://127.0.0.1:$port/v1/chat/completions" "$dir/gpt-api.log"
}
MEM_PORT=$(free_port)
start_gpt_api memory "$MEM_PORT" ""
MEM_PID=$STARTED_PID
RED_PORT=$(free_port)
start_gpt_api redis "$RED_PORT" "cluster: { redis_url: \"redis://127.0.0.1:$REDIS_PORT\" }"
RED_PID=$STARTED_PID
# The same key with a max_concurrent (too high to refuse): each request is its own admission in Redis (slots are
# named by request), no grants; the cost of one round trip per request.
EACH_PORT=$(free_port)
start_gpt_api redis-each "$EACH_PORT" "cluster: { redis_url: \"redis://127.0.0.1:$REDIS_PORT\" }" ", max_concurrent: 1000000"
EACH_PID=$STARTED_PID
STORES="memory redis redis-each"
declare -A PORT=([memory]=$MEM_PORT [redis]=$RED_PORT [redis-each]=$EACH_PORT) \
    PID=([memory]=$MEM_PID [redis]=$RED_PID [redis-each]=$EACH_PID)

cat >"$TMP/chat.lua" <<EOF
wrk.method = "POST"
wrk.body = '$BODY'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $KEY"
EOF
HZ=$(getconf CLK_TCK)
ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
# wrk's output -> "requests rps p50_ms p99_ms non2xx"
wrk_parse() {
    awk 'function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return -1 }
        /^ +50% / { p50 = ms($2) } /^ +99% / { p99 = ms($2) } / requests in / { n = $1 }
        /^Requests\/sec:/ { r = $2 } /Non-2xx/ { e = $NF }
        END { if (n == "" || r == "") exit 1; printf "%d %s %.3f %.3f %d\n", n, r, p50, p99, e }' "$1"
}
declare -A V=()
run() {
    local t=$1 conns=$2 round=$3 out=$TMP/wrk-$1-c$2-$3.txt before after redis_before redis_after
    before=$(ticks "${PID[$t]}") redis_before=$(ticks "$REDIS_PID")
    timeout $((SECS + 30)) taskset -c "$LOAD_CPU" wrk -t1 -c"$conns" -d"${SECS}s" --latency --timeout 5s \
        -s "$TMP/chat.lua" "http://127.0.0.1:${PORT[$t]}/v1/chat/completions" >"$out" 2>&1 \
        || fail_with_log "wrk failed against $t" "$out"
    after=$(ticks "${PID[$t]}") redis_after=$(ticks "$REDIS_PID")
    read -r n rps p50 p99 errs < <(wrk_parse "$out") || fail_with_log "cannot read wrk's output" "$out"
    ((errs == 0)) || fail_with_log "$t answered $errs non-2xx" "$out"
    V[$t,$conns,rps]+=" $rps" V[$t,$conns,p50]+=" $p50" V[$t,$conns,p99]+=" $p99"
    V[$t,$conns,cpu]+=" $(awk -v d=$((after - before)) -v hz="$HZ" -v n="$n" 'BEGIN { printf "%.1f", d * 1e6 / hz / n }')"
    V[$t,$conns,rcpu]+=" $(awk -v d=$((redis_after - redis_before)) -v hz="$HZ" -v n="$n" 'BEGIN { printf "%.1f", d * 1e6 / hz / n }')"
    log "round $round $t c$conns: $rps req/s p50 $p50 ms p99 $p99 ms"
}
for t in $STORES; do  # warm-up
    timeout 40 taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d1s -s "$TMP/chat.lua" \
        "http://127.0.0.1:${PORT[$t]}/v1/chat/completions" >/dev/null 2>&1 || true
done
# The floor under the p50 Redis adds: one PING round trip from the proxy's core, a client that waits for each.
ping_p50() {
    timeout 60 taskset -c "$PROXY_CPU" redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -c 1 -n 20000 -t ping --csv \
        2>/dev/null | awk -F'"' '/PING_MBULK/ { print $10 }'
}
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for round in $(seq 1 "$ROUNDS"); do
    for conns in 1 "$CONNS"; do
        for t in $STORES; do run "$t" "$conns" "$round"; done
    done
    V[ping]+=" $(ping_p50)"
done
grep -q 'unavailable' "$TMP/redis/gpt-api.log" "$TMP/redis-each/gpt-api.log" \
    && log "warning: Redis was marked down during the run"

median() { printf '%s\n' $1 | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
m() { median "${V[$1]}"; }
echo
echo "Redis limit store, $ROUNDS rounds x ${SECS} s per case (medians), 0 ms backend, key with rpm + tpm;"
echo "cores: gpt-api $PROXY_CPU, wrk and backend $LOAD_CPU, redis-server $REDIS_CPU; load average" \
    "$LOAD_BEFORE before, $(cut -d' ' -f1-3 /proc/loadavg) after:"
echo
echo "| store | conns | req/s | p50 ms | p99 ms | CPU µs/req | Redis CPU µs/req |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
for conns in 1 "$CONNS"; do
    for t in $STORES; do
        printf '| %s | %s | %.0f | %s | %s | %s | %s |\n' "$t" "$conns" "$(m "$t,$conns,rps")" "$(m "$t,$conns,p50")" \
            "$(m "$t,$conns,p99")" "$(m "$t,$conns,cpu")" "$(m "$t,$conns,rcpu")"
    done
done
echo
for t in redis redis-each; do
    awk -v a="$(m "$t,1,p50")" -v b="$(m "memory,1,p50")" -v t="$t" \
        'BEGIN { printf "p50 added by Redis (%s, 1 conn): %.3f ms\n", t, a - b }'
done
echo "one PING round trip (redis-benchmark, 1 client, from the proxy's core): p50 $(m ping) ms"
for t in redis redis-each; do
    awk -v a="$(m "$t,$CONNS,rps")" -v b="$(m "memory,$CONNS,rps")" -v t="$t" -v c="$CONNS" \
        'BEGIN { printf "throughput with Redis (%s) / in memory (%s conns): %.3f\n", t, c, a / b }'
done
stats=$(redis-cli -p "$REDIS_PORT" INFO commandstats | tr -d '\r' | sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\),usec=[0-9]*,usec_per_call=\([0-9.]*\).*/\1 \2/p')
echo "redis-server: ${stats% *} EVALSHA calls (admissions and updates), ${stats#* } µs each on its core;" \
    "times marked down during the run: $(cat "$TMP"/redis*/gpt-api.log | grep -c unavailable || true)"
