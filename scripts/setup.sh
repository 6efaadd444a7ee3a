#!/usr/bin/env bash
# Sets up clapd on a fresh machine: system packages, a virtual environment in .venv, the project in editable mode.
# Usage: scripts/setup.sh [extras]   (default extras: export,dev)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-export,dev}"

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    # libportaudio2: sounddevice's PortAudio; mosquitto: the broker the tests talk to.
    missing=()
    for pkg in libportaudio2 mosquitto; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[${extras}]"
