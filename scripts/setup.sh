#!/usr/bin/env bash
# Sets up clapd on a fresh machine: a virtual environment in .venv with the project installed in editable mode.
# Usage: scripts/setup.sh [extras]   (default extras: export,dev)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-export,dev}"

python3 -m venv .venv
.venv/bin/python -m pip install -q -e ".[${extras}]"
