#!/usr/bin/env bash
# The admin page's cost to the proxy: gpt-api's throughput (0 ms backend, small chat answer, recording on) with no
# admin client, with one reloading the month's overview every 100 ms, and with one reloading the requests page
# every 100 ms; and the admin page's own answer times on a month file of BENCH_ADMIN_RECORDS records.
#
# Usage: bench/admin.sh    (needs 2+ cores, wrk, curl, taskset; builds the release binaries unless BENCH_NO_BUILD=1)
# Env:   BENCH_SECONDS=10 length of each wrk run; BENCH_ROUNDS=3 alternating rounds of the three runs;
#        BENCH_ADMIN_RECORDS=1000000 records seeded into 2026-11 (skipped when BENCH_ADMIN_DB names a seeded dir)
#        BENCH_PROXY_CPU=0 BENCH_LOAD_CPU=1: gpt-api (all its threads, the admin page's too) on one core, wrk, the
#        backend and the admin client on the other.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SECS=${BENCH_SECONDS:-10}
ROUNDS=${BENCH_ROUNDS:-3}
RECORDS=${BENCH_ADMIN_RECORDS:-1000000}
PROXY_CPU=${BENCH_PROXY_CPU:-0}
LOAD_CPU=${BENCH_LOAD_CPU:-1}
KEY=bench-admin-key
TMP=$(mktemp -d /tmp/gpt-api-admin-bench.XXXXXX)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
log() { echo "admin-bench: $*" >&2; }

if [[ -z ${BENCH_NO_BUILD:-} ]]; then
    log "building (release): gpt-api, bench-backend, bench-admin-seed"
    cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" --bin gpt-api --example bench-backend \
        --example bench-admin-seed
fi
BIN=$ROOT/target/release
DB=${BENCH_ADMIN_DB:-$TMP/db}
if [[ -z ${BENCH_ADMIN_DB:-} ]]; then
    log "seeding $RECORDS records"
    "$BIN/examples/bench-admin-seed" --dir "$DB" --records "$RECORDS" --month 2026-11 >&2
fi

taskset -c "$LOAD_CPU" "$BIN/examples/bench-backend" --listen 127.0.0.1:0 >"$TMP/backend.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do grep -q "listening on" "$TMP/backend.log" && break; sleep 0.05; done
BACKEND=$(sed -n 's/.*listening on //p' "$TMP/backend.log" | head -n1)
[[ -n $BACKEND ]] || { cat "$TMP/backend.log"; exit 1; }

PORT=18431
ADMIN_PORT=18432
cat >"$TMP/config.yaml" <<EOF
openai_clients:
  - name: backend
    base_url: "http://$BACKEND/v1"
    model_match: {type: exact, value: [fast]}
server:
  admin_listen: "127.0.0.1:$ADMIN_PORT"
  admin_key: "$KEY"
usage:
  dir: "$DB"
EOF
RUST_LOG=warn taskset -c "$PROXY_CPU" "$BIN/gpt-api" --config "$TMP/config.yaml" --listen "127.0.0.1:$PORT" \
    >"$TMP/gpt-api.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 200); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.05; done

cat >"$TMP/fast.lua" <<'EOF'
wrk.method = "POST"
wrk.body = '{"model":"fast","messages":[{"role":"user","content":"hi"}]}'
wrk.headers["Content-Type"] = "application/json"
EOF
ADMIN=http://127.0.0.1:$ADMIN_PORT
OVERVIEW="$ADMIN/?from=2026-11-01&to=2026-11-30"
REQUESTS="$ADMIN/requests?from=2026-11-01&to=2026-11-30"

# One answer's time, in ms (the best of 5: the first query also warms SQLite's page cache).
time_ms() {
    local best=999999 t
    for _ in 1 2 3 4 5; do
        t=$(curl -s -o /dev/null -w '%{time_total}' -H "Authorization: Bearer $KEY" "$1")
        best=$(awk -v a="$best" -v b="$t" 'BEGIN { b *= 1000; print (b < a ? b : a) }')
    done
    printf '%.1f' "$best"
}

# The first overview of the month is computed (a cached one is served for 5 s): time a range not asked before.
log "admin answer times (month file of $(du -h "$DB"/record_202611.db | cut -f1))"
first=$(curl -s -o /dev/null -w '%{time_total}' -H "Authorization: Bearer $KEY" "$ADMIN/api/overview?from=2026-11-01&to=2026-11-30&by=key")
echo "| call | ms |"
echo "| --- | --- |"
echo "| month overview, computed (\`/api/overview?from=2026-11-01&to=2026-11-30&by=key\`, first call) | $(awk -v t="$first" 'BEGIN { printf "%.1f", t * 1000 }') |"
for url in "$OVERVIEW" "$REQUESTS" "$ADMIN/requests?model=o3-mini" "$ADMIN/requests?status=500" \
    "$ADMIN/requests?key=team-03&stream=true" "$ADMIN/api/requests?limit=50" "$ADMIN/backends" "$ADMIN/keys"; do
    echo "| \`${url#"$ADMIN"}\` | $(time_ms "$url") |"
done
sleep 5.5  # let the cached overview expire
for by in model backend; do
    t=$(curl -s -o /dev/null -w '%{time_total}' -H "Authorization: Bearer $KEY" "$OVERVIEW&by=$by&step=hour")
    echo "| month overview by $by per hour, computed | $(awk -v t="$t" 'BEGIN { printf "%.1f", t * 1000 }') |"
