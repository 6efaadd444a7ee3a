"""The MQTT stage against a real mosquitto on loopback: payloads, retained state and status, the last will, and the
on-disk queue across broker outages and daemon restarts."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mqtt_broker import (  # the fixtures broker, brokers and subscribers under their function names
    MosquittoBroker,
    Received,
    broker_fixture,  # noqa: F401
    brokers_fixture,  # noqa: F401
    free_port,
    make_tls_files,
    subscribers_fixture,  # noqa: F401
    wait_until,
)

from clapd import __version__
from clapd.daemon.config import MqttConfig
from clapd.daemon.event_queue import DiskQueue, OutgoingMessage
from clapd.daemon.mqtt_payloads import EventPayload, Topics, build_topic
from clapd.daemon.mqtt_publisher import MqttPublisher
from clapd.daemon.records import DetectionEvent
from clapd.daemon.stdout_publisher import StdoutPublisher

PROTOCOLS = ["3.1.1", "5"]
DELIVERY_TIMEOUT = 15.0  # seconds; covers paho's reconnect back-off of 1 + 2 + 4 s after an outage
STATUS = "clapd/status"


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
def publishers(tmp_path: Path) -> Iterator[Callable[..., MqttPublisher]]:
    """Make publishers (`publishers(port, protocol="3.1.1")`, fields as `MqttConfig`'s); stopped at teardown."""
    made: list[MqttPublisher] = []

    def make(port: int, *, queue: str = "queue.db", **fields: object) -> MqttPublisher:
        config = MqttConfig.model_validate({"host": "127.0.0.1", "port": port, **fields})
        publisher = MqttPublisher(config, tmp_path / queue, client_id_default=f"clapd-test-{len(made)}")
        made.append(publisher)
        return publisher

    yield make
    for publisher in made:
        publisher.stop(timeout=0.5)


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


def test_publisher_refuses_a_bad_name_before_queueing(tmp_path: Path) -> None:
    publisher = MqttPublisher(MqttConfig(host="127.0.0.1"), tmp_path / "q.db", client_id_default="t")
    with pytest.raises(ValueError):
        publisher.publish_event(make_event(1, stream="a/b"))
    with pytest.raises(ValueError):
        publisher.publish_state("kitchen", "c+", True)
    assert publisher.stats().queued == 0
    publisher.stop()


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
        "clapd_version": __version__,
    }


def test_stdout_publisher_writes_json_lines() -> None:
    out = io.StringIO()
    publisher = StdoutPublisher(out)
    publisher.start()
    publisher.publish_event(make_event(1))
    publisher.publish_state("kitchen", "clap", True)
    publisher.publish_event(make_event(1, "end"))
    publisher.stop()
    lines = out.getvalue().splitlines()
    assert [EventPayload.model_validate_json(line).kind for line in lines] == ["start", "end"]


# --- the disk queue ---


def message(n: int, size: int = 10) -> OutgoingMessage:
    return OutgoingMessage(f"t/{n}", bytes([n % 256]) * size, qos=1, retain=n % 2 == 0)


def test_disk_queue_keeps_order_across_reopen(tmp_path: Path) -> None:
    queue = DiskQueue(tmp_path / "q.db", max_messages=100)
    ids = [queue.push(message(n)) for n in range(6)]
    assert ids == sorted(ids) and len(queue) == 6
    queue.remove(ids[:2])
    queue.close()

    queue = DiskQueue(tmp_path / "q.db", max_messages=100)
    assert len(queue) == 4
    assert [q.message for q in queue.peek(10)] == [message(n) for n in range(2, 6)]
    assert [q.id for q in queue.peek(2, after=ids[3])] == ids[4:6]
    queue.remove(ids)
    assert queue.push(message(9)) > ids[-1]  # ids are never reused, so order holds after the queue empties
    queue.close()


def test_disk_queue_drops_the_oldest_when_full(tmp_path: Path) -> None:
    queue = DiskQueue(tmp_path / "q.db", max_messages=3)
    for n in range(5):
        queue.push(message(n))
    assert len(queue) == 3 and queue.dropped == 2
    assert [q.message.topic for q in queue.peek(10)] == ["t/2", "t/3", "t/4"]
    queue.close()
    smaller = DiskQueue(tmp_path / "q.db", max_messages=2)
    assert [q.message.topic for q in smaller.peek(10)] == ["t/3", "t/4"] and smaller.dropped == 1
    smaller.close()


