"""MQTT security through the MQTT output against a real mosquitto: TLS with a private CA, passwords, an ACL; what a
misconfigured daemon logs (never the password), and that refusals are retried with growing back-off."""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mqtt_broker import POLL_SECONDS, MosquittoBroker, Received, TlsFiles, connack, make_tls_files, wait_until
from paho.mqtt.enums import MQTTProtocolVersion

from clapd.daemon.config import MqttConfig
from clapd.daemon.mqtt import MqttOutput, build_mqtt
from clapd.daemon.records import DetectionEvent

USER, PASSWORD = "clapd", "Correct-Horse-7731"
WATCHER, WATCHER_PASSWORD = "watcher", "Watcher-Owl-4410"
WRONG_PASSWORD = "Wrong-Zebra-1188"
ACL = f"user {USER}\ntopic readwrite clapd/#\n\nuser {WATCHER}\ntopic read clapd/#\n"
NOT_AUTHORIZED = 135  # CONNACK/PUBACK reason code; paho maps MQTT 3.1.1's "not authorised" (5) to it
RECONNECT_MIN_SECONDS, RECONNECT_MAX_SECONDS = 1, 4
BACK_OFF_WATCH_SECONDS = 9.0  # refusals at about 0, 1, 3 and 7 s; the next would come at 11 s
DELIVERY_TIMEOUT = 10.0  # seconds; covers one full back-off step (4 s) with room for a loaded machine
LOG_TIMEOUT = 5.0
HOSTNAME = "test-host"  # every output's node id: topics under `clapd/test-host`, within the ACL's `clapd/#`
PREFIX = f"clapd/{HOSTNAME}"
EVENT_TOPICS = f"{PREFIX}/+/+/event"


def make_event(n: int) -> DetectionEvent:
    return DetectionEvent(
        event_id=f"e{n}",
        kind="start",
        stream="kitchen",
        detection="clap",
        start_sample=48_000 * n,
        end_sample=None,
        start_utc=f"2025-01-01T00:00:{n:02d}+00:00",
        end_utc=None,
        peak_score=0.75,
        mean_score=0.625,
        sample_rate=48_000,
    )


def first_seen_ids(messages: list[Received]) -> list[str]:
    """Event ids in order of first arrival (QoS 1 may repeat one, never lose one)."""
    return list(dict.fromkeys(json.loads(m.payload)["event_id"] for m in messages if m.topic.endswith("/event")))


def has_ids(n: int) -> Callable[[list[Received]], bool]:
    return lambda got: len(first_seen_ids(got)) >= n


def logged_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def auth_failure_times(output: MqttOutput, seconds: float) -> list[float]:
    """Watch the output's `auth_failures` for `seconds`: when (s from now) each refusal was counted."""
    began = time.monotonic()
    times: list[float] = []
    while (now := time.monotonic() - began) < seconds:
        count = output.stats().auth_failures
        times.extend([now] * (count - len(times)))
        time.sleep(POLL_SECONDS)
    return times


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    return make_tls_files(tmp_path / "tls")


@pytest.fixture
def secure_broker(brokers: Callable[..., MosquittoBroker], tls_files: TlsFiles) -> MosquittoBroker:
    """Passwords for USER and WATCHER (no anonymous clients), the ACL, and a TLS listener on `tls_port`."""
    return brokers(users={USER: PASSWORD, WATCHER: WATCHER_PASSWORD}, acl=ACL, tls=tls_files)


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    """USER's password as a credentials file usually is: one line, with its newline."""
    path = tmp_path / "mqtt-password"
    path.write_text(PASSWORD + "\n")
    return path


@pytest.fixture
def outputs(tmp_path: Path) -> Iterator[Callable[..., MqttOutput]]:
    """Make outputs (`outputs(port, username=..., tls=...)`, fields as `MqttConfig`'s) reconnecting after
    1, 2, 4, 4, ... s; stopped at teardown."""
    made: list[MqttOutput] = []

    def make(port: int, *, state: str = "state", **fields: object) -> MqttOutput:
        config = MqttConfig.model_validate({"host": "127.0.0.1", "port": port, **fields})
        output = build_mqtt(
            config,
            tmp_path / state,
            client_id_default=f"clapd-test-{len(made)}",
            hostname=HOSTNAME,
            reconnect_min_seconds=RECONNECT_MIN_SECONDS,
            reconnect_max_seconds=RECONNECT_MAX_SECONDS,
        ).output
        made.append(output)
        return output

    yield make
    for output in made:
        output.stop(timeout=0.5)


# --- TLS ---


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_tls_and_a_password_deliver_to_a_tls_subscriber(
    protocol: str, secure_broker: MosquittoBroker, tls_files: TlsFiles, password_file: Path, outputs, subscribers
) -> None:
    port = secure_broker.tls_port
    watcher = subscribers(port, "clapd/#", username=WATCHER, password=WATCHER_PASSWORD, ca_file=tls_files.ca)
    output = outputs(port, protocol=protocol, username=USER, password_file=password_file, tls={"ca_file": tls_files.ca})
    output.start()
    for n in range(3):
        output.publish_event(make_event(n))
    got = watcher.wait_for(has_ids(3), DELIVERY_TIMEOUT, "three events over TLS")
    assert first_seen_ids(got) == ["e0", "e1", "e2"]
    assert any(m.topic == f"{PREFIX}/status" and m.payload == b"online" for m in got)
    wait_until(lambda: output.stats().queued == 0, LOG_TIMEOUT, "the acknowledgements")
    stats = output.stats()
    assert (stats.connected, stats.connects, stats.auth_failures, stats.dropped) == (True, 1, 0, 0)


@pytest.mark.parametrize("insecure", [False, True], ids=["verified", "insecure"])
def test_a_broker_signed_by_another_ca_is_refused(
    insecure: bool, secure_broker: MosquittoBroker, password_file: Path, outputs, tmp_path: Path, caplog
) -> None:
    """mqtt.tls.insecure skips the hostname check only: a certificate from an unknown CA stays refused."""
    caplog.set_level(logging.INFO)
    other_ca = make_tls_files(tmp_path / "other").ca
    tls = {"ca_file": other_ca, "insecure": insecure}
    output = outputs(secure_broker.tls_port, username=USER, password_file=password_file, tls=tls)
    output.start()
    wait_until(lambda: logged_errors(caplog), LOG_TIMEOUT, "the TLS failure to be logged")
    (error,) = logged_errors(caplog)
    assert f"127.0.0.1:{secure_broker.tls_port}" in error
    assert "certificate verify failed" in error
    assert "retrying" in error
    assert not output.stats().connected and output.stats().connects == 0


def test_a_hostname_mismatch_is_refused_unless_insecure(
    brokers, password_file: Path, outputs, subscribers, tmp_path: Path, caplog
) -> None:
    caplog.set_level(logging.INFO)
    elsewhere = make_tls_files(tmp_path / "elsewhere", names=("DNS:broker.invalid",))  # not 127.0.0.1
    broker = brokers(users={USER: PASSWORD, WATCHER: WATCHER_PASSWORD}, tls=elsewhere)
    watcher = subscribers(broker.port, EVENT_TOPICS, username=WATCHER, password=WATCHER_PASSWORD)
    auth = {"username": USER, "password_file": password_file}

    strict = outputs(broker.tls_port, state="strict", tls={"ca_file": elsewhere.ca}, **auth)
    strict.start()
    strict.publish_event(make_event(1))
    wait_until(lambda: logged_errors(caplog), LOG_TIMEOUT, "the TLS failure to be logged")
    (error,) = logged_errors(caplog)
    assert "certificate verify failed" in error and "mismatch" in error and "127.0.0.1" in error

    lenient = outputs(broker.tls_port, state="lenient", tls={"ca_file": elsewhere.ca, "insecure": True}, **auth)
    lenient.start()
    lenient.publish_event(make_event(2))
    assert first_seen_ids(watcher.wait_for(has_ids(1), DELIVERY_TIMEOUT, "the event over TLS")) == ["e2"]
    assert "hostname is not verified" in caplog.text  # insecure says so when it starts
    assert not strict.stats().connected and strict.stats().queued == 1