done
usage=$(curl -s -o /dev/null -w '%{time_total}' -H "Authorization: Bearer $KEY" "$ADMIN/api/usage?from=2026-11-01&to=2026-11-30&by=day,model")
echo "| \`/api/usage?from=2026-11-01&to=2026-11-30&by=day,model\` (exact, every row's index entry) | $(awk -v t="$usage" 'BEGIN { printf "%.1f", t * 1000 }') |"

# An admin client reloading $1 every 100 ms until killed, on one keep-alive connection (a curl per reload
# would cost the load core more than the page costs gpt-api).
cat >"$TMP/reload.py" <<'EOF'
import http.client, sys, time, urllib.parse
url = urllib.parse.urlsplit(sys.argv[1])
conn = http.client.HTTPConnection(url.hostname, url.port)
while True:
    conn.request("GET", url.path + "?" + url.query, headers={"Authorization": "Bearer " + sys.argv[2]})
    conn.getresponse().read()
    time.sleep(0.1)
EOF

# "tid ticks" of gpt-api's admin threads (its service thread and its blocking pool's): CPU time in clock ticks.
GPT_PID=${PIDS[1]}
admin_threads() {
    local t
    for t in /proc/"$GPT_PID"/task/*; do
        case $(cat "$t/comm" 2>/dev/null) in
            admin|tokio-rt-worker) echo "${t##*/} $(awk '{ print $14 + $15 }' "$t/stat" 2>/dev/null)" ;;
        esac
    done
}
# The ticks used between two snapshots (a blocking thread that ended in between is missed: they idle 10 s first).
admin_ticks() {
    awk 'NR == FNR { before[$1] = $2; next } { used += $2 - before[$1] } END { print used + 0 }' "$1" "$2"
}
TICKS=$(getconf CLK_TCK)

run_wrk() {
    taskset -c "$LOAD_CPU" wrk -t1 -c64 -d"${SECS}s" -s "$TMP/fast.lua" "http://127.0.0.1:$PORT/v1/chat/completions" \
        | awk '/Requests\/sec/ { print $2 }'
}

taskset -c "$LOAD_CPU" wrk -t1 -c64 -d2s -s "$TMP/fast.lua" "http://127.0.0.1:$PORT/v1/chat/completions" >/dev/null
echo
# gpt-api's whole CPU time so far, in clock ticks.
process_ticks() { awk '{ print $14 + $15 }' /proc/"$GPT_PID"/stat; }

# One wrk run while an admin client reloads $1 (none when empty): "req/s (admin CPU ms, proxy CPU us/request)",
# the proxy's CPU being the process's less its admin threads'.
with_admin() {
    local loop="" rps p0 p1 admin
    if [[ -n $1 ]]; then
        taskset -c "$LOAD_CPU" python3 "$TMP/reload.py" "$1" "$KEY" &
        loop=$!
    fi
    admin_threads >"$TMP/before"
    p0=$(process_ticks)
    rps=$(run_wrk)
    p1=$(process_ticks)
    admin_threads >"$TMP/after"
    if [[ -n $loop ]]; then kill "$loop"; wait "$loop" 2>/dev/null || true; fi
    admin=$(admin_ticks "$TMP/before" "$TMP/after")
    echo "$rps ($((admin * 1000 / TICKS)) ms, $(awk -v t=$((p1 - p0 - admin)) -v hz="$TICKS" -v r="$rps" -v s="$SECS" \
        'BEGIN { printf "%.1f", t / hz * 1e6 / (r * s) }') us)"
}

echo "gpt-api's requests/s over ${SECS} s (\`wrk -t1 -c64\`), and in brackets the CPU time its admin threads used"
echo "meanwhile and the CPU time of the rest of the process per request:"
echo
echo "| round | no admin client | overview every 100 ms | requests page every 100 ms |"
echo "| --- | --- | --- | --- |"
: >"$TMP/rounds"
for round in $(seq "$ROUNDS"); do
    row="| $round | $(with_admin "") | $(with_admin "$OVERVIEW") | $(with_admin "$REQUESTS") |"
    echo "$row"
    echo "$row" >>"$TMP/rounds"
done
# The median of each column's requests/s, and each with-admin median against the no-admin one.
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
# Field $2 of column $1: 1 the requests/s, 4 the proxy's CPU us per request.
col() { awk -F'|' -v c="$1" -v i="$2" '{ split($c, f, " "); print f[i] }' "$TMP/rounds" | median; }
vs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.1f%%", (a / b - 1) * 100 }'; }
r1=$(col 3 1); r2=$(col 4 1); r3=$(col 5 1); u1=$(col 3 4); u2=$(col 4 4); u3=$(col 5 4)
echo "| median | $r1 ($u1 us) | $r2 ($(vs "$r2" "$r1"); $u2 us, $(vs "$u2" "$u1")) | $r3 ($(vs "$r3" "$r1"); $u3 us, $(vs "$u3" "$u1")) |"

echo
echo "After the runs, with this month's file holding $(curl -s -H "Authorization: Bearer $KEY" "$ADMIN/api/overview?range=month" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["total"]["requests"])') records of its own:"
echo
echo "| call | ms |"
echo "| --- | --- |"
for url in "$ADMIN/requests" "$ADMIN/requests?model=o3-mini" "$ADMIN/requests?model=none-such" "$ADMIN/backends"; do
    echo "| \`${url#"$ADMIN"}\` | $(time_ms "$url") |"
done
