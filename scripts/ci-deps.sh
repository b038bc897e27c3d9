#!/usr/bin/env bash
# System packages the test suite needs beyond Python: Chromium for the report.html browser check
# (tests/report/test_html.py, skipped where it is missing). Idempotent; needs root for apt-get.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ci-deps: no apt-get here; install Chromium yourself to run the browser check" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "ci-deps: need root or sudo to install chromium" >&2; exit 1; }
    SUDO="sudo"
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium
