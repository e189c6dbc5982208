#!/usr/bin/env bash
# Create .venv in the repository and install matcher into it (idempotent).
# torch is pinned to the build kept on this workplace's disk; on another machine
# pip fetches the same version from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ -f "$stamp" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
.venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/pip install -q -e '.[dev]'
rm -f .venv/.installed-* && touch "$stamp"
echo "installed matcher into .venv"
