#!/usr/bin/env bash
# Install, then run the full test suite.  Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
export HF_HUB_OFFLINE=1 YOLO_OFFLINE=1
# Two tests use Debian programs: the review app's smoke test renders the page in headless Chromium,
# and the layers test opens a PSD in GIMP's batch mode. Install them when missing and apt is usable
# (best effort; without them those tests are skipped with the reason).
install_missing() {  # install_missing COMMAND PACKAGE [apt options]
  command -v "$1" >/dev/null 2>&1 && return 0
  command -v apt-get >/dev/null 2>&1 || return 0
  (export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq "${@:3}" "$2") >/dev/null 2>&1 \
    || echo "note: could not install $2; the tests needing it will be skipped" >&2
}
install_missing chromium chromium
install_missing gimp-console-2.10 gimp --no-install-recommends
.venv/bin/python -m pytest "$@"
