#!/usr/bin/env bash
# Install, then run the main job end to end on the bundled sample with the
# embedded database (kept in .matcher-data/ unless MATCHER_DATA_DIR is set).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
export MATCHER_DATA_DIR="${MATCHER_DATA_DIR:-$PWD/.matcher-data}"
.venv/bin/matcher index sample/catalog/products.jsonl --backend classical --workers 2 --no-progress
.venv/bin/matcher db status
