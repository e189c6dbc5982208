#!/usr/bin/env bash
# Install, then run the full test suite.  Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
export HF_HUB_OFFLINE=1 YOLO_OFFLINE=1
.venv/bin/python -m pytest "$@"
