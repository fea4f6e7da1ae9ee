#!/bin/bash
# The seed workflow on a throwaway local server: initdb into a scratch folder, start it
# as postgres on a private port and socket, run sql/*.sql in order, stop it again.
set -euo pipefail
cd "$(dirname "$0")/.."
PG_BIN="$(dirname "${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}")"
DEMO_DIR="${PGVISION_DEMO_DIR:-/var/tmp/pgvision-demo}"
PORT="${PGVISION_DEMO_PORT:-54329}"

as_pg=()
if [ "$(id -u)" = 0 ]; then as_pg=(runuser -u postgres --); fi

rm -rf "$DEMO_DIR"
install -d -m 700 "$DEMO_DIR"
[ "$(id -u)" = 0 ] && chown postgres: "$DEMO_DIR"
"${as_pg[@]}" "$PG_BIN/initdb" -D "$DEMO_DIR/data" -U postgres --auth=trust -E UTF8 >/dev/null
"${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$DEMO_DIR/data" -l "$DEMO_DIR/server.log" -w \
  -o "-p $PORT -k $DEMO_DIR -c listen_addresses=''" start >/dev/null
trap '"${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$DEMO_DIR/data" -m fast stop >/dev/null' EXIT

echo "pgvision demo: server on socket $DEMO_DIR, port $PORT"
for f in sql/[0-9]*.sql; do
  echo
  echo "== $f"
  "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$DEMO_DIR" -p "$PORT" -U postgres \
    -d postgres -f "$f" </dev/null
done
