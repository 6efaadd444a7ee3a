"""What `clapd run` and `clapd check-config` do with unusable files: a garbage spool in state_dir is moved aside and
replaced, a missing or non-UTF-8 password file stops start-up with one line, a pipe command that does not exist is
a config problem; the spool is private (0600). Real files, a real broker with passwords, the real command line."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from helpers import ALWAYS, always_config, run_clapd
from mqtt_broker import MosquittoBroker, Subscriber, free_port
from prometheus_client.parser import text_string_to_metric_families

from clapd.daemon.mqtt.spool import SPOOL_FILE, OutgoingMessage, Spool, SpoolError

START_TIMEOUT = 90.0  # model load and warm-up on a busy 2-core machine
USER, PASSWORD = "clapd", "spool-test-s3cret"
WATCHER, WATCHER_PASSWORD = "watcher", "w4tcher"
GARBAGE = b"this is not an SQLite database, just bytes left by a bad disk\n" * 50


SILENCE_COMMAND = """
import sys, time
while True:
    sys.stdout.buffer.write(bytes(3200))  # 0.1 s of 16 kHz s16le silence
    sys.stdout.flush()
    time.sleep(0.1)
"""


def silence_pipe() -> dict:
    return {"type": "pipe", "command": [sys.executable, "-c", SILENCE_COMMAND], "sample_rate": 16000}


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


# --- a garbage spool ---


def test_a_garbage_spool_is_moved_aside_and_a_new_one_delivers(
    tmp_path: Path, small_bundle_dir: Path, brokers, subscribers
) -> None:
    broker: MosquittoBroker = brokers(users={USER: PASSWORD, WATCHER: WATCHER_PASSWORD})
    (tmp_path / "password").write_text(PASSWORD + "\n")
    state = tmp_path / "state"
    state.mkdir()
    (state / SPOOL_FILE).write_bytes(GARBAGE)
    metrics_port = free_port()
    mqtt = {"host": "127.0.0.1", "port": broker.port, "username": USER, "password_file": str(tmp_path / "password")}
    mqtt["topic_prefix"] = "clapd"  # used as given (the default, `clapd/NODE`, is tested in test_fleet.py)
    path = always_config(
        tmp_path,
        small_bundle_dir,
        silence_pipe(),
        outputs={"mqtt": mqtt},
        metrics={"enabled": True, "port": metrics_port},
    )
    watcher: Subscriber = subscribers(broker.port, "clapd/#", username=WATCHER, password=WATCHER_PASSWORD)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "clapd", "run", "-c", str(path)], stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _events(watcher) and daemon.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert daemon.poll() is None, "the daemon exited"
        assert _events(watcher), f"no event through the new spool within {START_TIMEOUT} s"
        set_aside = _metric(metrics_port, "clapd_queue_set_aside_total")
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, stderr[-3000:]
    assert set_aside == 1
    aside = [p for p in state.iterdir() if p.name.startswith(SPOOL_FILE + ".corrupt-")]
    assert len(aside) == 1 and aside[0].read_bytes() == GARBAGE, sorted(p.name for p in state.iterdir())
    errors = [line for line in stderr.splitlines() if "ERROR clapd.daemon.mqtt.spool" in line]
    assert len(errors) == 1 and str(state / SPOOL_FILE) in errors[0] and str(aside[0]) in errors[0], stderr[-3000:]
    assert "Traceback" not in stderr
    assert mode(state / SPOOL_FILE) == 0o600 and mode(state / (SPOOL_FILE + "-journal")) == 0o600


def _events(watcher: Subscriber) -> list:
    return [r for r in watcher.received() if r.topic.endswith("/event")]


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]
    assert len(samples) == 1, text
    return samples[0].value


def test_a_spool_with_another_table_layout_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / SPOOL_FILE
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE messages (topic TEXT, body BLOB)")
        db.execute("INSERT INTO messages VALUES ('t', x'00')")
    db.close()
    spool = Spool(path, 10)
    try:
        assert (len(spool), spool.set_aside) == (0, 1)
        assert spool.push(OutgoingMessage("clapd/x", b"p", 1, False)) > 0
    finally:
        spool.close()
    (aside,) = tmp_path.glob(SPOOL_FILE + ".corrupt-*[0-9TZ]")
    with sqlite3.connect(aside) as db:
        assert db.execute("SELECT topic FROM messages").fetchall() == [("t",)]
    db.close()


def test_a_valid_spool_that_cannot_be_opened_now_is_never_moved_aside(tmp_path: Path) -> None:
    """Locked by another process (a second daemon on the same state_dir): an error, and the messages stay."""
    path = tmp_path / SPOOL_FILE
    spool = Spool(path, 10)
    spool.push(OutgoingMessage("clapd/x", b"kept", 1, False))
    spool.close()
    holder = sqlite3.connect(path, timeout=0)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(SpoolError, match="cannot open the MQTT spool"):
            Spool(path, 10)
    finally:
        holder.rollback()
        holder.close()
    assert not list(tmp_path.glob("*.corrupt-*"))
    reopened = Spool(path, 10)
    try:
        assert [m.message.payload for m in reopened.peek(10)] == [b"kept"] and reopened.set_aside == 0
    finally:
        reopened.close()


def test_the_spool_and_its_journal_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        fresh = Spool(tmp_path / "new" / SPOOL_FILE, 10)
        fresh.push(OutgoingMessage("clapd/x", b"p", 1, False))
        fresh.close()
        earlier = tmp_path / "earlier.sqlite3"  # left 0644 by an earlier version
        sqlite3.connect(earlier).close()
        earlier.chmod(0o644)
        Spool(earlier, 10).close()
    finally:
        os.umask(old)
    folder = tmp_path / "new"
    assert {p.name: mode(p) for p in folder.iterdir()} == {
        SPOOL_FILE: 0o600,
        SPOOL_FILE + "-journal": 0o600,
        SPOOL_FILE + "-reserve": 0o600,
    }
    assert mode(folder) == 0o700 and mode(earlier) == 0o600


# --- the MQTT password file ---


@pytest.mark.parametrize("case", ["missing", "not UTF-8"])
def test_an_unusable_password_file_stops_run_with_one_line(case: str, tmp_path: Path, small_bundle_dir: Path) -> None:
    password_file = tmp_path / "mqtt-password"
    if case == "not UTF-8":
        password_file.write_bytes(PASSWORD.encode() + b"\xff\xfe\n")
    mqtt = {"host": "127.0.0.1", "port": free_port(), "username": USER, "password_file": str(password_file)}
    path = always_config(tmp_path, small_bundle_dir, silence_pipe(), outputs={"mqtt": mqtt})
    result = run_clapd("run", "-c", str(path), timeout=120)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and PASSWORD not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.startswith("clapd run:")]
    assert len(lines) == 1 and "(mqtt.password_file)" in lines[0], result.stderr[-3000:]
    assert ("No such file" if case == "missing" else "not UTF-8") in lines[0]


# --- check-config ---


def test_check_config_names_a_pipe_command_that_cannot_run(tmp_path: Path, small_bundle_dir: Path) -> None:
    not_executable = tmp_path / "capture.sh"
    not_executable.write_text("#!/bin/sh\n")
    config = {
        "streams": {
            "front": {"type": "pipe", "command": ["no-such-command-clapd-test", "-i", "x"], "sample_rate": 16000},
            "back": {"type": "pipe", "command": [str(not_executable)], "sample_rate": 16000},
            "side": silence_pipe(),
        },
        "detections": {"always": ALWAYS},
    }
    path = tmp_path / "clapd.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_clapd("check-config", str(path), timeout=60)
    assert result.returncode == 2, result.stderr
    assert "2 problem(s)" in result.stderr
    assert "streams.front.command: 'no-such-command-clapd-test' not found on PATH" in result.stderr
    assert f"streams.back.command: '{not_executable}'" in result.stderr and "streams.side" not in result.stderr
    del config["streams"]["front"], config["streams"]["back"]
    path.write_text(yaml.safe_dump(config))
    assert run_clapd("check-config", str(path), timeout=60).returncode == 0
