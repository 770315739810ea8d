#!/usr/bin/env bash
# Runs a local Hubbub cluster: N `hubbub` nodes sharing Redis or NATS (the engine) and
# PostgreSQL (the chat's store), behind HAProxy (round robin, no sticky sessions, health checks
# on GET /health). Prints the one address to open. docs/DEPLOY.md is the same on real machines.
#
#   scripts/cluster.sh [start] [options]   # start, print the address, stop everything on Ctrl-C
#   scripts/cluster.sh start --detach ...  # start, print the address, return (stop it later)
#   scripts/cluster.sh stop [--dir DIR]    # stop a detached cluster
#   scripts/cluster.sh status [--dir DIR]  # what runs, and HAProxy's view of the nodes
#
# Options:
#   --engine redis|nats     the engine (default redis)
#   --nodes N               how many nodes (default 3)
#   --port P                HAProxy's port on 127.0.0.1 (default 8000; 0: a free one)
#   --dir DIR               state folder: one data_dir per node, logs, HAProxy's config, the
#                           secrets (generated once, kept for the next start)
#                           (default target/hubbub-cluster)
#   --bin PATH              the hubbub binary (default: `cargo build --release -p hubbub-server`
#                           and target/release/hubbub; $HUBBUB_BIN also names it)
#   --redis URL             default redis://127.0.0.1:6379
#   --nats URL              default nats://127.0.0.1:4222
#   --postgres URL          the database; created when missing
#                           (default postgres://postgres@127.0.0.1:5432/hubbub_cluster)
#   --prefix P              engine.prefix: keys and subjects start with it (default hubbub_cluster)
#   --token-secret S        auth.token_secret instead of the generated one
#   --api-key K             auth.api_key instead of the generated one
#   --extra FILE            raw TOML appended to every node's config (tables other than
#                           [auth], [engine], [store]: [[namespaces]], [client], [chat], ...)
#   --detach                start and return instead of waiting for Ctrl-C
#
# Ports: HAProxy takes --port; the nodes listen on free ports of 127.0.0.1 (port 0, read back
# from each node's "hubbub listening on" line) and are reached only through HAProxy, which is
# how a client should see a cluster. `status` lists them.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

cmd="start"
case "${1:-}" in
  start | stop | status) cmd="$1"; shift ;;
esac

engine="redis"
nodes=3
port=8000
dir="$ROOT/target/hubbub-cluster"
bin="${HUBBUB_BIN:-}"
redis_url="redis://127.0.0.1:6379"
nats_url="nats://127.0.0.1:4222"
postgres_url="postgres://postgres@127.0.0.1:5432/hubbub_cluster"
prefix="hubbub_cluster"
token_secret=""
api_key=""
extra=""
detach=0

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2; }
need() { [ $# -ge 2 ] || { echo "cluster.sh: $1 needs a value" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
  case "$1" in
    --engine) need "$@"; engine="$2"; shift 2 ;;
    --nodes) need "$@"; nodes="$2"; shift 2 ;;
    --port) need "$@"; port="$2"; shift 2 ;;
    --dir) need "$@"; dir="$2"; shift 2 ;;
    --bin) need "$@"; bin="$2"; shift 2 ;;
    --redis) need "$@"; redis_url="$2"; shift 2 ;;
    --nats) need "$@"; nats_url="$2"; shift 2 ;;
    --postgres) need "$@"; postgres_url="$2"; shift 2 ;;
    --prefix) need "$@"; prefix="$2"; shift 2 ;;
    --token-secret) need "$@"; token_secret="$2"; shift 2 ;;
    --api-key) need "$@"; api_key="$2"; shift 2 ;;
    --extra) need "$@"; extra="$2"; shift 2 ;;
    --detach) detach=1; shift ;;
    -h | --help) usage ;;
    *) echo "cluster.sh: unknown argument $1 (--help lists them)" >&2; exit 2 ;;
  esac
done
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

