"""The MQTT output against a real mosquitto on loopback: payloads, retained state and status, the last will, and
the spool across broker outages and daemon restarts."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.publish
import pytest
from mqtt_broker import MosquittoBroker, Received, free_port, make_tls_files, wait_until

from clapd import __version__
from clapd.daemon.config import DetectionConfig, MqttConfig
from clapd.daemon.mqtt import MqttOutput, build_mqtt
from clapd.daemon.mqtt.payloads import EventPayload, Topics, build_topic
from clapd.daemon.output import Output, OutputStats
from clapd.daemon.records import DetectionEvent, Scores, StateChange
from clapd.daemon.stdout_output import StdoutOutput

PROTOCOLS = ["3.1.1", "5"]
DELIVERY_TIMEOUT = 15.0  # seconds; covers paho's reconnect back-off of 1 + 2 + 4 s after an outage
HOSTNAME = "test-host"  # the node id of every output here: the default prefix is `clapd/test-host`
PREFIX = f"clapd/{HOSTNAME}"
STATUS = f"{PREFIX}/status"
EVENTS = f"{PREFIX}/+/+/event"


def make_event(n: int, kind: str = "start", *, stream: str = "kitchen", detection: str = "clap") -> DetectionEvent:
    end = kind == "end"
    return DetectionEvent(
        event_id=f"e{n}",
        kind=kind,  # type: ignore[arg-type]
        stream=stream,
        detection=detection,
        start_sample=48_000 * n,
        end_sample=48_000 * n + 24_000 if end else None,
        start_utc=f"2025-01-01T00:00:{n:02d}+00:00",
        end_utc=f"2025-01-01T00:00:{n:02d}.500000+00:00" if end else None,
        peak_score=0.75,
        mean_score=0.625,
        sample_rate=48_000,
    )


def event_ids(messages: list[Received]) -> list[str]:
    return [json.loads(m.payload)["event_id"] for m in messages if m.topic.endswith("/event")]


def first_seen(ids: list[str]) -> list[str]:
    """Ids in order of first arrival (QoS 1 may deliver a duplicate; never a loss)."""
    return list(dict.fromkeys(ids))


@pytest.fixture
def outputs(tmp_path: Path) -> Iterator[Callable[..., MqttOutput]]:
    """Make MQTT outputs (`outputs(port, protocol="3.1.1")`, fields as `MqttConfig`'s), each with its spool in the
    state directory `tmp_path / state`; stopped at teardown."""
    made: list[MqttOutput] = []

    def make(port: int, *, state: str = "state", **fields: object) -> MqttOutput:
        config = MqttConfig.model_validate({"host": "127.0.0.1", "port": port, **fields})
        output = build_mqtt(
            config, tmp_path / state, client_id_default=f"clapd-test-{len(made)}", hostname=HOSTNAME
        ).output
        made.append(output)
        return output

    yield make
    for output in made:
        output.stop(timeout=0.5)


# --- topics and payloads ---


@pytest.mark.parametrize("level", ["a+b", "#", "a/b", "a\0b", ""])
def test_topic_levels_with_wildcards_or_separators_are_refused(level: str) -> None:
    with pytest.raises(ValueError):
        build_topic("clapd", level, "event")
    with pytest.raises(ValueError):
        Topics("clapd").state("kitchen", level)


@pytest.mark.parametrize("prefix", ["clapd/+", "#", "a//b", "/clapd", "$SYS"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ValueError):
        Topics(prefix)


def test_output_refuses_a_bad_name_before_spooling(tmp_path: Path) -> None:
    output = build_mqtt(MqttConfig(host="127.0.0.1"), tmp_path, client_id_default="t").output
    with pytest.raises(ValueError):
        output.publish_event(make_event(1, stream="a/b"))
    with pytest.raises(ValueError):
        output.publish_state(StateChange("kitchen", "c+", True))
    assert output.stats().queued == 0
    output.stop()


def test_the_mqtt_output_is_an_output_that_takes_no_scores(tmp_path: Path) -> None:
    link = build_mqtt(MqttConfig(host="127.0.0.1"), tmp_path, client_id_default="t")
    assert isinstance(link.output, Output) and not link.output.wants_scores and link.control is None
    link.output.publish_scores(Scores("kitchen", 0, 48_000, {"clap": 0.9}))  # scores are off by default: nothing
    assert link.output.stats() == OutputStats(sent=0, dropped=0, queued=0, connected=False)
    link.output.stop()


def test_event_payload_schema() -> None:
    payload = json.loads(EventPayload.from_event(make_event(3, "end")).to_json())
    assert payload == {
        "event_id": "e3",
        "kind": "end",
        "event_type": "end",
        "stream": "kitchen",
        "detection": "clap",
        "start_utc": "2025-01-01T00:00:03+00:00",
        "end_utc": "2025-01-01T00:00:03.500000+00:00",
        "start_offset_seconds": 3.0,
        "end_offset_seconds": 3.5,
        "peak_score": 0.75,
        "mean_score": 0.625,
        "description": None,  # anomaly events only
        "clip": None,  # an end event's clip file, where the detection keeps clips
        "clip_url": None,  # and its address on the local web page, when that is on
        "clapd_version": __version__,
    }


def test_stdout_output_writes_json_lines() -> None:
    out = io.StringIO()
    output = StdoutOutput(out)
    output.start()
    output.publish_event(make_event(1))
    output.publish_state(StateChange("kitchen", "clap", True))
    output.publish_event(make_event(1, "end"))
    output.stop()
    lines = out.getvalue().splitlines()
    assert [EventPayload.model_validate_json(line).kind for line in lines] == ["start", "end"]


# --- against the broker ---


def has_payload(topic: str, payload: bytes) -> Callable[[list[Received]], bool]:
    return lambda got: any(m.topic == topic and m.payload == payload for m in got)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_events_state_and_status(protocol: str, broker: MosquittoBroker, outputs, subscribers) -> None:
    live = subscribers(broker.port, f"{PREFIX}/#")
    output = outputs(broker.port, protocol=protocol)
    output.start()
    live.wait_for(has_payload(STATUS, b"online"), 5, "online")

    output.publish_event(make_event(1))
    output.publish_state(StateChange("kitchen", "clap", True))
    output.publish_event(make_event(1, "end"))
    output.publish_state(StateChange("kitchen", "clap", False))
    live.wait_for(lambda got: len(got) >= 5, 5, "two events and two states")
    events = live.received(f"{PREFIX}/kitchen/clap/event")
    assert [json.loads(m.payload) for m in events] == [
        json.loads(EventPayload.from_event(make_event(1, kind)).to_json()) for kind in ("start", "end")
    ]
    assert [m.payload for m in live.received(f"{PREFIX}/kitchen/clap/state")] == [b"ON", b"OFF"]

    late = subscribers(broker.port, f"{PREFIX}/#")  # a newcomer sees the retained status and state, and no event
    got = late.wait_for(lambda got: len(got) >= 2, 5, "retained messages")
    assert {(m.topic, m.payload, m.retain) for m in got} == {
        (STATUS, b"online", True),
        (f"{PREFIX}/kitchen/clap/state", b"OFF", True),
    }

    output.stop()
    live.wait_for(has_payload(STATUS, b"offline"), 5, "offline")
    stats = output.stats()
    assert (stats.sent, stats.queued, stats.dropped, stats.connects, stats.connected) == (4, 0, 0, 1, False)
    retained = subscribers(broker.port, STATUS).wait_for(lambda got: len(got) == 1, 5, "retained status")
    assert retained[0].payload == b"offline"


def test_a_state_left_older_downstream_is_published_again(broker: MosquittoBroker, outputs, subscribers) -> None:
    """A retained "ON" put back after the event ended (what a mosquitto bridge's reconnect can leave at the centre:
    tests/test_fleet.py) is replaced by the current "OFF" within state_refresh_seconds, and stays replaced; a
    detection no longer configured (not announced) is not published again."""
    state, removed = f"{PREFIX}/kitchen/knock/state", f"{PREFIX}/kitchen/clap/state"
    live = subscribers(broker.port, f"{PREFIX}/kitchen/+/state")
    output = outputs(broker.port, state_refresh_seconds=1)
    output.start()
    for detection in ("clap", "knock"):  # clap first: a refresh publishes it before knock
        output.publish_state(StateChange("kitchen", detection, True))
        output.publish_state(StateChange("kitchen", detection, False))
    live.wait_for(lambda got: {m.topic for m in got if m.payload == b"OFF"} == {state, removed}, 5, "both OFF")
    output.announce(["kitchen"], {"knock": DetectionConfig(prompts=["a knock"])})  # clap was removed
    stale_from = len(live.received())
    for topic in (removed, state):
        paho.mqtt.publish.single(topic, b"ON", qos=1, retain=True, hostname="127.0.0.1", port=broker.port)
    live.wait_for(
        lambda got: [m.payload for m in got[stale_from:] if m.topic == state][-2:] == [b"ON", b"OFF"],
        10,
        "knock's older ON, then its current OFF again",
    )
    assert [m.payload for m in live.received(removed)][-1] == b"ON"  # the removed detection's is left alone
    retained = subscribers(broker.port, state).wait_for(lambda got: len(got) == 1, 5, "the retained state")
    assert (retained[0].payload, retained[0].retain) == (b"OFF", True)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_events_spooled_while_the_broker_is_down_arrive_in_order(
    protocol: str, broker: MosquittoBroker, outputs, subscribers
) -> None:
    # A persistent session on a broker with persistence: the subscription, and what is published before the
    # subscriber is back, survive the restart, so what arrives is exactly what the output delivered.
    watcher = subscribers(broker.port, EVENTS, persistent=True)
    output = outputs(broker.port, protocol=protocol)
    output.start()
    wait_until(lambda: output.stats().connected, 5, "the output to connect")

    broker.stop()
    wait_until(lambda: not output.stats().connected, 5, "the output to notice")
    for n in range(20):
        output.publish_event(make_event(n))
    assert output.stats().queued == 20
    broker.start()

    expected = [f"e{n}" for n in range(20)]
    got = watcher.wait_for(lambda got: set(event_ids(got)) >= set(expected), DELIVERY_TIMEOUT, "20 events")
    assert first_seen(event_ids(got)) == expected
    wait_until(lambda: output.stats().queued == 0, 5, "the spool to empty")
    stats = output.stats()
    assert (stats.sent, stats.dropped, stats.connects, stats.disconnects) == (20, 0, 2, 1)


def test_a_restarted_daemon_delivers_the_old_spool(broker: MosquittoBroker, outputs, subscribers) -> None:
    watcher = subscribers(broker.port, EVENTS, persistent=True)
    broker.stop()
    first = outputs(broker.port)
    first.start()
    for n in range(5):
        first.publish_event(make_event(n))
    first.stop()
    assert first.stats().queued == 5

    second = outputs(broker.port)  # the same state directory, so the same spool
    assert second.stats().queued == 5
    second.start()
    broker.start()
    got = watcher.wait_for(lambda got: len(set(event_ids(got))) >= 5, DELIVERY_TIMEOUT, "the old events")
    assert first_seen(event_ids(got)) == [f"e{n}" for n in range(5)]
    wait_until(lambda: second.stats().queued == 0, 5, "the spool to empty")


def test_unacknowledged_messages_stay_spooled_until_acknowledged(broker: MosquittoBroker, outputs, subscribers) -> None:
    watcher = subscribers(broker.port, EVENTS, persistent=True)
    first = outputs(broker.port)
    first.start()
    wait_until(lambda: first.stats().connected, 5, "the output to connect")
    with broker.paused():  # SIGSTOP: the connection stays up, the bytes are taken, no ack comes back
        for n in range(3):
            first.publish_event(make_event(n))
        first.stop(timeout=0.3)
    assert (first.stats().queued, first.stats().sent) == (3, 0)

    second = outputs(broker.port)
    second.start()
    wait_until(lambda: second.stats().queued == 0, DELIVERY_TIMEOUT, "the re-sent messages to be acknowledged")
    got = watcher.wait_for(lambda got: len(set(event_ids(got))) >= 3, 5, "the events")
    assert first_seen(event_ids(got)) == ["e0", "e1", "e2"]  # the first copies arrived late; duplicates are allowed


def test_the_spool_is_bounded(broker: MosquittoBroker, outputs, subscribers) -> None:
    watcher = subscribers(broker.port, EVENTS, persistent=True)
    broker.stop()
    output = outputs(broker.port, queue_max_events=5)
    output.start()
    for n in range(8):
        output.publish_event(make_event(n))
    assert (output.stats().queued, output.stats().dropped) == (5, 3)
    broker.start()
    got = watcher.wait_for(lambda got: len(set(event_ids(got))) >= 5, DELIVERY_TIMEOUT, "the newest 5")
    wait_until(lambda: output.stats().queued == 0, 5, "the spool to empty")
    assert first_seen(event_ids(got)) == [f"e{n}" for n in range(3, 8)]


CRASHING_DAEMON = """
import sys, time
from pathlib import Path
from clapd.daemon.config import MqttConfig
from clapd.daemon.mqtt import build_mqtt
config = MqttConfig(host="127.0.0.1", port=int(sys.argv[1]))
output = build_mqtt(config, Path(sys.argv[2]), client_id_default="doomed", hostname=sys.argv[3]).output
output.start()
time.sleep(60)
"""


def test_the_last_will_says_offline_when_the_daemon_dies(broker: MosquittoBroker, subscribers, tmp_path: Path) -> None:
    live = subscribers(broker.port, STATUS)
    args = [sys.executable, "-c", CRASHING_DAEMON, str(broker.port), str(tmp_path / "state"), HOSTNAME]
    with subprocess.Popen(args) as daemon:
        try:
            live.wait_for(has_payload(STATUS, b"online"), 10, "online")
        finally:
            daemon.kill()  # SIGKILL: no goodbye, the broker must publish the will
    got = live.wait_for(lambda got: got[-1].payload == b"offline", 5, "the last will")
    assert [m.payload for m in got] == [b"online", b"offline"]
    retained = subscribers(broker.port, STATUS).wait_for(lambda got: len(got) == 1, 5, "retained status")
    assert retained[0].payload == b"offline"


def test_bad_credentials_are_refused_with_back_off_and_logged_once(
    brokers, outputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    broker = brokers(users={"clapd": "right horse battery"})
    wrong = tmp_path / "wrong-password"
    wrong.write_text("wrong horse battery\n")
    caplog.set_level(logging.INFO, logger="clapd.daemon.mqtt")
    refused = outputs(broker.port, state="refused", username="clapd", password_file=wrong)
    began = time.monotonic()
    refused.start()
    wait_until(lambda: refused.stats().auth_failures >= 2, 5, "two refusals")
    assert time.monotonic() - began >= 0.9  # the second try waited for the back-off
    stats = refused.stats()
    assert (stats.connected, stats.connects, stats.auth_failures) == (False, 0, 2)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "refused" in errors[0]
    assert "wrong horse" not in caplog.text

    monkeypatch.setenv("CLAPD_TEST_PASSWORD", "right horse battery")
    accepted = outputs(broker.port, state="accepted", username="clapd", password_env="CLAPD_TEST_PASSWORD")
    accepted.start()
    wait_until(lambda: accepted.stats().connected, 5, "the right password to be accepted")


def test_tls_with_a_private_ca(brokers, outputs, subscribers, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ca, cert, key = make_tls_files(tmp_path)
    tls_port = free_port()
    broker = brokers(extra_config=f"listener {tls_port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}")
    watcher = subscribers(broker.port, EVENTS)  # on the plain listener
    output = outputs(tls_port, tls={"ca_file": ca})
    output.start()
    output.publish_event(make_event(7))
    got = watcher.wait_for(lambda got: len(got) >= 1, 5, "an event over TLS")
    assert event_ids(got) == ["e7"]

    untrusting = outputs(tls_port, state="untrusting", tls={})  # the system's CAs do not know ours
    untrusting.start()
    wait_until(lambda: "certificate verify failed" in caplog.text, 5, "the TLS failure to be logged")
    assert not untrusting.stats().connected
