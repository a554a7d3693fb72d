#!/usr/bin/env bash
# Debian's Chromium for the dashboard's browser tests (tests/e2e/browser, marker "browser"): Playwright
# (a Python package in the locked environment) drives it headless. Idempotent.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then exit 0; fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