say() { echo "cluster: $*" >&2; }
die() { echo "cluster: $*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# stop / status
# ---------------------------------------------------------------------------------------------

# Stops what the pid files in $dir name: nodes first (SIGTERM: a graceful shutdown closes
# every client with a reconnect code), then HAProxy; SIGKILL for whatever is left after 10 s.
stop_all() {
  local pids=() f pid
  for f in "$dir"/node*/pid "$dir"/haproxy.pid; do
    [ -f "$f" ] || continue
    pid="$(cat "$f")"
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
    rm -f "$f"
  done
  local deadline=$((SECONDS + 10))
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      say "pid $pid still running after 10 s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  rm -f "$dir/address" "$dir/haproxy.sock"
  [ ${#pids[@]} -eq 0 ] || say "stopped ${#pids[@]} processes (state kept in $dir)"
}

if [ "$cmd" = "stop" ]; then
  stop_all
  exit 0
fi

if [ "$cmd" = "status" ]; then
  for f in "$dir"/node*/pid "$dir"/haproxy.pid; do
    [ -f "$f" ] || continue
    pid="$(cat "$f")"
    state="gone"
    if kill -0 "$pid" 2>/dev/null; then state="running"; fi
    echo "$(basename "$(dirname "$f")")/$(basename "$f") $pid $state"
  done
  if [ -f "$dir/address" ]; then echo "address: $(cat "$dir/address")"; fi
  if [ -S "$dir/haproxy.sock" ] && command -v socat >/dev/null 2>&1; then
    echo "show servers state" | socat stdio "unix-connect:$dir/haproxy.sock"
  fi
  exit 0
fi

# ---------------------------------------------------------------------------------------------
# start
# ---------------------------------------------------------------------------------------------

case "$engine" in redis | nats) ;; *) die "--engine must be redis or nats, not $engine" ;; esac
[[ "$nodes" =~ ^[1-9][0-9]*$ ]] || die "--nodes must be a positive number, not $nodes"
[[ "$port" =~ ^[0-9]+$ ]] || die "--port must be a number, not $port"
[ -z "$extra" ] || [ -f "$extra" ] || die "--extra $extra: no such file"
for f in "$dir"/node*/pid "$dir"/haproxy.pid; do
  if [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; then
    die "a cluster already runs from $dir (pid $(cat "$f")): scripts/cluster.sh stop --dir $dir"
  fi
done

bash "$ROOT/scripts/apt-install.sh" haproxy haproxy
HAPROXY="$(command -v haproxy)"
command -v psql >/dev/null 2>&1 || bash "$ROOT/scripts/apt-install.sh" psql postgresql-client

# "host:port" of scheme://[user@]host:port/...
host_port() { local a="${1#*://}"; a="${a%%/*}"; a="${a%%\?*}"; echo "${a##*@}"; }
# Whether something accepts TCP connections at host:port (bash's /dev/tcp, 2 s at most).
reachable() {
  local hp="$1"
  timeout 2 bash -c "exec 3<>/dev/tcp/${hp%:*}/${hp##*:}" 2>/dev/null
}
if [ "$engine" = redis ]; then engine_url="$redis_url"; else engine_url="$nats_url"; fi
reachable "$(host_port "$engine_url")" || die "the $engine server at $engine_url does not answer (--$engine URL)"
reachable "$(host_port "$postgres_url")" || die "PostgreSQL at $postgres_url does not answer (--postgres URL)"

# The database: created when missing, through the server's maintenance database `postgres`.
db_name="${postgres_url##*/}"
db_name="${db_name%%\?*}"
[[ "$db_name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "--postgres: the database name '$db_name' must be letters, digits and _"
maint_url="${postgres_url%/*}/postgres"
if [ "$(psql "$maint_url" -XtAc "SELECT 1 FROM pg_database WHERE datname = '$db_name'")" != "1" ]; then
  psql "$maint_url" -Xqc "CREATE DATABASE \"$db_name\"" >/dev/null
  say "created database $db_name"
fi

# Shared secrets: generated once into $dir/secrets.env, reused at every start, so tokens and
# chat sessions outlive a restart of the cluster (every node must have the same ones).
secrets="$dir/secrets.env"
if [ ! -f "$secrets" ]; then
  random() { head -c 32 /dev/urandom | base64 | tr -d '/+=\n'; }
  (umask 077 && printf 'TOKEN_SECRET=%s\nAPI_KEY=%s\n' "$(random)" "$(random)" >"$secrets.tmp")
  mv "$secrets.tmp" "$secrets"
  say "generated the cluster's token secret and API key into $secrets"
fi
# shellcheck disable=SC1090
. "$secrets"
token_secret="${token_secret:-$TOKEN_SECRET}"
api_key="${api_key:-$API_KEY}"

if [ -z "$bin" ]; then
  say "building the release binary (cargo build --release -p hubbub-server)"
  (cd "$ROOT" && cargo build --release -q -p hubbub-server)
  bin="$ROOT/target/release/hubbub"
fi
[ -x "$bin" ] || die "no hubbub binary at $bin"
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"

# A free TCP port on 127.0.0.1 for HAProxy (--port 0): the first in a random range that
# nothing answers on. HAProxy itself says so if another process takes it meanwhile.
free_port() {
  local p tries=0
  while [ $tries -lt 200 ]; do
    p=$((20000 + RANDOM % 30000))
    if ! reachable "127.0.0.1:$p"; then echo "$p"; return; fi
    tries=$((tries + 1))
  done
  die "no free port found"
}
if [ "$port" = 0 ]; then port="$(free_port)"; fi

toml_str() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"; }

started=0
cleanup() {
  if [ "$started" = 1 ]; then
    stop_all
    started=0
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
started=1

# Nodes: each its own data_dir, config and log; listening on a free port it prints.
node_addrs=()
for i in $(seq 1 "$nodes"); do
  nd="$dir/node$i"
  mkdir -p "$nd/data"
  {
    echo "# Written by scripts/cluster.sh; rewritten at every start."
    echo "listen = \"127.0.0.1:0\""
    echo "data_dir = $(toml_str "$nd/data")"
    echo "node_name = \"n$i\""
    echo
    echo "[auth]"
    echo "token_secret = $(toml_str "$token_secret")"
    echo "api_key = $(toml_str "$api_key")"
    echo
    echo "[engine]"
    echo "type = \"$engine\""
    echo "${engine}_url = $(toml_str "$engine_url")"
    echo "prefix = $(toml_str "$prefix")"
    echo
    echo "[store]"
    echo "type = \"postgres\""
    echo "postgres_url = $(toml_str "$postgres_url")"
    if [ -n "$extra" ]; then
      echo
      echo "# --extra $extra"
      cat "$extra"
    fi
  } >"$nd/hubbub.toml"
  : >"$nd/log"
  # Behind HAProxy every connection comes from 127.0.0.1: the chat's per-address limits read
  # the client's address from the header HAProxy adds (option forwardfor).
  (cd "$nd" && HUBBUB_CHAT_CLIENT_ADDRESS_HEADER=X-Forwarded-For exec "$bin" serve --config "$nd/hubbub.toml") >>"$nd/log" 2>&1 &
  echo $! >"$nd/pid"
done
for i in $(seq 1 "$nodes"); do
  nd="$dir/node$i"
  pid="$(cat "$nd/pid")"
  deadline=$((SECONDS + 30))
  addr=""
  while [ -z "$addr" ]; do
    addr="$(sed -n 's#^hubbub listening on http://\([^ ]*\).*#\1#p' "$nd/log" | head -1)"
    [ -n "$addr" ] && break
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$nd/log" >&2
      die "node n$i exited before listening (its log: $nd/log)"
    fi
    [ $SECONDS -lt $deadline ] || { tail -n 20 "$nd/log" >&2; die "node n$i did not listen within 30 s (its log: $nd/log)"; }
    sleep 0.1
  done
  node_addrs+=("$addr")
  say "node n$i (pid $pid) on http://$addr, log $nd/log"
done

# HAProxy: round robin over the nodes, no stickiness (any node serves any request: the
# engine carries publications, presence and control between them, the store is shared).
# docs/DEPLOY.md explains every line.
{
  cat <<CFG
# Written by scripts/cluster.sh; rewritten at every start. Explained in docs/DEPLOY.md.
global
    stats socket $dir/haproxy.sock mode 600 level admin

defaults
    mode http
    option httplog
    log stdout format raw local0 notice
    timeout connect 5s
    timeout http-request 10s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
    timeout client-fin 5s
    timeout server-fin 5s
    retries 3
    option redispatch 1
    option forwardfor
    option abortonclose

frontend hubbub
    bind 127.0.0.1:$port
    default_backend nodes

backend nodes
    balance roundrobin
    option httpchk GET /health
    http-check expect status 200
    default-server check inter 1s fall 2 rise 2 on-marked-down shutdown-sessions
CFG
  for i in $(seq 1 "$nodes"); do
    echo "    server n$i ${node_addrs[$((i - 1))]}"
  done
} >"$dir/haproxy.cfg"
"$HAPROXY" -c -q -f "$dir/haproxy.cfg" || die "HAProxy refuses $dir/haproxy.cfg"
"$HAPROXY" -db -f "$dir/haproxy.cfg" >"$dir/haproxy.log" 2>&1 &
echo $! >"$dir/haproxy.pid"
deadline=$((SECONDS + 10))
until curl -fsS -m 2 "http://127.0.0.1:$port/health" >/dev/null 2>&1; do
  if ! kill -0 "$(cat "$dir/haproxy.pid")" 2>/dev/null; then
    cat "$dir/haproxy.log" >&2
    die "HAProxy exited (port $port taken?)"
  fi
  [ $SECONDS -lt $deadline ] || die "HAProxy does not answer /health on port $port within 10 s (log: $dir/haproxy.log)"
  sleep 0.2
done

address="http://127.0.0.1:$port"
echo "$address" >"$dir/address"
say "$nodes nodes on $engine ($engine_url, prefix $prefix) + PostgreSQL ($postgres_url) behind HAProxy"
say "API key and token secret: $secrets"
echo "open $address"

if [ "$detach" = 1 ]; then
  started=0 # leave everything running
  say "detached; stop with: scripts/cluster.sh stop --dir $dir"
  exit 0
fi
say "Ctrl-C stops the cluster"
# Wait until interrupted, or until HAProxy dies (nothing would reach the nodes any more).
while kill -0 "$(cat "$dir/haproxy.pid")" 2>/dev/null; do sleep 1; done
say "HAProxy exited (log: $dir/haproxy.log)"
exit 1