def test_disk_queue_survives_a_full_disk(tmp_path: Path) -> None:
    queue = DiskQueue(tmp_path / "q.db", max_messages=10_000)
    # SQLite's page limit raises the same SQLITE_FULL "database or disk is full" as a full disk.
    (pages,) = queue._db.execute("PRAGMA page_count").fetchone()
    queue._db.execute(f"PRAGMA max_page_count = {pages + 8}")  # 8 pages of 4 KiB: a few messages of 3 kB
    for n in range(100):
        assert queue.push(message(n, size=3000)) > 0
    assert queue.dropped > 0 and len(queue) + queue.dropped == 100
    assert queue.peek(1000)[-1].message == message(99, size=3000)
    assert queue.push(message(0, size=200_000)) == 0  # larger than the whole database may grow: dropped itself
    queue.close()


def test_disk_queue_is_thread_safe(tmp_path: Path) -> None:
    queue = DiskQueue(tmp_path / "q.db", max_messages=10_000)
    pushed: list[int] = []

    def push_many() -> None:
        pushed.extend(queue.push(message(n)) for n in range(50))

    threads = [threading.Thread(target=push_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(set(pushed)) == 200 and len(queue) == 200
    queue.close()


# --- against the broker ---


def has_payload(topic: str, payload: bytes) -> Callable[[list[Received]], bool]:
    return lambda got: any(m.topic == topic and m.payload == payload for m in got)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_events_state_and_status(protocol: str, broker: MosquittoBroker, publishers, subscribers) -> None:
    live = subscribers(broker.port, "clapd/#")
    publisher = publishers(broker.port, protocol=protocol)
    publisher.start()
    live.wait_for(has_payload(STATUS, b"online"), 5, "online")

    publisher.publish_event(make_event(1))
    publisher.publish_state("kitchen", "clap", True)
    publisher.publish_event(make_event(1, "end"))
    publisher.publish_state("kitchen", "clap", False)
    live.wait_for(lambda got: len(got) >= 5, 5, "two events and two states")
    events = live.received("clapd/kitchen/clap/event")
    assert [json.loads(m.payload) for m in events] == [
        json.loads(EventPayload.from_event(make_event(1, kind)).to_json()) for kind in ("start", "end")
    ]
    assert [m.payload for m in live.received("clapd/kitchen/clap/state")] == [b"ON", b"OFF"]

    late = subscribers(broker.port, "clapd/#")  # a newcomer sees the retained status and state, and no event
    got = late.wait_for(lambda got: len(got) >= 2, 5, "retained messages")
    assert {(m.topic, m.payload, m.retain) for m in got} == {
        (STATUS, b"online", True),
        ("clapd/kitchen/clap/state", b"OFF", True),
    }

    publisher.stop()
    live.wait_for(has_payload(STATUS, b"offline"), 5, "offline")
    stats = publisher.stats()
    assert (stats.sent, stats.queued, stats.dropped, stats.connects, stats.connected) == (4, 0, 0, 1, False)
    retained = subscribers(broker.port, STATUS).wait_for(lambda got: len(got) == 1, 5, "retained status")
    assert retained[0].payload == b"offline"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_events_queued_while_the_broker_is_down_arrive_in_order(
    protocol: str, broker: MosquittoBroker, publishers, subscribers
) -> None:
    # A persistent session on a broker with persistence: the subscription, and what is published before the
    # subscriber is back, survive the restart, so what arrives is exactly what the publisher delivered.
    watcher = subscribers(broker.port, "clapd/+/+/event", persistent=True)
    publisher = publishers(broker.port, protocol=protocol)
    publisher.start()
    wait_until(lambda: publisher.stats().connected, 5, "the publisher to connect")

    broker.stop()
    wait_until(lambda: not publisher.stats().connected, 5, "the publisher to notice")
    for n in range(20):
        publisher.publish_event(make_event(n))
    assert publisher.stats().queued == 20
    broker.start()

    expected = [f"e{n}" for n in range(20)]
    got = watcher.wait_for(lambda got: set(event_ids(got)) >= set(expected), DELIVERY_TIMEOUT, "20 events")
    assert first_seen(event_ids(got)) == expected
    wait_until(lambda: publisher.stats().queued == 0, 5, "the queue to empty")
    stats = publisher.stats()
    assert (stats.sent, stats.dropped, stats.connects, stats.disconnects) == (20, 0, 2, 1)


def test_a_restarted_daemon_delivers_the_old_queue(broker: MosquittoBroker, publishers, subscribers) -> None:
    watcher = subscribers(broker.port, "clapd/+/+/event", persistent=True)
    broker.stop()
    first = publishers(broker.port)
    first.start()
    for n in range(5):
        first.publish_event(make_event(n))
    first.stop()
    assert first.stats().queued == 5

    second = publishers(broker.port)  # the same queue file
    assert second.stats().queued == 5
    second.start()
    broker.start()
    got = watcher.wait_for(lambda got: len(set(event_ids(got))) >= 5, DELIVERY_TIMEOUT, "the old events")
    assert first_seen(event_ids(got)) == [f"e{n}" for n in range(5)]
    wait_until(lambda: second.stats().queued == 0, 5, "the queue to empty")


def test_unacknowledged_messages_stay_queued_until_acknowledged(
    broker: MosquittoBroker, publishers, subscribers
) -> None:
    watcher = subscribers(broker.port, "clapd/+/+/event", persistent=True)
    first = publishers(broker.port)
    first.start()
    wait_until(lambda: first.stats().connected, 5, "the publisher to connect")
    with broker.paused():  # SIGSTOP: the connection stays up, the bytes are taken, no ack comes back
        for n in range(3):
            first.publish_event(make_event(n))
        first.stop(timeout=0.3)
    assert (first.stats().queued, first.stats().sent) == (3, 0)

    second = publishers(broker.port)
    second.start()
    wait_until(lambda: second.stats().queued == 0, DELIVERY_TIMEOUT, "the re-sent messages to be acknowledged")
    got = watcher.wait_for(lambda got: len(set(event_ids(got))) >= 3, 5, "the events")
    assert first_seen(event_ids(got)) == ["e0", "e1", "e2"]  # the first copies arrived late; duplicates are allowed


def test_the_queue_is_bounded(broker: MosquittoBroker, publishers, subscribers) -> None:
    watcher = subscribers(broker.port, "clapd/+/+/event", persistent=True)
    broker.stop()
    publisher = publishers(broker.port, queue_max_events=5)
    publisher.start()
    for n in range(8):
        publisher.publish_event(make_event(n))
    assert (publisher.stats().queued, publisher.stats().dropped) == (5, 3)
    broker.start()
    got = watcher.wait_for(lambda got: len(set(event_ids(got))) >= 5, DELIVERY_TIMEOUT, "the newest 5")
    wait_until(lambda: publisher.stats().queued == 0, 5, "the queue to empty")
    assert first_seen(event_ids(got)) == [f"e{n}" for n in range(3, 8)]


CRASHING_DAEMON = """
import sys, time
from pathlib import Path
from clapd.daemon.config import MqttConfig
from clapd.daemon.mqtt_publisher import MqttPublisher
config = MqttConfig(host="127.0.0.1", port=int(sys.argv[1]))
publisher = MqttPublisher(config, Path(sys.argv[2]), client_id_default="doomed")
publisher.start()
time.sleep(60)
"""


def test_the_last_will_says_offline_when_the_daemon_dies(broker: MosquittoBroker, subscribers, tmp_path: Path) -> None:
    live = subscribers(broker.port, STATUS)
    args = [sys.executable, "-c", CRASHING_DAEMON, str(broker.port), str(tmp_path / "q.db")]
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
    brokers, publishers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    broker = brokers(users={"clapd": "right horse battery"})
    wrong = tmp_path / "wrong-password"
    wrong.write_text("wrong horse battery\n")
    caplog.set_level(logging.INFO, logger="clapd.daemon.mqtt_publisher")
    refused = publishers(broker.port, queue="refused.db", username="clapd", password_file=wrong)
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
    accepted = publishers(broker.port, queue="accepted.db", username="clapd", password_env="CLAPD_TEST_PASSWORD")
    accepted.start()
    wait_until(lambda: accepted.stats().connected, 5, "the right password to be accepted")


def test_tls_with_a_private_ca(
    brokers, publishers, subscribers, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca, cert, key = make_tls_files(tmp_path)
    tls_port = free_port()
    broker = brokers(extra_config=f"listener {tls_port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}")
    watcher = subscribers(broker.port, "clapd/+/+/event")  # on the plain listener
    publisher = publishers(tls_port, tls={"ca_file": ca})
    publisher.start()
    publisher.publish_event(make_event(7))
    got = watcher.wait_for(lambda got: len(got) >= 1, 5, "an event over TLS")
    assert event_ids(got) == ["e7"]

    untrusting = publishers(tls_port, queue="untrusting.db", tls={})  # the system's CAs do not know ours
    untrusting.start()
    wait_until(lambda: "certificate verify failed" in caplog.text, 5, "the TLS failure to be logged")
    assert not untrusting.stats().connected
