"""Pipe commands that stall, and what they may see: `clapd run` with real pipes and a real broker with passwords.

A command that stops delivering audio without exiting is an outage like a dead one: killed, counted, restarted,
and the events it left ON end, so the retained state at the broker goes back to OFF. A command never sees the MQTT
password's environment variable, nor clapd's own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

from helpers import always_config
from mqtt_broker import MosquittoBroker, Received, Subscriber, free_port
from prometheus_client.parser import text_string_to_metric_families

from clapd.daemon.config import PipeSource
from clapd.daemon.ring import RingBuffer
from clapd.daemon.sources.pipe import STALL_SECONDS, PipeInput

PIPE_RATE = 16_000  # Hz of the test commands' s16le PCM
MODEL_RATE = 48_000
START_TIMEOUT = 90.0  # model load and warm-up on a busy 2-core machine
STALL_TIMEOUT = 60.0  # noticing a stall (STALL_SECONDS after the last audio) and ending the event, loaded machine
USER, PASSWORD = "clapd", "pipe-test-s3cret"
WATCHER, WATCHER_PASSWORD = "watcher", "w4tcher"
STATE_TOPIC = "clapd/cam/always/state"

# First run: 4 s of noise in real time, then 1 byte a second for ever (never exiting). Later runs: the trickle only.
STALLING_COMMAND = """
import os, sys, time
marker = sys.argv[1]
first = not os.path.exists(marker)
with open(marker, "a") as f:
    f.write("run\\n")
out = sys.stdout.buffer
if first:
    for _ in range(40):
        out.write(os.urandom(3200))  # 0.1 s of 16 kHz s16le noise
        out.flush()
        time.sleep(0.1)
while True:
    out.write(b"\\0")
    out.flush()
    time.sleep(1)
"""

# Reports what it sees of the environment, then sends silence in real time.
ENV_REPORTING_COMMAND = """
import json, os, sys, time
report = {name: os.environ.get(name) for name in ("MQTT_TEST_PASSWORD", "CLAPD_OTHER_SECRET", "CAMERA_HINT")}
with open(sys.argv[1] + ".tmp", "w") as f:
    json.dump(report, f)
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
while True:
    sys.stdout.buffer.write(bytes(3200))
    sys.stdout.flush()
    time.sleep(0.1)
"""

# 2 s of silence at once every 2 s, for ever.
BURSTY_COMMAND = """
import sys, time
while True:
    sys.stdout.buffer.write(bytes(64000))
    sys.stdout.flush()
    time.sleep(2)
