#!/usr/bin/env bash
# Installs Debian packages the tooling needs when a command is missing, the one way the
# project installs system software (scripts/setup-browser.sh for Chromium, scripts/cluster.sh
# for HAProxy): apt-get, through sudo when not root. Nothing is downloaded from anywhere else.
#
#   scripts/apt-install.sh COMMAND PACKAGE...   # installs PACKAGE... unless COMMAND is on PATH
#                                               # (or is an executable path)
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 COMMAND PACKAGE..." >&2
  exit 2
fi
cmd="$1"
shift
present() { [ -x "$cmd" ] || command -v "$cmd" >/dev/null 2>&1; }
if present; then
  exit 0
fi
echo "$cmd is missing: installing Debian's $* (apt-get)" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends "$@"
if ! present; then
  echo "$cmd is still missing after installing $*" >&2
  exit 1
fi
