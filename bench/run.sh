#!/usr/bin/env bash
# Benchmark: gpt-api against nginx (plain keep-alive reverse proxy) and against no proxy at all, in front of a fake
# OpenAI backend answering in 0 ms and 20 ms. Also measured: gpt-api with usage recording off, and a bare Pingora
# proxy (bench/floor.rs: the floor any Pingora-based gateway stands on).
# Prints a markdown table and saves it to bench/out/results-<date>.md.
#
# Usage: bench/run.sh            (from anywhere; needs 2+ cores, nginx, wrk, curl, taskset; sqlite3 for usage rows)
# Env:   BENCH_SECONDS=5         length of each measured wrk run
#        BENCH_WARMUP_SECONDS=1  wrk warm-up per target before measuring
#        BENCH_TTFE_REQUESTS=200 streaming requests per target for the time to first SSE event
#        BENCH_CONNECTIONS=64    connections of the throughput runs
#        BENCH_REC_ROUNDS=5      alternating runs of gpt-api with recording on and off (0 ms backend, small and
#                                streamed answers), for their ratios
#        BENCH_PROXY_CPU=0 BENCH_LOAD_CPU=1   cores for the proxy under test / for wrk, ttfe and the backend
#        BENCH_WRITER_CPU=       core of gpt-api's usage-writer thread (default: the proxy's, BENCH_PROXY_CPU);
#                                elsewhere it runs at SCHED_IDLE, on that core's spare time
#        BENCH_GPT_API_LOG=warn  RUST_LOG for gpt-api (warn: no per-request log line, like nginx's access_log off)
#        BENCH_NO_BUILD=1        use the binaries already in target/release
#        BENCH_KEEP_TMP=1        keep the temp dir (configs, logs, raw wrk output)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SECS=${BENCH_SECONDS:-5}
WARMUP=${BENCH_WARMUP_SECONDS:-1}
TTFE_N=${BENCH_TTFE_REQUESTS:-200}
REC_ROUNDS=${BENCH_REC_ROUNDS:-5}
CONNS=${BENCH_CONNECTIONS:-64}
PROXY_CPU=${BENCH_PROXY_CPU:-0}
LOAD_CPU=${BENCH_LOAD_CPU:-1}
GPT_API_LOG=${BENCH_GPT_API_LOG:-warn}
SLOW_MS=20

die() { echo "bench: $*" >&2; exit 1; }
log() { echo "bench: $*" >&2; }

WRITER_CPU=${BENCH_WRITER_CPU:-$PROXY_CPU}
for v in SECS WARMUP TTFE_N CONNS PROXY_CPU LOAD_CPU WRITER_CPU REC_ROUNDS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, got '${!v}'"
done
(( SECS >= 1 && SECS <= 60 )) || die "BENCH_SECONDS must be 1..60 (the whole run stays bounded)"
(( WARMUP <= 10 )) || die "BENCH_WARMUP_SECONDS must be 0..10"
(( TTFE_N >= 1 && TTFE_N <= 10000 )) || die "BENCH_TTFE_REQUESTS must be 1..10000"
(( CONNS >= 1 && CONNS <= 1000 )) || die "BENCH_CONNECTIONS must be 1..1000"
(( REC_ROUNDS <= 20 )) || die "BENCH_REC_ROUNDS must be 0..20"

# ---------------------------------------------------------------- tools

missing=()
for tool in nginx wrk curl taskset chrt sqlite3 ss; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        log "installing nginx wrk sqlite3 curl (missing: ${missing[*]})"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk sqlite3 curl util-linux iproute2 >/dev/null
    else
        die "missing tools: ${missing[*]} (as root on Debian: apt-get install -y nginx wrk sqlite3 curl)"
    fi
fi
NGINX=$(command -v nginx)

CORES=$(nproc)
(( PROXY_CPU < CORES && LOAD_CPU < CORES && WRITER_CPU < CORES )) || die "cores $PROXY_CPU/$LOAD_CPU not available (nproc=$CORES)"
if (( PROXY_CPU == LOAD_CPU )); then
    log "warning: proxy and load generator share core $PROXY_CPU; figures will mix both"
fi

# ---------------------------------------------------------------- build

cd "$ROOT"
if [[ -z ${BENCH_NO_BUILD:-} ]]; then
    log "building (release): gpt-api, bench-backend, bench-ttfe, bench-floor"
    cargo build --release --quiet --bin gpt-api --example bench-backend --example bench-ttfe --example bench-floor \
        || die "cargo build --release failed"
fi
GPT_API=$ROOT/target/release/gpt-api
BACKEND_BIN=$ROOT/target/release/examples/bench-backend
TTFE_BIN=$ROOT/target/release/examples/bench-ttfe
FLOOR_BIN=$ROOT/target/release/examples/bench-floor
for bin in "$GPT_API" "$BACKEND_BIN" "$TTFE_BIN" "$FLOOR_BIN"; do
    [[ -x $bin ]] || die "$bin not built (run without BENCH_NO_BUILD)"
