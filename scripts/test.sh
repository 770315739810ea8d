#!/usr/bin/env bash
# Runs every test of the project: Rust unit and integration tests (real server, real
# sockets), centrifuge-python's own test suite (from its PyPI sdist, tests/python-sdk/), the
# compatibility suite with the real centrifuge-js SDK over every transport,
# every snippet of the README (run as written), and the browser tests of the web UI (Debian's
# Chromium driven by playwright-core).
# Installs what it needs (npm packages, Chromium, a Python venv under target/) from the
# registries itself.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo build"
cargo build --workspace --all-targets

echo "== cargo test"
# tests/tokens.rs and tests/cli.rs make their RSA and EC keys with the openssl CLI.
scripts/apt-install.sh openssl openssl
cargo test --workspace

echo "== centrifuge-python's own test suite (its PyPI sdist's tests/), JSON and protobuf"
bash scripts/test-python-sdk.sh target/debug/hubbub

echo "== centrifuge-js compatibility suite, and the README snippets (tests/js/readme.test.mjs)"
if ! command -v node >/dev/null 2>&1; then
  echo "node is required for the centrifuge-js suite (apt-get install nodejs npm)" >&2
  exit 1
fi
(
  cd tests/js
  npm ci --no-audit --no-fund --loglevel=error
  HUBBUB_BIN="$PWD/../../target/debug/hubbub" npm test
)

echo "== the server API driven by Centrifugo's API clients: cent (PyPI) and cent.js (npm)"
bash scripts/test-api-clients.sh

echo "== centrifuge-js compatibility suite against a 3-node cluster (Redis + PostgreSQL) behind HAProxy"
bash scripts/test-js-cluster.sh

echo "== browser tests of the web UI"
bash scripts/setup-browser.sh
(
  cd tests/e2e
  npm ci --no-audit --no-fund --loglevel=error
  HUBBUB_BIN="$PWD/../../target/debug/hubbub" npm test
)
