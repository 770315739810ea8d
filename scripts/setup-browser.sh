#!/usr/bin/env bash
# Installs Debian's Chromium for the browser tests (tests/e2e) when it is missing.
# Playwright's own browser download is not used: tests/e2e depends on playwright-core only
# and drives /usr/bin/chromium.
set -euo pipefail
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
bash "$(dirname "$0")/apt-install.sh" "$CHROMIUM" chromium fonts-dejavu-core fonts-noto-color-emoji
"$CHROMIUM" --version