done

# ---------------------------------------------------------------- processes and cleanup

TMP=$(mktemp -d -t gpt-api-bench.XXXXXX)
PIDS=()

cleanup() {
    local pid i
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for i in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [[ -n ${BENCH_KEEP_TMP:-} ]]; then
        log "kept $TMP"
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Shows the end of a server's log and stops.
fail_with_log() {
    local what=$1 logfile=$2
    echo "bench: $what" >&2
    [[ -f $logfile ]] && { echo "--- last lines of $logfile:" >&2; tail -n 20 "$logfile" >&2; }
    exit 1
}

USED_PORTS=" "
# A TCP port nothing listens on (nor handed out by this script before).
free_port() {
    local i p
    for i in $(seq 1 200); do
        p=$((20000 + RANDOM % 40000))
        [[ $USED_PORTS == *" $p "* ]] && continue
        if [[ -z $(ss -Htln "sport = :$p") ]]; then
            USED_PORTS+="$p "
            echo "$p"
            return 0
        fi
    done
    die "no free port found"
}

CHAT_BODY='{"model":"%s","messages":[{"role":"user","content":"Hello! Say something short."}]}'

# Waits (up to 10 s) until URL answers a chat completion for model fast with 200; the process must stay alive.
wait_ready() {
    local name=$1 pid=$2 url=$3 logfile=$4 i
    for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || fail_with_log "$name exited while starting" "$logfile"
        # shellcheck disable=SC2059
        if curl -fsS -m 1 -o /dev/null -H 'Content-Type: application/json' \
            -d "$(printf "$CHAT_BODY" fast)" "$url" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    fail_with_log "$name does not answer $url after 10 s" "$logfile"
}

# utime+stime (clock ticks) of a /proc stat file: a process's, or one thread's (/proc/PID/task/TID/stat).
stat_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "$1"; }

# utime+stime (clock ticks) summed over the given processes.
cpu_ticks() {
    local total=0 pid t
    for pid in "$@"; do
        t=$(stat_ticks "/proc/$pid/stat") || die "process $pid is gone"
        total=$((total + t))
    done
    echo "$total"
}

HZ=$(getconf CLK_TCK)
# CPU µs per request from a number of clock ticks and of requests.
us_per_request() { awk -v d="$1" -v hz="$HZ" -v n="$2" 'BEGIN { printf "%.1f", d * 1e6 / hz / n }'; }

# VmRSS (kB) summed over the given processes.
rss_kb() {
    local total=0 pid r
    for pid in "$@"; do
        r=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status") || die "process $pid is gone"
        total=$((total + r))
    done
    echo "$total"
}

# ---------------------------------------------------------------- backend

log "temp dir $TMP"
taskset -c "$LOAD_CPU" "$BACKEND_BIN" --listen 127.0.0.1:0 --slow-ms "$SLOW_MS" >"$TMP/backend.log" 2>&1 &
BACKEND_PID=$!
PIDS+=("$BACKEND_PID")
BACKEND_PORT=
for i in $(seq 1 100); do
    kill -0 "$BACKEND_PID" 2>/dev/null || fail_with_log "bench-backend exited while starting" "$TMP/backend.log"
    BACKEND_PORT=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$TMP/backend.log")
    [[ -n $BACKEND_PORT ]] && break
    sleep 0.1
done
[[ -n $BACKEND_PORT ]] || fail_with_log "bench-backend did not report its port" "$TMP/backend.log"
USED_PORTS+="$BACKEND_PORT "
DIRECT_URL=http://127.0.0.1:$BACKEND_PORT/v1/chat/completions
wait_ready bench-backend "$BACKEND_PID" "$DIRECT_URL" "$TMP/backend.log"

# ---------------------------------------------------------------- nginx

