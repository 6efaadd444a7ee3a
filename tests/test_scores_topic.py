"""What it hears over MQTT: `clapd run` with the demo bundle on two demo streams publishes each stream's top scores on
`PREFIX/STREAM/scores`, at most one window per `scores_interval_seconds` of that stream's audio, QoS 0, not retained;
with the broker away they are dropped and counted, never spooled."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from helpers import run_clapd
from mqtt_broker import MosquittoBroker, free_port
from paho.mqtt.client import Client, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion

import clapd
from clapd.daemon.config import MqttConfig
from clapd.daemon.demo import DEMO_DETECTIONS, DEMO_WINDOWS, demo_detections
from clapd.daemon.mqtt import build_mqtt
from clapd.daemon.mqtt.spool import SPOOL_FILE, Spool
from clapd.daemon.records import Scores
from clapd.models.demo_stream import PlannedEvent, make_demo_stream

DEMO_BUNDLE = Path(clapd.__file__).parent / "demo_bundle"
PREFIX = "scores-test"
STREAMS = ("kitchen", "hall")
SECONDS = 8.0  # of audio per stream, played in real time
ALARM = PlannedEvent("smoke_alarm", 1.5, 7.0)
INTERVAL = 1.0  # s between published windows: every other window at the demo's 0.5 s hop
TOP_K = 3
WINDOW_S, HOP_S = DEMO_WINDOWS["window_seconds"], DEMO_WINDOWS["hop_seconds"]
KEYS = {"stream", "start_utc", "start_offset_seconds", "end_offset_seconds", "scores", "level_dbfs"}


def write_config(tmp_path: Path, port: int, *, realtime: bool) -> Path:
    wav = make_demo_stream(seed=21, seconds=SECONDS, events=[ALARM]).write_wav(tmp_path / "alarm.wav")
    config = {
        "model": {"bundle": str(DEMO_BUNDLE), "providers": ["cpu"], "threads": 1},
        "windows": DEMO_WINDOWS,
        "streams": {name: {"type": "file", "path": str(wav), "realtime": realtime} for name in STREAMS},
        "detections": demo_detections(),
        "outputs": {
            "mqtt": {
                "host": "127.0.0.1",
                "port": port,
                "topic_prefix": PREFIX,
                "scores_interval_seconds": INTERVAL,
                "scores_top_k": TOP_K,
            }
        },
        "state_dir": str(tmp_path / "state"),
    }
    path = tmp_path / "clapd.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class QosRecorder:
    """A subscriber at QoS 1 that keeps each message's delivered QoS: the broker delivers at the lower of the
    publication's and the subscription's, so 0 here means clapd published at QoS 0."""

    def __init__(self, port: int, topic_filter: str) -> None:
        self.messages: list[MQTTMessage] = []
        self._subscribed = threading.Event()
        self._client = Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="scores-recorder")
        self._client.on_connect = lambda client, *_: client.subscribe(topic_filter, qos=1)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = lambda client, userdata, message: self.messages.append(message)
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        assert self._subscribed.wait(10), f"not subscribed to {topic_filter} within 10 s"

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@pytest.fixture
def recorder(broker: MosquittoBroker) -> Iterator[QosRecorder]:
    recorder = QosRecorder(broker.port, f"{PREFIX}/+/scores")
    try:
        yield recorder
    finally:
        recorder.close()


def test_each_stream_publishes_its_top_scores_at_most_once_per_interval(
    tmp_path: Path, broker: MosquittoBroker, recorder: QosRecorder
) -> None:
    result = run_clapd("run", "-c", str(write_config(tmp_path, broker.port, realtime=True)), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    messages = list(recorder.messages)
    assert {m.topic for m in messages} == {f"{PREFIX}/{name}/scores" for name in STREAMS}
    assert all(m.qos == 0 and not m.retain for m in messages), [(m.topic, m.qos, m.retain) for m in messages]
    last_window = SECONDS - WINDOW_S  # the start of the last full window
    for name in STREAMS:
        payloads = [json.loads(m.payload) for m in messages if m.topic == f"{PREFIX}/{name}/scores"]
        assert all(set(p) == KEYS and p["stream"] == name for p in payloads), payloads[0]
        offsets = [p["start_offset_seconds"] for p in payloads]
        # One window per interval of the stream's audio (every other window), up to the last: a window may be
        # missing only at the very start, before the first connection was up.
        assert offsets == [float(k) for k in range(round(offsets[0]), round(last_window) + 1)], offsets
        assert len(offsets) >= 4, offsets
        times = [datetime.fromisoformat(p["start_utc"]) for p in payloads]
        gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]
        assert all(gap >= INTERVAL - 0.001 for gap in gaps), gaps  # milliseconds in the ISO times
        for payload in payloads:
            scores = payload["scores"]
            assert len(scores) == TOP_K and {s["detection"] for s in scores} <= set(DEMO_DETECTIONS), scores
            values = [s["score"] for s in scores]
            assert values == sorted(values, reverse=True) and all(0 <= v <= 1 for v in values), scores
            assert payload["end_offset_seconds"] == pytest.approx(payload["start_offset_seconds"] + WINDOW_S)
        # The windows wholly inside the smoke alarm put it first.
        inside = [p for p in payloads if ALARM.start_s <= p["start_offset_seconds"] <= ALARM.end_s - WINDOW_S]
        assert inside and all(p["scores"][0]["detection"] == "smoke_alarm" for p in inside), inside
        levels = [p["level_dbfs"] for p in payloads if p["level_dbfs"] is not None]
        assert levels and all(-60 < level < 0 for level in levels), levels  # room tone at -50 dBFS, the alarm louder


def test_scores_are_dropped_and_counted_while_the_broker_is_away_never_spooled(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    result = run_clapd("run", "-c", str(write_config(tmp_path, port, realtime=False)), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    published = round((SECONDS - WINDOW_S) / INTERVAL) + 1  # would have been, per stream
    assert f"MQTT: {published * len(STREAMS)} scores messages were dropped" in result.stderr, result.stderr[-3000:]
    spool = Spool(tmp_path / "state" / SPOOL_FILE, 10_000, reserve_bytes=0)
    try:
        topics = [spooled.message.topic for spooled in spool.peek(10_000)]
    finally:
        spool.close()
    assert any(topic.endswith("/smoke_alarm/event") for topic in topics), topics  # the spool did keep events
    assert not [topic for topic in topics if topic.endswith("/scores")], topics


def test_the_mqtt_output_thins_per_stream_and_counts_what_it_could_not_send(tmp_path: Path) -> None:
    """Not connected (never started): every window due by the interval is dropped and counted, the others skipped;
    nothing reaches the spool."""
    config = MqttConfig(host="127.0.0.1", port=free_port(), scores_interval_seconds=INTERVAL)
    output = build_mqtt(config, tmp_path, client_id_default="t").output
    rate = 48_000
    for stream in STREAMS:
        for start in range(0, 4 * rate, rate // 2):  # 4 s of windows at a 0.5 s hop
            output.publish_scores(Scores(stream, start, start + 2 * rate, {"a": 0.5}, "2026-01-01T00:00:00", rate))
    stats = output.stats()
    assert output.wants_scores and stats.scores_dropped == 4 * len(STREAMS) and stats.queued == 0
    output.stop()