# --- passwords ---


def test_a_wrong_password_is_retried_with_growing_back_off_and_never_logged(
    secure_broker: MosquittoBroker, outputs, subscribers, tmp_path: Path, caplog
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, paho's included
    watcher = subscribers(secure_broker.port, EVENT_TOPICS, username=WATCHER, password=WATCHER_PASSWORD)
    wrong = tmp_path / "wrong-password"
    wrong.write_text(WRONG_PASSWORD + "\n")
    output = outputs(secure_broker.port, username=USER, password_file=wrong)
    for n in range(3):
        output.publish_event(make_event(n))
    output.start()
    times = auth_failure_times(output, BACK_OFF_WATCH_SECONDS)

    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert 3 <= len(times) <= 4, f"refusals at {times} s"  # a tight loop would make hundreds
    assert gaps[0] >= 0.9 * RECONNECT_MIN_SECONDS and gaps == sorted(gaps), f"gaps {gaps} s"
    broker_refusals = secure_broker.log_lines  # each refusal it logged was counted, and none other happened
    wait_until(lambda: len(broker_refusals("not authorised")) == len(times), LOG_TIMEOUT, "the broker's log")
    stats = output.stats()
    assert (stats.connected, stats.connects, stats.queued) == (False, 0, 3)

    (error,) = logged_errors(caplog)  # one line for the problem, not one per attempt
    assert "refused" in error and "Not authorized" in error and "mqtt.username" in error and "back-off" in error
    for record in caplog.records:
        assert WRONG_PASSWORD not in record.getMessage() and WRONG_PASSWORD not in repr(record.args)
    assert WRONG_PASSWORD not in secure_broker.log_file.read_text()

    secure_broker.set_users({USER: WRONG_PASSWORD, WATCHER: WATCHER_PASSWORD})
    secure_broker.reload()  # the broker learns the password: the same output gets in at its next attempt
    got = watcher.wait_for(has_ids(3), DELIVERY_TIMEOUT + RECONNECT_MAX_SECONDS, "the spooled events")
    assert first_seen_ids(got) == ["e0", "e1", "e2"]


def test_a_fixed_password_file_delivers_what_was_spooled_in_order(
    secure_broker: MosquittoBroker, outputs, subscribers, tmp_path: Path
) -> None:
    watcher = subscribers(secure_broker.port, EVENT_TOPICS, username=WATCHER, password=WATCHER_PASSWORD)
    credential = tmp_path / "mqtt-password"
    credential.write_text(WRONG_PASSWORD + "\n")
    refused = outputs(secure_broker.port, username=USER, password_file=credential)
    refused.start()
    wait_until(lambda: refused.stats().auth_failures >= 1, LOG_TIMEOUT, "the refusal")
    for n in range(5):
        refused.publish_event(make_event(n))
    refused.stop(timeout=0.5)
    assert refused.stats().queued == 5

    credential.write_text(PASSWORD + "\n")
    fixed = outputs(
        secure_broker.port, username=USER, password_file=credential
    )  # the same state directory, so the same spool
    fixed.start()
    got = watcher.wait_for(has_ids(5), DELIVERY_TIMEOUT, "the spooled events")
    assert first_seen_ids(got) == [f"e{n}" for n in range(5)]
    wait_until(lambda: fixed.stats().queued == 0, LOG_TIMEOUT, "the spool to empty")
    assert fixed.stats().auth_failures == 0


@pytest.mark.parametrize("protocol", [MQTTProtocolVersion.MQTTv311, MQTTProtocolVersion.MQTTv5], ids=["3.1.1", "5"])
def test_anonymous_clients_are_refused(
    protocol: MQTTProtocolVersion, secure_broker: MosquittoBroker, tls_files: TlsFiles
) -> None:
    assert connack(secure_broker.port, protocol=protocol).value == NOT_AUTHORIZED
    assert connack(secure_broker.tls_port, protocol=protocol, ca_file=tls_files.ca).value == NOT_AUTHORIZED
    assert connack(secure_broker.port, protocol=protocol, username=USER, password=PASSWORD).value == 0


@pytest.mark.parametrize("source", ["password_env", "password_file"])
def test_the_password_comes_from_the_environment_or_a_file(
    source: str, secure_broker: MosquittoBroker, outputs, password_file: Path, monkeypatch
) -> None:
    monkeypatch.setenv("CLAPD_TEST_MQTT_PASSWORD", PASSWORD)
    value = "CLAPD_TEST_MQTT_PASSWORD" if source == "password_env" else password_file  # the file ends in "\n"
    output = outputs(secure_broker.port, username=USER, **{source: value})
    output.start()
    wait_until(lambda: output.stats().connected, LOG_TIMEOUT, "the password to be accepted")
    assert output.stats().auth_failures == 0


def unreadable_file(tmp_path: Path) -> Path:
    if os.geteuid() == 0:
        pytest.skip("root reads a file whatever its mode")
    path = tmp_path / "locked"
    path.write_text(PASSWORD)
    path.chmod(0)
    return path


PASSWORD_SOURCE_ERRORS = {  # case -> (MqttConfig fields, made in tmp_path; what the error says)
    "unset variable": (
        lambda tmp: {"password_env": "CLAPD_TEST_UNSET"},
        r"CLAPD_TEST_UNSET \(mqtt.password_env\) is not set",
    ),
    "missing file": (lambda tmp: {"password_file": tmp / "absent"}, r"absent \(mqtt.password_file\).*No such file"),
    "a directory": (lambda tmp: {"password_file": tmp}, r"\(mqtt.password_file\): Is a directory"),
    "unreadable file": (lambda tmp: {"password_file": unreadable_file(tmp)}, r"locked .*Permission denied"),
}


@pytest.mark.parametrize("case", PASSWORD_SOURCE_ERRORS)
def test_a_missing_password_source_fails_at_start_naming_it(case: str, outputs, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("CLAPD_TEST_UNSET", raising=False)
    fields, expected = PASSWORD_SOURCE_ERRORS[case]
    output = outputs(1883, username=USER, **fields(tmp_path))
    with pytest.raises(RuntimeError, match=expected) as raised:
        output.start()
    assert PASSWORD not in "".join(traceback.format_exception(raised.value))


def test_a_password_file_that_is_not_text_fails_without_showing_it(outputs, tmp_path: Path) -> None:
    path = tmp_path / "binary"
    path.write_bytes(PASSWORD.encode() + b"\xff\n")
    output = outputs(1883, username=USER, password_file=path)
    with pytest.raises(RuntimeError, match="is not UTF-8 text") as raised:
        output.start()
    assert PASSWORD not in "".join(traceback.format_exception(raised.value))


# --- the ACL ---


def test_a_topic_the_acl_forbids_is_dropped_and_counted(
    secure_broker: MosquittoBroker, password_file: Path, outputs, caplog
) -> None:
    """MQTT 5 says "not authorized" in the PUBACK: the message is dropped, not retried (3.1.1 brokers stay silent)."""
    caplog.set_level(logging.INFO)
    output = outputs(
        secure_broker.port, protocol="5", username=USER, password_file=password_file, topic_prefix="elsewhere"
    )
    output.start()
    output.publish_event(make_event(1))
    wait_until(lambda: output.stats().dropped == 1, DELIVERY_TIMEOUT, "the refusal to be counted")
    stats = output.stats()
    assert (stats.connected, stats.queued, stats.sent, stats.auth_failures) == (True, 0, 0, 0)
    assert "the broker refused a message (Not authorized)" in caplog.text