NGINX_PORT=$(free_port)
mkdir -p "$TMP/nginx/logs"
cat >"$TMP/nginx/nginx.conf" <<EOF
# Plain reverse proxy with a keep-alive upstream: the baseline gpt-api is compared to.
worker_processes 1;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    # Keep client and upstream connections for the whole run (the default closes them every 1000 requests).
    keepalive_requests 1000000;
    client_body_temp_path $TMP/nginx/client_body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    upstream b {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://b;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
EOF
"$NGINX" -t -q -p "$TMP/nginx" -e "$TMP/nginx/logs/error.log" -c "$TMP/nginx/nginx.conf" \
    >"$TMP/nginx/test.log" 2>&1 || fail_with_log "nginx rejects its config" "$TMP/nginx/test.log"
taskset -c "$PROXY_CPU" "$NGINX" -p "$TMP/nginx" -e "$TMP/nginx/logs/error.log" -c "$TMP/nginx/nginx.conf" \
    >"$TMP/nginx/stdout.log" 2>&1 &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
NGINX_URL=http://127.0.0.1:$NGINX_PORT/v1/chat/completions
wait_ready nginx "$NGINX_PID" "$NGINX_URL" "$TMP/nginx/logs/error.log"
# The master and its worker(s): CPU and RSS are summed over them.
NGINX_PIDS=("$NGINX_PID")
for child in $(cat "/proc/$NGINX_PID/task/$NGINX_PID/children" 2>/dev/null || pgrep -P "$NGINX_PID"); do
    NGINX_PIDS+=("$child")
done
((${#NGINX_PIDS[@]} >= 2)) || die "nginx worker process not found"

# ---------------------------------------------------------------- gpt-api

GPT_PORT=$(free_port)
mkdir -p "$TMP/db"
cat >"$TMP/gpt-api.yaml" <<EOF
server:
  listen: "127.0.0.1:$GPT_PORT"
openai_clients:
  - name: "bench"
    base_url: "http://127.0.0.1:$BACKEND_PORT/v1"
    model_match:
      type: "exact"
      value: ["fast", "slow"]
EOF
# Usage recording, when this build of gpt-api knows the usage: section.
cp "$TMP/gpt-api.yaml" "$TMP/gpt-api-usage.yaml"
printf 'usage:\n  dir: "%s"\n' "$TMP/db" >>"$TMP/gpt-api-usage.yaml"
if "$GPT_API" --config "$TMP/gpt-api-usage.yaml" --check >"$TMP/check.log" 2>&1; then
    USAGE=on
    GPT_CONFIG=$TMP/gpt-api-usage.yaml
else
    USAGE=off
    GPT_CONFIG=$TMP/gpt-api.yaml
    "$GPT_API" --config "$GPT_CONFIG" --check >"$TMP/check.log" 2>&1 \
        || fail_with_log "gpt-api rejects the bench config" "$TMP/check.log"
fi
log "usage recording: $USAGE"
# One gpt-api process on the proxy's core: name, config, port, a directory of its own. Sets STARTED_PID.
start_gpt_api() {
    local name=$1 config=$2 port=$3 dir=$4
    mkdir -p "$dir"
    cat >"$dir/server.yaml" <<EOF
---
version: 1
threads: 1
work_stealing: false
pid_file: $dir/gpt-api.pid
upgrade_sock: $dir/gpt-api_upgrade.sock
grace_period_seconds: 0
graceful_shutdown_timeout_seconds: 5
EOF
    RUST_LOG=$GPT_API_LOG taskset -c "$PROXY_CPU" "$GPT_API" --config "$config" --listen "127.0.0.1:$port" \
        -c "$dir/server.yaml" >"$dir/gpt-api.log" 2>&1 &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    wait_ready "$name" "$STARTED_PID" "http://127.0.0.1:$port/v1/chat/completions" "$dir/gpt-api.log"
}

start_gpt_api gpt-api "$GPT_CONFIG" "$GPT_PORT" "$TMP/gpt"
GPT_PID=$STARTED_PID
GPT_URL=http://127.0.0.1:$GPT_PORT/v1/chat/completions
GPT_READY_REQUESTS=1 # wait_ready's request: the usage store should hold it too
# The usage writer is one thread ("BG usage writer"); it shares the proxy's core unless BENCH_WRITER_CPU says otherwise.
WRITER_POLICY=
WRITER_TID=$(grep -l '^BG usage writer$' /proc/"$GPT_PID"/task/*/comm 2>/dev/null | head -n1 | cut -d/ -f5 || true)
if [[ $WRITER_CPU != "$PROXY_CPU" ]]; then
    [[ -n $WRITER_TID ]] || die "gpt-api's usage writer thread not found"
    taskset -pc "$WRITER_CPU" "$WRITER_TID" >/dev/null || die "cannot move the usage writer to core $WRITER_CPU"
    # At idle priority there: it takes that core's spare time and yields it at once when wrk or the backend
    # wake, instead of delaying them for a slice (which would slow the whole closed loop, proxy included).
    chrt --idle -p 0 "$WRITER_TID" || die "cannot set the usage writer's scheduling policy"
    WRITER_POLICY=" (SCHED_IDLE)"
    log "usage writer thread $WRITER_TID on core $WRITER_CPU$WRITER_POLICY"
fi

# The same gateway with recording off (usage.enabled: false): what recording costs.
NOREC_PORT=$(free_port)
cp "$TMP/gpt-api.yaml" "$TMP/gpt-api-norec.yaml"
printf 'usage:\n  enabled: false\n' >>"$TMP/gpt-api-norec.yaml"
start_gpt_api gpt-api-norec "$TMP/gpt-api-norec.yaml" "$NOREC_PORT" "$TMP/norec"
NOREC_PID=$STARTED_PID

# ---------------------------------------------------------------- bare Pingora

FLOOR_PORT=$(free_port)
taskset -c "$PROXY_CPU" "$FLOOR_BIN" "127.0.0.1:$FLOOR_PORT" "127.0.0.1:$BACKEND_PORT" >"$TMP/floor.log" 2>&1 &
FLOOR_PID=$!
PIDS+=("$FLOOR_PID")
wait_ready pingora "$FLOOR_PID" "http://127.0.0.1:$FLOOR_PORT/v1/chat/completions" "$TMP/floor.log"

# ---------------------------------------------------------------- measuring

declare -A R=()  # R[target,model,conns,metric]
TARGETS=(direct nginx pingora gpt-api gpt-api-norec)
declare -A ADDR=([direct]=127.0.0.1:$BACKEND_PORT [nginx]=127.0.0.1:$NGINX_PORT [pingora]=127.0.0.1:$FLOOR_PORT
    [gpt-api]=127.0.0.1:$GPT_PORT [gpt-api-norec]=127.0.0.1:$NOREC_PORT)
declare -A URL=()
for t in "${TARGETS[@]}"; do URL[$t]=http://${ADDR[$t]}/v1/chat/completions; done
declare -A PROC=([direct]="" [nginx]="${NGINX_PIDS[*]}" [pingora]=$FLOOR_PID [gpt-api]=$GPT_PID [gpt-api-norec]=$NOREC_PID)
declare -A LOGF=([direct]=$TMP/backend.log [nginx]=$TMP/nginx/logs/error.log [pingora]=$TMP/floor.log
    [gpt-api]=$TMP/gpt/gpt-api.log [gpt-api-norec]=$TMP/norec/gpt-api.log)

for model in fast slow; do
    # shellcheck disable=SC2059
    body=$(printf "$CHAT_BODY" "$model")
    cat >"$TMP/$model.lua" <<EOF
wrk.method = "POST"
wrk.body = '$body'
wrk.headers["Content-Type"] = "application/json"
EOF
done

for t in "${TARGETS[@]:1}"; do
    # shellcheck disable=SC2086
    R[$t,rss_idle]=$(rss_kb ${PROC[$t]})
done

# Converts a wrk latency ("812.00us", "1.23ms", "2.00s") to ms.
wrk_parse() {
    awk '
        function ms(v) {
            if (v ~ /us$/) return v / 1000
            if (v ~ /ms$/) return v + 0
            if (v ~ /m$/)  return v * 60000
            if (v ~ /s$/)  return v * 1000
            return -1
        }
        /^ +50% / { p50 = ms($2) }
        /^ +99% / { p99 = ms($2) }
        / requests in / { reqs = $1 }
        /^Requests\/sec:/ { rps = $2 }
        /Non-2xx or 3xx responses:/ { errs += $NF }
        /Socket errors:/ { errs += $4 + $6 + $8 + $10 }
        END {
            if (reqs == "" || rps == "" || p50 == "" || p99 == "") exit 1
            printf "%s %s %.3f %.3f %d\n", reqs, rps, p50, p99, errs
        }' "$1"
}

# Runs wrk against one target; records requests/s, p50, p99, errors and the proxy's CPU per request.
measure() {
    local t=$1 model=$2 conns=$3 seconds=$4 out before after
    out=$TMP/wrk-$t-$model-c$conns.txt
    # shellcheck disable=SC2086
    [[ -n ${PROC[$t]} ]] && before=$(cpu_ticks ${PROC[$t]})
    timeout $((seconds + 30)) taskset -c "$LOAD_CPU" wrk -t1 -c"$conns" -d"${seconds}s" --latency --timeout 5s \
        -s "$TMP/$model.lua" "${URL[$t]}" >"$out" 2>&1 || fail_with_log "wrk failed against $t" "$out"
    # shellcheck disable=SC2086
    [[ -n ${PROC[$t]} ]] && after=$(cpu_ticks ${PROC[$t]})
    kill -0 "${PIDS[0]}" 2>/dev/null || fail_with_log "bench-backend died" "$TMP/backend.log"
    [[ $t == direct ]] || kill -0 "${PROC[$t]%% *}" 2>/dev/null || fail_with_log "$t died under load" "${LOGF[$t]}"
    local parsed
    parsed=$(wrk_parse "$out") || fail_with_log "cannot read wrk's output for $t" "$out"
    read -r reqs rps p50 p99 errs <<<"$parsed"
    local k=$t,$model,$conns
    R[$k,reqs]=$reqs R[$k,rps]=$rps R[$k,p50]=$p50 R[$k,p99]=$p99 R[$k,errs]=$errs
    if [[ -n ${PROC[$t]} ]] && ((reqs > 0)); then
        R[$k,cpu]=$(us_per_request $((after - before)) "$reqs")
    else
        R[$k,cpu]=-
    fi
    log "$(printf '%-7s %-4s c%-3s %9s req/s  p50 %7s ms  p99 %7s ms  errors %s  cpu %s us/req' \
        "$t" "$model" "$conns" "$rps" "$p50" "$p99" "$errs" "${R[$k,cpu]}")"
}

if ((WARMUP > 0)); then
    for t in "${TARGETS[@]}"; do
        timeout $((WARMUP + 30)) taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${WARMUP}s" -s "$TMP/fast.lua" \
            "${URL[$t]}" >"$TMP/warmup-$t.txt" 2>&1 || fail_with_log "wrk warm-up failed against $t" "$TMP/warmup-$t.txt"
    done
fi

# Targets interleaved per case, so background load drifting during the run hits all three alike.
for model in fast slow; do
    for conns in 1 "$CONNS"; do
        for t in "${TARGETS[@]}"; do
            measure "$t" "$model" "$conns" "$SECS"
        done
    done
done

# Recording on against off: single runs swing by more than the 5% in question on a shared machine, so the two
# alternate for a few rounds and the medians are compared, for small chat answers (`fast`) and for streamed ones
# (`stream`, 20 SSE events). Besides requests/s, each run's CPU per request is split into the usage writer's
# thread and the rest (the proxy's worker thread): the proxy's share is what recording costs a gateway whose
# writer has CPU of its own, the total what it costs when the writer shares the proxy's only core.
# shellcheck disable=SC2059
cat >"$TMP/stream.lua" <<EOF
wrk.method = "POST"
wrk.body = '$(printf "$CHAT_BODY" fast | sed 's/^{/{"stream":true,/')'
wrk.headers["Content-Type"] = "application/json"
EOF
thread_ticks() { stat_ticks "/proc/$1/task/$2/stat" || die "thread $2 is gone"; }
# Waits (at most 5 s) until process $1 has used no CPU for 300 ms.
settle() {
    local last now i
    last=$(cpu_ticks "$1")
    for i in $(seq 1 17); do
        sleep 0.3
        now=$(cpu_ticks "$1")
        [[ $now == "$last" ]] && return 0
        last=$now
    done
}
declare -A REC=()
for round in $(seq 1 "$REC_ROUNDS"); do
    for work in fast stream; do
        for t in gpt-api gpt-api-norec; do
            out=$TMP/rec-$t-$work-$round.txt
            before=$(cpu_ticks "${PROC[$t]}")
            [[ $t == gpt-api && -n $WRITER_TID ]] && wbefore=$(thread_ticks "$GPT_PID" "$WRITER_TID")
            timeout $((SECS + 30)) taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${SECS}s" --latency -s "$TMP/$work.lua" \
                "${URL[$t]}" >"$out" 2>&1 || fail_with_log "wrk failed against $t" "$out"
            after=$(cpu_ticks "${PROC[$t]}")
            read -r reqs rps < <(awk '/ requests in / { n = $1 } /^Requests\/sec:/ { r = $2 } END { print n + 0, r }' "$out")
            [[ -n $rps ]] && ((reqs > 0)) || fail_with_log "cannot read wrk's output for $t" "$out"
            ! grep -q 'Non-2xx' "$out" || fail_with_log "$t answered errors" "$out"
            REC[$t,$work,rps]+=" $rps"
            REC[$t,$work,p99]+=" $(awk 'function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0;
                if (v ~ /s$/) return v * 1000; return -1 } /^ +99% / { printf "%.3f", ms($2) }' "$out")"
            REC[$t,$work,cpu]+=" $(us_per_request $((after - before)) "$reqs")"
            if [[ $t == gpt-api && -n $WRITER_TID ]]; then
                w=$(($(thread_ticks "$GPT_PID" "$WRITER_TID") - wbefore))
                REC[$t,$work,proxy]+=" $(us_per_request $((after - before - w)) "$reqs")"
            fi
            # The recording gateway writes its last batch and checkpoints after wrk stops: on the same core, that
            # would land in the next (recording off) run. Wait until its CPU time stands still.
            [[ $t == gpt-api ]] && settle "${PROC[$t]}"
        done
        log "recording round $round $work: on $(awk '{ print $NF }' <<<"${REC[gpt-api,$work,rps]}") req/s," \
            "off $(awk '{ print $NF }' <<<"${REC[gpt-api-norec,$work,rps]}") req/s"
    done
done
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# The per-run value a quarter of the runs are at or under (the nearest rank).
lower_quartile() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { i = int((NR + 3) / 4); print v[i < 1 ? 1 : i] }'; }

for t in "${TARGETS[@]:1}"; do
    # shellcheck disable=SC2086
    R[$t,rss_load]=$(rss_kb ${PROC[$t]})
done

for t in "${TARGETS[@]}"; do
    out=$TMP/ttfe-$t.txt
    timeout 120 taskset -c "$LOAD_CPU" "$TTFE_BIN" --addr "${ADDR[$t]}" --model fast -n "$TTFE_N" \
        >"$out" 2>&1 || true
    line=$(grep '^ttfe ' "$out" || true)
    [[ -n $line ]] || fail_with_log "bench-ttfe failed against $t" "$out"
    R[$t,ttfe50]=$(sed -n 's/.* p50_ms=\([0-9.]*\).*/\1/p' <<<"$line")
    R[$t,ttfe99]=$(sed -n 's/.* p99_ms=\([0-9.]*\).*/\1/p' <<<"$line")
    log "$(printf '%-7s time to first SSE event p50 %s ms  p99 %s ms' "$t" "${R[$t,ttfe50]}" "${R[$t,ttfe99]}")"
done

# ---------------------------------------------------------------- usage rows

USAGE_LINE=
if [[ $USAGE == on ]]; then
    # Requests gpt-api answered, as its clients counted them (wrk leaves up to one in-flight request per
    # connection uncounted at the end of each run, so the store may hold a few more).
    sent=$((GPT_READY_REQUESTS + (TTFE_N + 10)))
    for f in "$TMP"/warmup-gpt-api.txt "$TMP"/wrk-gpt-api-fast-*.txt "$TMP"/wrk-gpt-api-slow-*.txt \
        "$TMP"/rec-gpt-api-fast-*.txt "$TMP"/rec-gpt-api-stream-*.txt; do
        [[ -f $f ]] && sent=$((sent + $(awk '/ requests in / { print $1 }' "$f")))
    done
    # Stop gpt-api first so that its record writer drains.
    kill -TERM "$GPT_PID" 2>/dev/null || true
    for i in $(seq 1 150); do
        kill -0 "$GPT_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$GPT_PID" 2>/dev/null && log "warning: gpt-api still running 15 s after SIGTERM; counting rows anyway"
    rows=0 found=0
    for db in "$TMP"/db/record_*.db; do
        [[ -f $db ]] || continue
        found=1
        n=$(sqlite3 "$db" 'SELECT count(*) FROM records;' 2>"$TMP/sqlite.err") \
            || fail_with_log "sqlite3 cannot count records in $db" "$TMP/sqlite.err"
        rows=$((rows + n))
    done
    if ((found)); then
        USAGE_LINE="Usage recording on: $rows rows in \`records\`; gpt-api answered $sent requests as its clients counted them."
    else
        USAGE_LINE="Usage recording on (\`--check\` accepted \`usage:\`), but gpt-api wrote no \`record_*.db\` file."
    fi
    log "$USAGE_LINE"
fi

# ---------------------------------------------------------------- report

# a / b with 2 decimals; "n/a" when b is not a positive number.
ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN {
        if (a == "-" || b == "-" || b + 0 <= 0.0005) { print "n/a"; exit }
        printf "%.2f", a / b }'
}
sub_ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
int() { awk -v x="$1" 'BEGIN { printf "%.0f", x }'; }

case_table() {
    local conns=$1 model t k d
    echo "| backend | target | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms | errors | CPU µs/req |"
    echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for model in fast slow; do
        d=direct,$model,$conns
        for t in "${TARGETS[@]}"; do
            k=$t,$model,$conns
            local add50=- add99=-
            if [[ $t != direct ]]; then
                add50=$(sub_ms "${R[$k,p50]}" "${R[$d,p50]}")
                add99=$(sub_ms "${R[$k,p99]}" "${R[$d,p99]}")
            fi
            echo "| ${BACKEND_NAME[$model]} | $t | $(int "${R[$k,rps]}") | ${R[$k,p50]} | ${R[$k,p99]} |" \
                "$add50 | $add99 | ${R[$k,errs]} | ${R[$k,cpu]} |"
        done
    done
}

declare -A BACKEND_NAME=([fast]="0 ms" [slow]="$SLOW_MS ms")
DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)

report() {
    echo "# gpt-api benchmark, $DATE"
    echo
    echo "Machine: $CORES cores ($CPU_MODEL), Linux $(uname -r). gpt-api $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?') (binary of $(date -u -r "$GPT_API" +%Y-%m-%dT%H:%MZ)), $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), $(wrk -v 2>&1 | head -n1 | awk '{ print $1, $2 }')."
    echo "Proxy under test on core $PROXY_CPU (gpt-api and pingora: 1 worker thread; nginx: 1 worker); wrk, bench-ttfe"
    echo "and the fake backend on core $LOAD_CPU; gpt-api's usage-writer thread on core $WRITER_CPU$WRITER_POLICY. pingora: a bare"
    echo "Pingora proxy (bench/floor.rs); gpt-api-norec: gpt-api with \`usage: {enabled: false}\`. Each run: ${SECS} s of POST /v1/chat/completions (JSON answer with usage),"
    echo "after ${WARMUP} s of warm-up per target. gpt-api RUST_LOG=$GPT_API_LOG; nginx access_log off."
    echo "CPU µs/req: utime+stime of the proxy's processes over the run / requests (clock tick $(getconf CLK_TCK) Hz,"
    echo "so coarse for the slow single-connection runs). Added = target minus direct in the same case; direct has wrk"
    echo "and the backend on one core, so small added figures can come out negative."
    echo
    echo "## Added latency: 1 connection (\`wrk -t1 -c1 --latency\`)"
    echo
    case_table 1
    echo
    echo "## Throughput: $CONNS connections (\`wrk -t1 -c$CONNS --latency\`)"
    echo
    case_table "$CONNS"
    echo
    echo "## Per target"
    echo
    echo "Time to first SSE event: $TTFE_N sequential \`\"stream\": true\` requests (0 ms backend, 20 events + [DONE])"
    echo "over one kept-alive connection, from sending the request to the first complete \`data:\` event."
    echo
    echo "| target | first SSE event p50 ms | p99 ms | RSS idle MB | RSS after load MB |"
    echo "| --- | ---: | ---: | ---: | ---: |"
    for t in "${TARGETS[@]}"; do
        local idle=- load=-
        if [[ $t != direct ]]; then
            idle=$(mb "${R[$t,rss_idle]}") load=$(mb "${R[$t,rss_load]}")
        fi
        echo "| $t | ${R[$t,ttfe50]} | ${R[$t,ttfe99]} | $idle | $load |"
    done
    echo
    echo "RSS: VmRSS of the proxy (nginx: master + worker) before any load and after the wrk runs."
    echo
    echo "## Ratios (same run)"
    echo
    echo "| ratio | 0 ms backend | $SLOW_MS ms backend |"
    echo "| --- | ---: | ---: |"
    local f=,fast s=,slow c1=,1 cn=,$CONNS
    row() { echo "| $1 | $2 | $3 |"; }
    added() { sub_ms "${R[$1,$2,$3,$4]}" "${R[direct,$2,$3,$4]}"; }
    row "gpt-api added p50 / nginx added p50 (1 conn)" \
        "$(ratio "$(added gpt-api fast 1 p50)" "$(added nginx fast 1 p50)")" \
        "$(ratio "$(added gpt-api slow 1 p50)" "$(added nginx slow 1 p50)")"
    row "gpt-api added p99 / nginx added p99 (1 conn)" \
        "$(ratio "$(added gpt-api fast 1 p99)" "$(added nginx fast 1 p99)")" \
        "$(ratio "$(added gpt-api slow 1 p99)" "$(added nginx slow 1 p99)")"
    row "gpt-api req/s / nginx req/s ($CONNS conns)" \
        "$(ratio "${R[gpt-api$f$cn,rps]}" "${R[nginx$f$cn,rps]}")" "$(ratio "${R[gpt-api$s$cn,rps]}" "${R[nginx$s$cn,rps]}")"
    row "gpt-api req/s / direct req/s ($CONNS conns)" \
        "$(ratio "${R[gpt-api$f$cn,rps]}" "${R[direct$f$cn,rps]}")" "$(ratio "${R[gpt-api$s$cn,rps]}" "${R[direct$s$cn,rps]}")"
    row "nginx req/s / direct req/s ($CONNS conns)" \
        "$(ratio "${R[nginx$f$cn,rps]}" "${R[direct$f$cn,rps]}")" "$(ratio "${R[nginx$s$cn,rps]}" "${R[direct$s$cn,rps]}")"
    row "gpt-api CPU/req / nginx CPU/req ($CONNS conns)" \
        "$(ratio "${R[gpt-api$f$cn,cpu]}" "${R[nginx$f$cn,cpu]}")" "$(ratio "${R[gpt-api$s$cn,cpu]}" "${R[nginx$s$cn,cpu]}")"
    row "gpt-api CPU/req / nginx CPU/req (1 conn)" \
        "$(ratio "${R[gpt-api$f$c1,cpu]}" "${R[nginx$f$c1,cpu]}")" "$(ratio "${R[gpt-api$s$c1,cpu]}" "${R[nginx$s$c1,cpu]}")"
    row "gpt-api / nginx first SSE event p50" "$(ratio "${R[gpt-api,ttfe50]}" "${R[nginx,ttfe50]}")" "-"
    row "gpt-api req/s / pingora req/s ($CONNS conns)" \
        "$(ratio "${R[gpt-api$f$cn,rps]}" "${R[pingora$f$cn,rps]}")" "$(ratio "${R[gpt-api$s$cn,rps]}" "${R[pingora$s$cn,rps]}")"
    row "pingora req/s / nginx req/s ($CONNS conns)" \
        "$(ratio "${R[pingora$f$cn,rps]}" "${R[nginx$f$cn,rps]}")" "$(ratio "${R[pingora$s$cn,rps]}" "${R[nginx$s$cn,rps]}")"
    row "pingora CPU/req / nginx CPU/req ($CONNS conns)" \
        "$(ratio "${R[pingora$f$cn,cpu]}" "${R[nginx$f$cn,cpu]}")" "$(ratio "${R[pingora$s$cn,cpu]}" "${R[nginx$s$cn,cpu]}")"
    row "recording on / off: gpt-api req/s / gpt-api-norec req/s ($CONNS conns)" \
        "$(ratio "${R[gpt-api$f$cn,rps]}" "${R[gpt-api-norec$f$cn,rps]}")" \
        "$(ratio "${R[gpt-api$s$cn,rps]}" "${R[gpt-api-norec$s$cn,rps]}")"
    if ((REC_ROUNDS > 0)); then
        echo
        echo "## Recording on against off"
        echo
        echo "$REC_ROUNDS alternating ${SECS} s runs of \`wrk -t1 -c$CONNS\` per answer, 0 ms backend: \`fast\` a small chat"
        echo "completion, \`stream\` the same streamed (20 SSE events). Usage writer thread on core $WRITER_CPU$WRITER_POLICY, the"
        echo "proxy's worker thread on core $PROXY_CPU. CPU in µs per request (clock ticks of $((1000 / HZ)) ms); \"proxy\": gpt-api's"
        echo "CPU without its usage writer thread."
        echo
        echo "| answer | usage | req/s per run | median req/s | p99 ms per run | median p99 ms | median CPU µs/req | median proxy CPU µs/req |"
        echo "| --- | --- | --- | ---: | --- | ---: | ---: | ---: |"
        local work r=() c=() p=() l=() q=()
        for work in fast stream; do
            local on_rps off_rps on_cpu off_cpu on_proxy=-
            # shellcheck disable=SC2086
            on_rps=$(median ${REC[gpt-api,$work,rps]}) off_rps=$(median ${REC[gpt-api-norec,$work,rps]})
            # shellcheck disable=SC2086
            on_cpu=$(median ${REC[gpt-api,$work,cpu]}) off_cpu=$(median ${REC[gpt-api-norec,$work,cpu]})
            # shellcheck disable=SC2086
            [[ -n ${REC[gpt-api,$work,proxy]:-} ]] && on_proxy=$(median ${REC[gpt-api,$work,proxy]})
            local on_p99 off_p99 on_q off_q
            # shellcheck disable=SC2086
            on_p99=$(median ${REC[gpt-api,$work,p99]}) off_p99=$(median ${REC[gpt-api-norec,$work,p99]})
            # shellcheck disable=SC2086
            on_q=$(lower_quartile ${REC[gpt-api,$work,p99]}) off_q=$(lower_quartile ${REC[gpt-api-norec,$work,p99]})
            echo "| $work | on |${REC[gpt-api,$work,rps]} | $(int "$on_rps") |${REC[gpt-api,$work,p99]} | $on_p99 | $on_cpu | $on_proxy |"
            echo "| $work | off (\`enabled: false\`) |${REC[gpt-api-norec,$work,rps]} | $(int "$off_rps") |${REC[gpt-api-norec,$work,p99]} | $off_p99 | $off_cpu | - |"
            r+=("$(ratio "$on_rps" "$off_rps")") c+=("$(ratio "$off_cpu" "$on_cpu")") l+=("$(ratio "$on_p99" "$off_p99")")
            q+=("$(ratio "$on_q" "$off_q")")
            if [[ $on_proxy == - ]]; then p+=(-); else p+=("$(ratio "$off_cpu" "$on_proxy")"); fi
        done
        echo
        echo "| recording on / off | fast | stream |"
        echo "| --- | ---: | ---: |"
        echo "| req/s (medians) | ${r[0]} | ${r[1]} |"
        echo "| p99 (medians; at \`BENCH_CONNECTIONS=1\` the recording p99 of #21) | ${l[0]} | ${l[1]} |"
        echo "| p99 (lower quartiles of the runs: less of the machine's noise, which only adds) | ${q[0]} | ${q[1]} |"
        echo "| requests per CPU second, writer sharing the proxy's core (CPU/req off / on) | ${c[0]} | ${c[1]} |"
        echo "| requests per CPU second of the proxy, writer on CPU of its own (off / proxy's on) | ${p[0]} | ${p[1]} |"
    fi
    if [[ -n $USAGE_LINE ]]; then
        echo
        echo "$USAGE_LINE"
    else
        echo
        echo "Usage recording off (this gpt-api build does not accept a \`usage:\` section)."
    fi
}

mkdir -p "$ROOT/bench/out"
OUT=$ROOT/bench/out/results-$(date -u +%Y-%m-%d-%H%M%S).md
report >"$OUT"
cat "$OUT"
log "saved $OUT"
