#!/usr/bin/env bash
# Install, then run the main job end to end on the bundled sample with the
# embedded database (kept in .matcher-data/ unless MATCHER_DATA_DIR is set):
# index the sample catalog, then match two objects of a sample room photo.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
export MATCHER_DATA_DIR="${MATCHER_DATA_DIR:-$PWD/.matcher-data}"
.venv/bin/matcher index sample/catalog/products.jsonl --workers 2 --no-progress
.venv/bin/matcher db status
# scene_00000: a Japanese lantern and a sliding-door wardrobe (boxes from sample/scenes/instances.json).
.venv/bin/matcher match sample/scenes/images/scene_00000.jpg --box 465,277,36,77 --box 0,0,365,541 --top-k 3