"""


def pipe_stream(script: str, *args: str) -> dict:
    command = [sys.executable, "-c", textwrap.dedent(script), *args]
    return {"type": "pipe", "command": command, "sample_rate": PIPE_RATE, "restart_max_seconds": 1}


def write_config(tmp_path: Path, bundle: Path, stream: dict, mqtt: dict, **sections: object) -> Path:
    # An explicit prefix is used as given (the default, `clapd/NODE`, is tested in test_fleet.py).
    outputs = {"mqtt": {"host": "127.0.0.1", "username": USER, "qos": 1, "topic_prefix": "clapd", **mqtt}}
    return always_config(tmp_path, bundle, stream, outputs=outputs, logging={"level": "info"}, **sections)


def start(path: Path, running: list, **env: str) -> subprocess.Popen[str]:
    daemon = subprocess.Popen(
        [sys.executable, "-m", "clapd", "run", "-c", str(path)],
        env=dict(os.environ, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    running.append(daemon)
    return daemon


def stop(daemon: subprocess.Popen[str]) -> str:
    daemon.send_signal(signal.SIGTERM)
    _, stderr = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, stderr[-3000:]
    return stderr


def states(received: list[Received]) -> list[bytes]:
    return [r.payload for r in received if r.topic == STATE_TOPIC]


def back_to_off(received: list[Received]) -> bool:
    seen = states(received)
    return b"ON" in seen and seen[-1] == b"OFF" and seen.index(b"ON") < len(seen) - 1


def outages(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "clapd_source_outages_total" and sample.labels == {"stream": "cam"}:
                return sample.value
    raise AssertionError(f"no outage counter for cam in {text}")


def test_a_stalled_pipe_is_restarted_and_its_event_ends_at_the_broker(
    tmp_path: Path, small_bundle_dir: Path, brokers, subscribers, running: list
) -> None:
    broker: MosquittoBroker = brokers(users={USER: PASSWORD, WATCHER: WATCHER_PASSWORD})
    (tmp_path / "password").write_text(PASSWORD + "\n")
    metrics_port = free_port()
    path = write_config(
        tmp_path,
        small_bundle_dir,
        pipe_stream(STALLING_COMMAND, str(tmp_path / "runs")),
        {"port": broker.port, "password_file": str(tmp_path / "password")},
        metrics={"enabled": True, "port": metrics_port},
    )
    watcher: Subscriber = subscribers(broker.port, "clapd/#", username=WATCHER, password=WATCHER_PASSWORD)
    daemon = start(path, running)
    watcher.wait_for(lambda got: b"ON" in states(got), START_TIMEOUT, "the event to start")
    got = watcher.wait_for(back_to_off, STALL_TIMEOUT, "the state to go back to OFF once the pipe stalled")
    ends = [json.loads(r.payload) for r in got if r.topic == "clapd/cam/always/event"]
    assert [e["kind"] for e in ends] == ["start", "end"], ends
    assert outages(metrics_port) >= 1

    late: Subscriber = subscribers(broker.port, STATE_TOPIC, username=WATCHER, password=WATCHER_PASSWORD)
    retained = late.wait_for(lambda got: bool(got), 10, "the retained state")
    assert (retained[0].payload, retained[0].retain) == (b"OFF", True)
    runs = tmp_path / "runs"
    assert wait_for(lambda: len(runs.read_text().splitlines()) >= 2, 30), "the stalled command was not restarted"
    stderr = stop(daemon)
    assert "cam: stalled:" in stderr and "command killed" in stderr, stderr[-3000:]
    assert "always ended by the outage of its source" in stderr, stderr[-3000:]


def test_pipe_commands_do_not_see_the_mqtt_password_or_clapd_variables(
    tmp_path: Path, small_bundle_dir: Path, brokers, subscribers, running: list
) -> None:
    broker: MosquittoBroker = brokers(users={USER: PASSWORD, WATCHER: WATCHER_PASSWORD})
    report = tmp_path / "environment.json"
    path = write_config(
        tmp_path,
        small_bundle_dir,
        pipe_stream(ENV_REPORTING_COMMAND, str(report)),
        {"port": broker.port, "password_env": "MQTT_TEST_PASSWORD"},
    )
    watcher: Subscriber = subscribers(broker.port, "clapd/#", username=WATCHER, password=WATCHER_PASSWORD)
    daemon = start(path, running, MQTT_TEST_PASSWORD=PASSWORD, CLAPD_OTHER_SECRET="other", CAMERA_HINT="visible")
    watcher.wait_for(lambda got: b"online" in [r.payload for r in got], START_TIMEOUT, "online: the password works")
    deadline = time.monotonic() + 30
    while not report.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    stop(daemon)
    seen = json.loads(report.read_text())
    assert seen == {"MQTT_TEST_PASSWORD": None, "CLAPD_OTHER_SECRET": None, "CAMERA_HINT": "visible"}


# --- the watchdog on its own: a real command, no daemon ---


def wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_a_command_that_goes_silent_without_exiting_is_killed_and_restarted() -> None:
    script = "import sys, time; sys.stdout.buffer.write(bytes(32000)); sys.stdout.flush(); time.sleep(3600)"
    config = PipeSource(type="pipe", command=[sys.executable, "-c", script], sample_rate=PIPE_RATE)
    source = PipeInput("quiet", config, RingBuffer(10 * MODEL_RATE), MODEL_RATE, backoff_initial=0.1)
    source.start()
    try:
        assert wait_for(lambda: source.status().restarts >= 1, 4 * STALL_SECONDS), source.status()
        status = source.status()
        assert status.outages >= 1 and status.last_error is not None and "stalled" in status.last_error, status
        assert status.samples_written >= 0.9 * MODEL_RATE  # the second of audio before the stall was kept
    finally:
        source.stop()


def test_a_command_sending_real_time_audio_in_bursts_is_not_stalled() -> None:
    """2 s of audio at once every 2 s: real time on average, with gaps the watchdog must allow."""
    config = PipeSource(type="pipe", command=[sys.executable, "-c", BURSTY_COMMAND], sample_rate=PIPE_RATE)
    source = PipeInput("bursty", config, RingBuffer(10 * MODEL_RATE), MODEL_RATE)
    source.start()
    try:
        assert wait_for(lambda: source.status().samples_written >= 4 * 2 * MODEL_RATE, 30), source.status()
        status = source.status()
        assert (status.state, status.outages) == ("running", 0), status
    finally:
        source.stop()
