#!/usr/bin/env bash
# Runs the centrifuge-js compatibility suite (tests/js) once against a cluster: 3 nodes of the
# debug binary on Redis + PostgreSQL behind HAProxy, started by scripts/cluster.sh exactly as a
# user would, with the suite's secrets and namespaces. Every request goes through HAProxy's
# round robin, so consecutive connections, API calls and polls of one test land on different
# nodes. Called by scripts/test.sh after the single-node run; uses its own Redis prefix and
# its own database (dropped afterwards), so it runs beside other tests.
#
# Without Redis, PostgreSQL or HAProxy it skips loudly, unless HUBBUB_REQUIRE_SERVICES=1 (CI):
# then a missing Redis or PostgreSQL fails, and a missing HAProxy is installed by cluster.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

# The transports run against the cluster: WebSocket, and HTTP streaming, whose /emulation
# POSTs land on other nodes than the stream they belong to.
MODES="websocket,http_stream"
BIN="$ROOT/target/debug/hubbub"
REDIS="${HUBBUB_TEST_REDIS_URL:-redis://127.0.0.1:6379}"
PG_MAINT="${HUBBUB_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

skip() {
  if [ "${HUBBUB_REQUIRE_SERVICES:-}" = "1" ]; then
    echo "FAILED: $1; HUBBUB_REQUIRE_SERVICES=1, so the cluster run of the centrifuge-js suite may not skip" >&2
    exit 1
  fi
  echo
  echo "!!!!! SKIPPED the centrifuge-js suite against a cluster: $1 !!!!!"
  echo
  exit 0
}
host_port() { local a="${1#*://}"; a="${a%%/*}"; echo "${a##*@}"; }
reachable() { local hp; hp="$(host_port "$1")"; timeout 2 bash -c "exec 3<>/dev/tcp/${hp%:*}/${hp##*:}" 2>/dev/null; }
reachable "$REDIS" || skip "Redis does not answer at $REDIS"
reachable "$PG_MAINT" || skip "PostgreSQL does not answer at $PG_MAINT"
if ! command -v haproxy >/dev/null 2>&1 && [ "${HUBBUB_REQUIRE_SERVICES:-}" != "1" ]; then
  skip "haproxy is not installed (scripts/cluster.sh installs it: apt-get install haproxy)"
fi
[ -x "$BIN" ] || { echo "no $BIN: cargo build -p hubbub-server first" >&2; exit 1; }

run="js$$$RANDOM"
dir="$ROOT/target/hubbub-cluster-js"
db="hubbub_$run"
extra="$(mktemp)"
cleanup() {
  bash scripts/cluster.sh stop --dir "$dir" || true
  psql "$PG_MAINT" -Xqc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -f "$extra"
}
trap cleanup EXIT
(cd tests/js && node cluster-config.mjs) >"$extra"

bash scripts/cluster.sh start --detach --engine redis --nodes 3 --port 0 --dir "$dir" \
  --bin "$BIN" --redis "$REDIS" --postgres "${PG_MAINT%/*}/$db" --prefix "$run" \
  --token-secret js-compat-token-secret --api-key js-compat-api-key --extra "$extra"

status=0
(
  cd tests/js
  HUBBUB_URL="$(cat "$dir/address")" MODES="$MODES" CHAT=0 README=0 PROXY=0 node run-all.mjs
) || status=$?
if [ "$status" != 0 ]; then
  for log in "$dir"/node*/log "$dir/haproxy.log"; do
    echo "---- $log (last 60 lines) ----"
    tail -n 60 "$log"
  done
fi
exit "$status"
