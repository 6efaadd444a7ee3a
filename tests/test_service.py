"""`clapd run` as a service: systemd's notify socket, SIGTERM, SIGHUP reloads and the metrics endpoint.

Each test runs the real console entry point in a subprocess on a small exported model, a looping file source
paced in real time, and (where the test needs one) a real mosquitto broker.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from helpers import ALWAYS, start_daemon, stop_daemon
from mqtt_broker import MosquittoBroker, Subscriber, free_port
from paho.mqtt import publish
from paho.mqtt.client import Client
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families

from clapd.daemon.windows import MAX_BATCH

RATE = 48_000
START_TIMEOUT = 90.0  # model load and warm-up on a busy 2-core machine
STOP_LIMIT = 2.0  # the promise: SIGTERM to exit
STOP_SLACK = 1.5  # the interpreter's own exit after the daemon has stopped (imports' atexit hooks, thread joins)
WATCHDOG_USEC = 1_000_000  # pings are due every half of this
ADMIN = {"username": "admin", "password": "adm1n"}  # may publish control requests
QUEUED_REQUESTS = 1500
STOP_BUDGET = 10.0  # seconds from a signal to its effect while requests queue; systemd's TimeoutStopSec is 20


class NotifySocket:
    """A real AF_UNIX datagram socket standing in for systemd's, recording each message as a dict."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        self._socket.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._socket.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            with self._lock:
                self.messages.append((time.monotonic(), fields))

    def with_key(self, key: str) -> list[tuple[float, dict[str, str]]]:
        with self._lock:
            return [(t, m) for t, m in self.messages if key in m]

    def wait_for(self, key: str, timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if found := self.with_key(key):
                return found[0][1]
            time.sleep(0.02)
        raise AssertionError(f"no {key} within {timeout} s; got {self.messages}")

    def close(self) -> None:
        self._closed.set()
        self._thread.join(2)
        self._socket.close()


@pytest.fixture
def noise_wav(tmp_path: Path) -> Path:
    path = tmp_path / "noise.wav"
    rng = np.random.default_rng(3)
    sf.write(path, (0.05 * rng.standard_normal(3 * RATE)).astype(np.float32), RATE)
    return path


def _config(tmp_path: Path, bundle: Path, wav: Path, **sections: object) -> dict:
    config = {
        "model": {"bundle": str(bundle), "providers": ["cpu"], "threads": 1},
        "windows": {"window_seconds": 1, "hop_seconds": 0.5},
        "streams": {"room": {"type": "file", "path": str(wav), "realtime": True, "loop": True}},
        "detections": {"alarm": {"prompts": ["a loud alarm"]}},
        "outputs": {"stdout": True},
        "state_dir": str(tmp_path / "state"),
    }
    config.update(sections)
    mqtt = config["outputs"].get("mqtt")
    if mqtt is not None:  # the topics these tests name; an explicit prefix is used as given (the default,
        mqtt.setdefault("topic_prefix", "clapd")  # `clapd/NODE`, is tested in test_fleet.py)
    return config


def _write(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def _metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _wait_for_metric(port: int, name: str, labels: dict[str, str], above: float, timeout: float) -> float:
    key = (name, tuple(sorted(labels.items())))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = _metrics(port).get(key)
        if value is not None and value > above:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{name}{labels} not above {above} within {timeout} s: {_metrics(port)}")


def test_notify_socket_metrics_and_sigterm(
    tmp_path: Path, small_bundle_dir: Path, noise_wav: Path, running: list
) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    port = free_port()
    metrics = {"enabled": True, "host": "127.0.0.1", "port": port}
    path = _write(tmp_path / "clapd.yaml", _config(tmp_path, small_bundle_dir, noise_wav, metrics=metrics))
    daemon = start_daemon(path, NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC=str(WATCHDOG_USEC))
    running.append(daemon)
    try:
        ready = notify.wait_for("READY", START_TIMEOUT)
        assert ready["READY"] == "1" and "listening: 1 streams, 1 detections" in ready["STATUS"]
        processed = _wait_for_metric(port, "clapd_windows_total", {"stream": "room", "outcome": "processed"}, 2, 30)
        values = _metrics(port)
        assert values[("clapd_windows_total", (("outcome", "skipped"), ("stream", "room")))] == 0
        level = values[("clapd_input_level_dbfs", (("stream", "room"),))]
        assert -30 < level < -22, level  # noise of RMS 0.05: -26 dBFS
        assert values[("clapd_inference_seconds_count", ())] >= processed / MAX_BATCH  # windows per stream per call
        assert values[("clapd_nonfinite_samples_total", (("stream", "room"),))] == 0  # clean noise
        assert values[("clapd_source_state", (("state", "running"), ("stream", "room")))] == 1
        time.sleep(2.5 * WATCHDOG_USEC / 1e6)
        elapsed, stderr = stop_daemon(daemon)
    finally:
        notify.close()
    assert daemon.returncode == 0, stderr[-3000:]
    assert elapsed < STOP_LIMIT + STOP_SLACK, f"SIGTERM took {elapsed:.2f} s"
    pings = [t for t, _ in notify.with_key("WATCHDOG")]
    assert len(pings) >= 3, notify.messages
    gaps = np.diff(pings)
    assert gaps.min() >= 0.45 * WATCHDOG_USEC / 1e6, gaps  # rate-limited to half the interval, not per loop turn
    stopping = notify.with_key("STOPPING")
    assert stopping and stopping[0][0] > notify.with_key("READY")[0][0]


def test_sigterm_publishes_offline_and_ends_open_events(
    tmp_path: Path, small_bundle_dir: Path, noise_wav: Path, broker: MosquittoBroker, subscribers, running: list
) -> None:
    """A detection that is ON when SIGTERM comes: its end event and OFF state reach the broker before "offline",
    all within the stop time. (Its only rival is its own prompt as background: every window scores 0.5.)"""
    config = _config(
        tmp_path,
        small_bundle_dir,
        noise_wav,
        detections={"always": ALWAYS},
        background_prompts=[ALWAYS["prompts"][0]],
        outputs={"mqtt": {"host": "127.0.0.1", "port": broker.port, "qos": 1}},
    )
    subscriber: Subscriber = subscribers(broker.port, "clapd/#")
    daemon = start_daemon(_write(tmp_path / "clapd.yaml", config))
    running.append(daemon)
    subscriber.wait_for(lambda got: _events(got, "start"), START_TIMEOUT, "a start event")
    elapsed, stderr = stop_daemon(daemon)
    assert daemon.returncode == 0, stderr[-3000:]
    assert elapsed < STOP_LIMIT + STOP_SLACK, f"SIGTERM took {elapsed:.2f} s"
    got = subscriber.wait_for(lambda got: got[-1].payload == b"offline", 5, "offline after the end")
    assert _events(got, "end"), got
    states = [r.payload for r in got if r.topic == "clapd/room/always/state"]
    assert states[-1] == b"OFF", states


def _events(received: list, kind: str) -> list[dict]:
    payloads = [json.loads(r.payload) for r in received if r.topic.endswith("/event")]
    return [p for p in payloads if p["kind"] == kind]


def test_sighup_swaps_detections_without_dropping_audio_and_keeps_a_bad_config_out(
    tmp_path: Path, small_bundle_dir: Path, noise_wav: Path, broker: MosquittoBroker, subscribers, running: list
) -> None:
    port = free_port()
    config = _config(
        tmp_path,
        small_bundle_dir,
        noise_wav,
        metrics={"enabled": True, "port": port},
        outputs={"mqtt": {"host": "127.0.0.1", "port": broker.port}},
    )
    path = _write(tmp_path / "clapd.yaml", config)
    subscriber: Subscriber = subscribers(broker.port, "clapd/#")
    daemon = start_daemon(path)
    running.append(daemon)
    subscriber.wait_for(lambda got: _topics(got) >= {"clapd/room/alarm/state"}, START_TIMEOUT, "the first state")
    _wait_for_metric(port, "clapd_windows_total", {"stream": "room", "outcome": "processed"}, 2, 30)

    config["detections"] = {"alarm": {"prompts": ["a fire alarm"]}, "always": ALWAYS}
    config["background_prompts"] = [ALWAYS["prompts"][0]]
    _write(path, config)
    daemon.send_signal(signal.SIGHUP)
    got = subscriber.wait_for(lambda got: _events(got, "start"), 60, "an event of the new detection")
    assert "always" in {e["detection"] for e in _events(got, "start")}
    assert "clapd/room/always/state" in _topics(got)

    path.write_text("detections: {broken: {prompts: []}}\nstreams: 7\n")
    daemon.send_signal(signal.SIGHUP)
    before = _metrics(port)
    processed_key = ("clapd_windows_total", (("outcome", "processed"), ("stream", "room")))
    _wait_for_metric(port, "clapd_windows_total", {"stream": "room", "outcome": "processed"}, before[processed_key], 30)
    assert daemon.poll() is None, "an invalid config must not stop the daemon"
    after = _metrics(port)
    assert after[("clapd_windows_total", (("outcome", "skipped"), ("stream", "room")))] == 0
    assert after[("clapd_source_outages_total", (("stream", "room"),))] == 0
    _, stderr = stop_daemon(daemon)
    assert daemon.returncode == 0
    assert "reload:" in stderr and "the running config stays" in stderr and "streams" in stderr, stderr[-3000:]
    assert "reloaded: 2 detections" in stderr


def _topics(received: list) -> set[str]:
    return {r.topic for r in received}


def test_control_over_mqtt_changes_detections_live_and_they_survive_a_restart(
    tmp_path: Path, small_bundle_dir: Path, noise_wav: Path, brokers, subscribers, running: list
) -> None:
    broker: MosquittoBroker = brokers(users={"clapd": "s3cret", "admin": "adm1n"})
    (tmp_path / "password").write_text("s3cret\n")
    mqtt = {
        "host": "127.0.0.1",
        "port": broker.port,
        "username": "clapd",
        "password_file": str(tmp_path / "password"),
        "control": {"enabled": True},
    }
    config = _config(tmp_path, small_bundle_dir, noise_wav, outputs={"mqtt": mqtt})
    config["background_prompts"] = [ALWAYS["prompts"][0]]
    path = _write(tmp_path / "clapd.yaml", config)
    watcher: Subscriber = subscribers(broker.port, "clapd/#", username="admin", password="adm1n")
    daemon = start_daemon(path)
    running.append(daemon)
    watcher.wait_for(lambda got: b"online" in [r.payload for r in got], START_TIMEOUT, "online")

    request = {"request_id": "r1", "action": "set", "detection": "always", "config": ALWAYS}
    _publish(broker.port, "clapd/control/set", request)
    got = watcher.wait_for(lambda got: _results(got), 60, "the result of r1")
    assert _results(got)[0] == {**_results(got)[0], "request_id": "r1", "ok": True}, _results(got)
    watcher.wait_for(lambda got: _events(got, "start"), 30, "an event of the detection added over MQTT")

    _publish(
        broker.port,
        "clapd/control/set",
        {"request_id": "r2", "action": "update", "detection": "always", "config": {"threshold_on": 2}},
    )
    got = watcher.wait_for(lambda got: len(_results(got)) == 2, 30, "the result of r2")
    refused = _results(got)[1]
    assert refused["ok"] is False and refused["errors"][0].startswith("config.threshold_on = 2"), refused

    _, stderr = stop_daemon(daemon)
    assert daemon.returncode == 0, stderr[-3000:]
    saved = json.loads((tmp_path / "state" / "control.json").read_text())
    assert "always" in saved["detections"], saved
    starts = len(_events(watcher.received(), "start"))
    restarted = start_daemon(path)
    running.append(restarted)
    watcher.wait_for(
        lambda got: len(_events(got, "start")) > starts, START_TIMEOUT, "the saved detection after a restart"
    )
    _, stderr = stop_daemon(restarted)
    assert restarted.returncode == 0, stderr[-3000:]


def _publish(port: int, topic: str, payload: dict) -> None:
    """One QoS 1 message as an authenticated admin would send it."""
    publish.single(
        topic,
        json.dumps(payload),
        qos=1,
        hostname="127.0.0.1",
        port=port,
        auth={"username": "admin", "password": "adm1n"},
    )


def _results(received: list) -> list[dict]:
    return [json.loads(r.payload) for r in received if r.topic == "clapd/control/result"]


# --- hostile control traffic (issue 10, items 1, 4 and 5) ---

USERS = {"clapd": "s3cret", "admin": "adm1n"}


def _controlled(tmp_path: Path, broker: MosquittoBroker, **mqtt: object) -> dict:
    """MQTT with control on, authenticated as `clapd`; `mqtt` adds or overrides fields."""
    (tmp_path / "password").write_text(USERS["clapd"] + "\n")
    return {
        "host": "127.0.0.1",
        "port": broker.port,
        "username": "clapd",
        "password_file": str(tmp_path / "password"),
        "control": {"enabled": True},
        **mqtt,
    }


def _start_logged(config_path: Path, log: Path, **env: str) -> subprocess.Popen[str]:
    """As `start_daemon`, with stdout and stderr to `log`: thousands of log lines never fill a pipe nobody reads."""
    with log.open("w") as file:
        return start_daemon(config_path, stdout=file, stderr=subprocess.STDOUT, **env)


def _stopped_within(daemon: subprocess.Popen[str], seconds: float, log: Path) -> None:
    """SIGTERM, then a bounded wait for the exit."""
    daemon.send_signal(signal.SIGTERM)
    try:
        daemon.wait(seconds)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait(10)
        raise AssertionError(f"no exit {seconds} s after SIGTERM: {log.read_text()[-3000:]}") from None


def _strict_json(path: Path) -> dict:
    """JSON as any other reader takes it: Infinity and NaN are not JSON."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"{path} holds {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_control_refuses_infinity_and_nan_naming_the_key(
    tmp_path: Path, small_bundle_dir: Path, noise_wav: Path, brokers, subscribers, running: list
) -> None:
    """1e999 (infinity to Python's JSON), NaN and -Infinity are refused naming the key and never saved (an older
    version took 1e999, saved Infinity, and its inference loop died when the event ended, at every start)."""
    broker: MosquittoBroker = brokers(users=USERS)
    path = _write(
        tmp_path / "clapd.yaml",
        _config(tmp_path, small_bundle_dir, noise_wav, outputs={"mqtt": _controlled(tmp_path, broker)}),
    )
    watcher: Subscriber = subscribers(broker.port, "clapd/#", username="admin", password="adm1n")
    daemon = start_daemon(path)
    running.append(daemon)
    watcher.wait_for(lambda got: b"online" in [r.payload for r in got], START_TIMEOUT, "online")

    raw = [  # as sent by hand: 1e999, NaN and -Infinity are what Python's JSON reads
        b'{"request_id":"inf","action":"update","detection":"alarm","config":{"cooldown_seconds":1e999}}',
        b'{"request_id":"nan","action":"update","detection":"alarm","config":{"threshold_on":NaN}}',
        b'{"request_id":"-inf","action":"set","detection":"second","config":{"prompts":["x"],'
        b'"min_duration_seconds":-Infinity}}',
        b'{"request_id":"upd","action":"update","detection":"alarm","config":{"cooldown_seconds":1e3}}',
    ]
    for payload in raw:
        publish.single("clapd/control/set", payload, qos=1, hostname="127.0.0.1", port=broker.port, auth=ADMIN)
    got = _results(watcher.wait_for(lambda got: len(_results(got)) == len(raw), 60, "every result"))
    assert {r["request_id"]: (r["ok"], r["errors"]) for r in got} == {
        "inf": (False, ["config.cooldown_seconds = inf: Input should be a finite number"]),
        "nan": (False, ["config.threshold_on = nan: Input should be a finite number"]),
        "-inf": (False, ["config.min_duration_seconds = -inf: Input should be a finite number"]),
        "upd": (True, []),
    }, got

    _, stderr = stop_daemon(daemon)
    assert daemon.returncode == 0, stderr[-3000:]
    saved = _strict_json(tmp_path / "state" / "control.json")
    assert saved["detections"]["alarm"]["cooldown_seconds"] == 1000 and list(saved["detections"]) == ["alarm"]


def test_control_refuses_a_detection_beyond_the_limit(
    tmp_path: Path, small_bundle_dir: Path, noise_wav: Path, brokers, subscribers, running: list
) -> None:
    """`max_detections`: a set adding one more is refused naming the limit; replacing and updating are taken."""
    broker: MosquittoBroker = brokers(users=USERS)
    mqtt = _controlled(tmp_path, broker, control={"enabled": True, "max_detections": 2})
    path = _write(tmp_path / "clapd.yaml", _config(tmp_path, small_bundle_dir, noise_wav, outputs={"mqtt": mqtt}))
    watcher: Subscriber = subscribers(broker.port, "clapd/#", username="admin", password="adm1n")
    daemon = start_daemon(path)
    running.append(daemon)
    watcher.wait_for(lambda got: b"online" in [r.payload for r in got], START_TIMEOUT, "online")

    for request in [
        {"request_id": "add", "action": "set", "detection": "second", "config": {"prompts": ["a dog barking"]}},
        {"request_id": "over", "action": "set", "detection": "third", "config": {"prompts": ["a cat"]}},
        {"request_id": "replace", "action": "set", "detection": "second", "config": {"prompts": ["a dog"]}},
        {"request_id": "upd", "action": "update", "detection": "alarm", "config": {"cooldown_seconds": 5}},
    ]:
        _publish(broker.port, "clapd/control/set", request)
    got = _results(watcher.wait_for(lambda got: len(_results(got)) == 4, 60, "four results"))
    assert {r["request_id"]: (r["ok"], r["errors"]) for r in got} == {
        "add": (True, []),
        "over": (
            False,
            [
                "detection = 'third': 2 detections in force, the limit (mqtt.control.max_detections = 2); "
                "remove one first, or raise the limit"
            ],
        ),
        "replace": (True, []),
        "upd": (True, []),
    }, got
    _, stderr = stop_daemon(daemon)
    assert daemon.returncode == 0, stderr[-3000:]
    assert sorted(_strict_json(tmp_path / "state" / "control.json")["detections"]) == ["alarm", "second"]


def test_a_saved_infinity_stops_the_start_with_one_line(
    tmp_path: Path, small_bundle_dir: Path, noise_wav: Path, brokers, subscribers
) -> None:
    """control.json holding Infinity (saved by an older version) is refused at start: exit 2 (a bad config, which a
    restart cannot fix), one line naming the file and the key, nothing started."""
    broker: MosquittoBroker = brokers(users=USERS)
    path = _write(
        tmp_path / "clapd.yaml",
        _config(tmp_path, small_bundle_dir, noise_wav, outputs={"mqtt": _controlled(tmp_path, broker)}),
    )
    control = tmp_path / "state" / "control.json"
    control.parent.mkdir()
    detection = {**ALWAYS, "cooldown_seconds": float("inf")}
    control.write_text(json.dumps({"version": 1, "detections": {"alarm": detection}, "removed": []}))
    assert "Infinity" in control.read_text()
    watcher: Subscriber = subscribers(broker.port, "clapd/#", username="admin", password="adm1n")
    daemon = start_daemon(path)
    try:
        stdout, stderr = daemon.communicate(timeout=START_TIMEOUT)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.communicate(timeout=10)
        raise AssertionError("the daemon started on a control.json holding Infinity") from None
    assert daemon.returncode == 2, stderr[-3000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and str(control) in lines[0], stderr
    assert "detections.alarm.cooldown_seconds = inf: Input should be a finite number" in lines[0]
    assert stdout == "" and watcher.received() == []  # never connected: no "online", no state
    assert not (tmp_path / "state" / "event-queue.sqlite3").exists()


def test_sigterm_and_sighup_are_heard_while_control_requests_queue(
    tmp_path: Path, small_bundle_dir: Path, noise_wav: Path, brokers, subscribers, running: list
) -> None:
    """1500 requests queued at once: SIGHUP reloads and SIGTERM stops within the stop budget, between two requests;
    the requests still queued are dropped (not applied, not answered) and counted in the log."""
    broker: MosquittoBroker = brokers(users=USERS)
    notify = NotifySocket(tmp_path / "notify.sock")
    path = _write(
        tmp_path / "clapd.yaml",
        _config(tmp_path, small_bundle_dir, noise_wav, outputs={"mqtt": _controlled(tmp_path, broker)}),
    )
    watcher: Subscriber = subscribers(broker.port, "clapd/#", username="admin", password="adm1n")
    log = tmp_path / "clapd.log"
    daemon = _start_logged(path, log, NOTIFY_SOCKET=str(notify.path))
    running.append(daemon)
    try:
        notify.wait_for("READY", START_TIMEOUT)
        requests = [
            {"request_id": f"r{n}", "action": "set", "detection": f"d{n}", "config": {"prompts": [f"sound {n}"]}}
            for n in range(QUEUED_REQUESTS)
        ]
        _publish_all(broker.port, requests)
        watcher.wait_for(lambda got: _results(got), 60, "the first result")
        daemon.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING", STOP_BUDGET)
        _stopped_within(daemon, STOP_BUDGET, log)
    finally:
        notify.close()
    text = log.read_text()
    assert daemon.returncode == 0, text[-3000:]
    answered = len(_results(watcher.received()))
    dropped = re.search(r"stopping: (\d+) queued control request\(s\) dropped", text)
    assert dropped is not None or answered == QUEUED_REQUESTS, text[-3000:]
    assert dropped is None or answered + int(dropped[1]) <= QUEUED_REQUESTS
    assert watcher.received("clapd/status")[-1].payload == b"offline"
    _strict_json(tmp_path / "state" / "control.json")  # whole: written atomically, whatever the stop interrupted


def test_discovery_grows_with_each_detection_added_not_with_all_of_them(
    tmp_path: Path, small_bundle_dir: Path, noise_wav: Path, brokers, subscribers, running: list
) -> None:
    """Each detection added over control announces its own two Home Assistant entities, not every entity again (an
    older version republished all of them per request: 496 requests, 273,145 discovery messages)."""
    broker: MosquittoBroker = brokers(users=USERS)
    mqtt = _controlled(tmp_path, broker, home_assistant={"enabled": True, "node_id": "n"})
    path = _write(tmp_path / "clapd.yaml", _config(tmp_path, small_bundle_dir, noise_wav, outputs={"mqtt": mqtt}))
    watcher: Subscriber = subscribers(broker.port, "#", username="admin", password="adm1n")
    daemon = start_daemon(path)
    running.append(daemon)
    first = 3  # the alarm's event and binary sensor, the room's level sensor
    watcher.wait_for(lambda got: len(_discovery(got)) >= first, START_TIMEOUT, "the first discovery configs")

    added = 50
    _publish_all(
        broker.port,
        [
            {"request_id": f"r{n}", "action": "set", "detection": f"d{n}", "config": {"prompts": ["a dog barking"]}}
            for n in range(added)
        ]
        + [{"request_id": "rm", "action": "remove", "detection": "d0"}],
    )
    got = watcher.wait_for(lambda got: len(_results(got)) == added + 1, 120, "every result")
    assert all(r["ok"] for r in _results(got)), _results(got)
    watcher.wait_for(lambda got: len(_discovery(got)) >= first + 2 * added + 2, 30, "the new configs")
    _, stderr = stop_daemon(daemon)
    assert daemon.returncode == 0, stderr[-3000:]
    sent = _discovery(watcher.received())
    # Two per request (three of slack: a reconnect would send them all again); all of them per request: 2806.
    assert len(sent) <= first + 3 * (added + 1), f"{len(sent)} discovery messages for {added + 1} requests"
    last = {r.topic: r.payload for r in sent}
    assert sum(1 for payload in last.values() if payload) == first + 2 * (added - 1)  # d0 removed
    assert sum(1 for payload in last.values() if not payload) == 2


def _discovery(received: list) -> list:
    return [r for r in received if r.topic.startswith("homeassistant/") and r.topic.endswith("/config")]


def _publish_all(port: int, payloads: list[dict]) -> None:
    """Every payload, QoS 1, in order, by one admin client as fast as the broker takes them (bounded wait)."""
    client = Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="test-admin")
    client.username_pw_set("admin", "adm1n")
    client.max_inflight_messages_set(100)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = [client.publish("clapd/control/set", json.dumps(p), qos=1) for p in payloads]
        deadline = time.monotonic() + 60
        for info in infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            assert info.is_published(), "the broker did not take every request within 60 s"
    finally:
        client.disconnect()
        client.loop_stop()
