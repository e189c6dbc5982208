#!/usr/bin/env bash
# Install, then run the full test suite.  Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
export HF_HUB_OFFLINE=1 YOLO_OFFLINE=1
# The review app's smoke test renders the page in Debian's headless Chromium: install it when missing
# and apt is usable (best effort; without it that one test is skipped with the reason).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  (export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 \
    || echo "note: could not install chromium; the review smoke test will be skipped" >&2
fi
.venv/bin/python -m pytest "$@"
