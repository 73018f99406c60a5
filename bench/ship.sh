#!/usr/bin/env bash
# bench-ship against a throwaway PostgreSQL: initdb in a temp dir (as the postgres user when run as root), started
# on a free loopback port, the bench run (its arguments passed on, e.g. --rows 200000), the server stopped and
# removed. BENCH_FSYNC=off runs the server without fsync (what the tests do); the default keeps it on.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$bin/initdb" ] || { echo "no PostgreSQL under /usr/lib/postgresql (apt-get install postgresql)" >&2; exit 1; }
dir=$(mktemp -d)
as=()
if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; as=(runuser -u postgres --); fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
stop() { "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$dir"; }
trap stop EXIT
"${as[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C --no-sync >/dev/null
fsync=""
[ "${BENCH_FSYNC:-on}" = off ] && fsync="-F"
"${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -o "$fsync -p $port -k $dir -c listen_addresses=127.0.0.1 \
  -c shared_buffers=128MB -c max_wal_size=1GB" start >/dev/null
[ "${BENCH_NO_BUILD:-}" = 1 ] || cargo build --release --example bench-ship
target/release/examples/bench-ship --postgres "postgres://postgres@127.0.0.1:$port/postgres" --drop-table "$@"
