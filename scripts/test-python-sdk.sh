#!/usr/bin/env bash
# centrifuge-python's own test suite, JSON and protobuf, against Hubbub.
#
# The suite is the one in the package's source distribution on PyPI (centrifuge-python 0.7.0
# ships tests/). This script makes a venv under target/, downloads the sdist once (cached in
# target/python-sdk/, checked against its sha256 below, so reruns are offline), installs it
# (which installs its declared dependencies, websockets and protobuf, from PyPI), unpacks it
# and hands over to tests/python-sdk/run.py, which starts `hubbub serve` with
# tests/python-sdk/hubbub.toml on a free port, makes the one edit to the tests
# (`localhost:8000` -> that address), runs them with a deadline each and compares the outcome
# with tests/python-sdk/known-failures.txt.
#
# Usage: scripts/test-python-sdk.sh [hubbub binary, default target/debug/hubbub] [run.py options]
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=0.7.0
SHA256=11252b45c3f6b6104cfb07fb0fcfc9d2d62832d2af14715dd16fdc5e9c6e5964
BIN=${1:-target/debug/hubbub}
shift || true
DIR=target/python-sdk
VENV=$DIR/venv
SDIST=$DIR/dist/centrifuge_python-$VERSION.tar.gz
export PIP_CACHE_DIR=$PWD/$DIR/pip-cache PIP_DISABLE_PIP_VERSION_CHECK=1

if [ ! -x "$BIN" ]; then
  echo "no hubbub binary at $BIN (cargo build first)" >&2
  exit 1
fi
if ! python3 -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "python3 (3.11 or later) with venv is required (apt-get install python3-venv)" >&2
  exit 1
fi

if [ ! -f "$SDIST" ]; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" download --quiet --no-binary :all: --no-deps \
    "centrifuge-python==$VERSION" -d "$DIR/dist"
fi
echo "$SHA256  $SDIST" | sha256sum -c --quiet -
if [ ! -f "$VENV/installed-$VERSION" ]; then
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "$SDIST"
  touch "$VENV/installed-$VERSION"
fi

rm -rf "$DIR/src"
mkdir -p "$DIR/src"
tar -xzf "$SDIST" -C "$DIR/src"

exec "$VENV/bin/python" tests/python-sdk/run.py --server "$BIN" \
  --sdk "$DIR/src/centrifuge_python-$VERSION" --work "$DIR/run" "$@"
