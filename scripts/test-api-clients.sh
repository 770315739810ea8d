#!/usr/bin/env bash
# The server API driven by Centrifugo's API clients: `cent` from PyPI (tests/api-clients/
# cent_test.py, in a venv under target/) and `cent.js` from npm (tests/api-clients/
# cent.test.mjs), against one real `hubbub serve` started here. About 10 seconds once the
# packages are installed.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
bin="${HUBBUB_BIN:-$root/target/debug/hubbub}"
venv="$root/target/api-clients-venv"

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import cent' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'cent==5.2.0'
fi
(cd tests/api-clients && npm ci --no-audit --no-fund --loglevel=error)

dir="$(mktemp -d)"
server=""
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT

export CENT_TEST_API_KEY="api-clients-key"
export CENT_TEST_TOKEN_SECRET="api-clients-token-secret"
HUBBUB_LISTEN=127.0.0.1:0 HUBBUB_DATA_DIR="$dir/data" HUBBUB_AUTH_API_KEY="$CENT_TEST_API_KEY" \
  HUBBUB_AUTH_TOKEN_SECRET="$CENT_TEST_TOKEN_SECRET" "$bin" serve >"$dir/stdout" 2>"$dir/stderr" &
server=$!
addr=""
for _ in $(seq 1 300); do
  addr="$(sed -n 's/^hubbub listening on http:\/\///p' "$dir/stdout")"
  [ -n "$addr" ] && break
  kill -0 "$server" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$addr" ]; then
  echo "hubbub did not start:" >&2
  cat "$dir/stderr" >&2
  exit 1
fi
export CENT_TEST_URL="http://$addr"

status=0
echo "-- cent (PyPI) against $CENT_TEST_URL"
"$venv/bin/python" tests/api-clients/cent_test.py || status=1
echo "-- cent.js (npm) against $CENT_TEST_URL"
(cd tests/api-clients && npm test) || status=1
if [ "$status" != 0 ]; then
  echo "server log:" >&2
  tail -50 "$dir/stderr" >&2
fi
exit "$status"
