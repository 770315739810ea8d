#!/usr/bin/env bash
# The standard bench set: idle, fanout, many, connect-storm, each against Hubbub, the raw
# WebSocket fan-out baseline (raw-ws) and Socket.IO 4 on Node; then chat and connect-storm on
# chat rooms (connect-storm-rooms), against Hubbub only (the peers have no chat). Writes one
# table per scenario to bench/results/<date>-<scenario>.md (…-quick.md with --quick).
#
#   bench/run.sh           full set, under 10 minutes on 2 cores (after the build)
#   bench/run.sh --quick   small set, under 2 minutes
#   bench/run.sh --cluster the cluster scenario alone: Hubbub as 1, 2, 3 nodes on Redis and
#                          on NATS + PostgreSQL (the machine's, at their standard ports), under
#                          5 minutes; needs psql
#
# Loads go to 127.0.0.0/8 only. Needs cargo; node + npm for the Socket.IO peer (skipped
# without them).
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
CLUSTER=0
case "${1:-}" in
  --quick) QUICK=1 ;;
  --cluster) CLUSTER=1 ;;
  "") ;;
  *) echo "usage: bench/run.sh [--quick | --cluster]" >&2; exit 2 ;;
esac

echo "== build (release)"
cargo build --release -p hubbub-server -p hubbub-bench

SERVERS="hubbub,raw,socketio"
if [ "$CLUSTER" = 1 ]; then
  SERVERS="hubbub"  # the cluster scenario is Hubbub alone
elif command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
  echo "== Socket.IO peer: npm ci"
  (cd bench/peers/socketio && npm ci --no-audit --no-fund --loglevel=error)
else
  echo "node/npm not found: the Socket.IO peer is skipped (apt-get install nodejs npm)" >&2
  SERVERS="hubbub,raw"
fi

# Every connection costs a descriptor in the load generator and in the server (which
# inherits this limit): take the hard limit.
ulimit -n "$(ulimit -Hn)"
echo "== open files limit: $(ulimit -n)"

BENCH=(target/release/hubbub-bench --servers "$SERVERS" --out bench/results)
if [ "$CLUSTER" = 1 ]; then
  t0=$(date +%s)
  target/release/hubbub-bench --servers hubbub --out bench/results cluster \
    --nodes 1,2,3 --engines redis,nats --subscribers 1000 --users 100 --rooms 20 --members 10 --phase 3
  echo "== cluster: $(( $(date +%s) - t0 )) s; table in bench/results/"
  exit 0
fi
# One scenario, with how long it took.
bench() {
  local t0
  t0=$(date +%s)
  "${BENCH[@]}" "$@"
  echo "== $1: $(( $(date +%s) - t0 )) s"
}
started=$(date +%s)
if [ "$QUICK" = 1 ]; then
  BENCH+=(--quick)
  bench idle --connections 5000 --channels 500
  bench fanout --subscribers 1000 --phase 2
  bench many --channels 500 --subscribers-per-channel 5 --phase 2
  bench connect-storm --connections 1000 --channels 50 --rate 200
  bench chat --users 200 --rooms 40 --members 10 --rate 300 --phase 2
  bench connect-storm --rooms --connections 2000 --channels 100 --users 200 --rate 200
else
  # 100,000 idle connections are asked; the harness runs as many as the open-files limit
  # allows and says so in the table.
  bench idle --connections 100000 --channels 1000
  bench fanout --subscribers 10000 --phase 10
  bench many --channels 4000 --subscribers-per-channel 10 --channels-per-connection 5 --phase 10
  bench connect-storm --connections 10000 --channels 500 --rate 500
  bench chat --users 1000 --rooms 200 --members 10 --rate 400 --phase 10
  bench connect-storm --rooms --connections 10000 --channels 500 --users 1000 --rate 500
fi
echo "== done in $(( $(date +%s) - started )) s; tables in bench/results/"
