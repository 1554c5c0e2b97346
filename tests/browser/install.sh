#!/usr/bin/env bash
# The browser the page's tests drive (tests/test_dashboard_browser.py): Debian's chromium (no browser
# download) and playwright's Python driver pointed at it. CI runs this as a step of its own, then
# `pytest -m browser`.
set -euo pipefail
pip install -e '.[browser]'
if ! command -v chromium >/dev/null; then
  SUDO=()
  if (( EUID != 0 )); then SUDO=(sudo); fi
  "${SUDO[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium
fi
chromium --version
