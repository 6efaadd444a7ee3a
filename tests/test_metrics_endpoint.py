"""The metrics endpoint of a real `clapd run` under idle connections: bounded threads and descriptors, idle
connections closed by the server, scrapes still served, and a warning when it listens beyond loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml
from helpers import start_daemon, stop_daemon
from mqtt_broker import free_port

from clapd.daemon.metrics import CONNECTION_TIMEOUT_SECONDS, MAX_CONNECTIONS, is_loopback

RATE = 48_000
START_TIMEOUT = 90.0  # model load and warm-up on a busy 2-core machine
IDLE_CONNECTIONS = 200
SETTLE_SECONDS = 1.0  # for the daemon to accept what it will accept of the idle connections
CLOSE_TIMEOUT = 10 * CONNECTION_TIMEOUT_SECONDS + 30  # every idle connection closed by the server, loaded machine
SCRAPE_TIMEOUT = 4 * CONNECTION_TIMEOUT_SECONDS + 30
EXTRA_THREADS = MAX_CONNECTIONS + 2  # handler threads, and slack for a pipe's or paho's short-lived thread
EXTRA_DESCRIPTORS = MAX_CONNECTIONS + 8


def proc_threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no thread count")


def proc_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def scrape_when_served(port: int, timeout: float) -> str:
    """A scrape, retried while the endpoint answers 503 (busy) or not at all, within `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return scrape(port)
        except (urllib.error.URLError, OSError) as e:
            if time.monotonic() > deadline:
                raise AssertionError(f"no scrape served within {timeout} s: {e}") from e
            time.sleep(0.2)


def closed_by_server(sock: socket.socket, deadline: float) -> bool:
    """Read until the server closes the connection (whatever it said first); False at the deadline."""
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(4096):
                return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
    return False


def test_idle_connections_are_bounded_and_closed_and_scrapes_still_served(
    tmp_path: Path, small_bundle_dir: Path
) -> None:
    wav = tmp_path / "noise.wav"
    sf.write(wav, (0.05 * np.random.default_rng(3).standard_normal(3 * RATE)).astype(np.float32), RATE)
    port = free_port()
    config = {
        "model": {"bundle": str(small_bundle_dir), "providers": ["cpu"], "threads": 1},
        "windows": {"window_seconds": 1, "hop_seconds": 0.5},
        "streams": {"room": {"type": "file", "path": str(wav), "realtime": True, "loop": True}},
        "detections": {"alarm": {"prompts": ["a loud alarm"]}},
        "outputs": {"stdout": True},
        "metrics": {"enabled": True, "host": "0.0.0.0", "port": port},
        "state_dir": str(tmp_path / "state"),
    }
    path = tmp_path / "clapd.yaml"
    path.write_text(yaml.safe_dump(config))
    daemon = start_daemon(path, stdout=subprocess.DEVNULL)
    idle: list[socket.socket] = []
    try:
        scrape_when_served(port, START_TIMEOUT)
        threads, descriptors = proc_threads(daemon.pid), proc_descriptors(daemon.pid)
        idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(IDLE_CONNECTIONS)]
        time.sleep(SETTLE_SECONDS)
        assert proc_threads(daemon.pid) <= threads + EXTRA_THREADS, (threads, proc_threads(daemon.pid))
        assert proc_descriptors(daemon.pid) <= descriptors + EXTRA_DESCRIPTORS
        assert "clapd_windows_total" in scrape_when_served(port, SCRAPE_TIMEOUT)
        deadline = time.monotonic() + CLOSE_TIMEOUT
        still_open = [n for n, sock in enumerate(idle) if not closed_by_server(sock, deadline)]
        assert not still_open, f"{len(still_open)} idle connections still open after {CLOSE_TIMEOUT} s"
        assert "clapd_windows_total" in scrape(port)
        assert daemon.poll() is None
    finally:
        for sock in idle:
            sock.close()
        _, stderr = stop_daemon(daemon)
    assert daemon.returncode == 0, stderr[-3000:]
    warnings = [line for line in stderr.splitlines() if "WARNING clapd.daemon.metrics" in line]
    assert any("0.0.0.0" in line and "no authentication" in line for line in warnings), stderr[-3000:]


def test_loopback_hosts_are_told_apart_from_the_rest() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::")
