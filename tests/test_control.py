"""Run-time control over MQTT: requests parsed and validated like the config file, applied, persisted, answered on a
real (authenticated) mosquitto; and the level topic."""

from __future__ import annotations

import json
import math
import queue
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.publish
import pytest
from mqtt_broker import MosquittoBroker, wait_until

from clapd.daemon.config import ConfigError, DetectionConfig, MqttConfig, parse_config
from clapd.daemon.control import (
    MAX_CONTROL_PAYLOAD_BYTES,
    ControlChannel,
    ControlError,
    ControlRequest,
    ControlResult,
    ControlStore,
    apply_request,
    parse_request,
)
from clapd.daemon.mqtt import MqttLink, build_mqtt
from clapd.daemon.mqtt.payloads import level_payload
from clapd.daemon.records import LevelReading

TIMEOUT = 5.0  # seconds, for every wait on the broker
QUIET = 0.5  # seconds to wait for something that must not arrive
HOSTNAME = "test-host"  # every link's node id: topics under `clapd/test-host`
PREFIX = f"clapd/{HOSTNAME}"
STREAMS = ["kitchen", "hall"]
DETECTIONS = {
    "smoke": DetectionConfig(prompts=["a smoke alarm"], threshold_on=0.5, threshold_off=0.3),
    "dog": DetectionConfig(prompts=["a dog barking"], streams=["hall"]),
}


def request(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def parsed(payload: bytes) -> ControlRequest:
    outcome = parse_request(payload)
    assert isinstance(outcome, ControlRequest), outcome
    return outcome


def refused(payload: bytes, *, retained: bool = False) -> ControlResult:
    outcome = parse_request(payload, retained=retained)
    assert isinstance(outcome, ControlResult) and not outcome.ok and outcome.errors, outcome
    return outcome


# --- the config refuses control without an authenticated broker ---

MINIMAL = {"streams": {"kitchen": {"type": "mic"}}, "detections": {"alarm": {"prompts": ["an alarm"]}}}


@pytest.mark.parametrize(
    "mqtt",
    [
        {"host": "h", "control": {"enabled": True}},
        {"host": "h", "username": "clapd", "control": {"enabled": True}},
        {"host": "h", "password_env": "PW", "control": {"enabled": True}},
    ],
)
def test_control_needs_a_username_and_a_password(mqtt: dict) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({**MINIMAL, "outputs": {"mqtt": mqtt}})
    assert any(p.startswith("outputs.mqtt: ") and "authenticated broker" in p for p in caught.value.problems)


def test_control_with_credentials_is_accepted() -> None:
    mqtt = {"host": "h", "username": "clapd", "password_file": "/run/pw", "control": {"enabled": True}}
    assert parse_config({**MINIMAL, "outputs": {"mqtt": mqtt}}).outputs.mqtt.control.enabled  # type: ignore[union-attr]


# --- parsing ---


def test_valid_requests() -> None:
    add = parsed(request(request_id="r1", action="set", detection="glass", config={"prompts": ["glass breaking"]}))
    assert (add.request_id, add.action, add.detection, add.config) == (
        "r1",
        "set",
        "glass",
        {"prompts": ["glass breaking"]},
    )
    update = parsed(request(action="update", detection="smoke", config={"threshold_on": 0.7, "streams": None}))
    assert update.request_id is None and update.config == {"threshold_on": 0.7, "streams": None}
    assert parsed(request(action="remove", detection="dog")).config is None


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"{not json", "(payload): not a JSON document"),
        (b"\xff\xfe\x00garbage", "(payload): not a JSON document"),
        (b"[1, 2]", "(payload): must be a JSON object, not list"),
        (b'"set"', "(payload): must be a JSON object, not str"),
        (request(detection="smoke"), "action: Field required"),
        (request(action="rename", detection="smoke"), "action = 'rename': Input should be 'set', 'update', 'remove',"),
        (request(action=5, detection="smoke"), "action = 5:"),
        (request(action="remove", detection=3), "detection = 3: Input should be a valid string"),
        (request(action="remove", detection="a+b"), "detection = 'a+b': String should match pattern"),
        (request(action="remove", detection="#"), "detection = '#': String should match pattern"),
        (request(action="remove", detection="a/b"), "detection = 'a/b': String should match pattern"),
        (request(action="remove", detection=""), "detection = '': String should match pattern"),
        (request(action="remove", detection="dog", colour="red"), "colour = 'red': Extra inputs are not permitted"),
        (request(action="remove", detection="dog", request_id=7), "request_id = 7: Input should be a valid string"),
        (request(action="remove", detection="dog", config={}), "config: remove takes no config"),
        (request(action="set", detection="dog"), "config: set needs a config"),
        (request(action="set", detection="dog", config="x"), "config = 'x': Input should be a valid dictionary"),
        (request(action="set", detection="dog", config={"prompts": []}), "config: Value error, give prompts (text)"),
        (request(action="set", detection="dog", config={"threshold_on": 0.5}), "config: Value error, give prompts"),
        (request(action="set", detection="dog", config={"examples": ["/nowhere.wav"]}), "config.examples.0 = '/now"),
        (request(action="set", detection="d", config={"prompts": ["x"], "treshold": 1}), "config.treshold = 1: Extra"),
        (request(action="update", detection="dog", config={}), "config = {}: update needs at least one field"),
        (request(action="update", detection="dog", config={"threshold_on": "hi"}), "config.threshold_on = 'hi':"),
        (request(action="update", detection="dog", config={"threshold_on": 1.5}), "config.threshold_on = 1.5:"),
        (request(action="update", detection="dog", config={"prompts": None}), "config.prompts = None:"),
        (request(action="update", detection="dog", config={"streams": ["a/b"]}), "config.streams.0 = 'a/b':"),
        (request(action="update", detection="dog", config={"mute": True}), "config.mute = True: Extra inputs"),
    ],
)
def test_invalid_requests_are_refused_naming_the_key(payload: bytes, expected: str) -> None:
    result = refused(payload)
    assert any(error.startswith(expected) for error in result.errors), result.errors


def test_a_refusal_echoes_what_it_can() -> None:
    result = refused(request(request_id="r9", action="set", detection="a/b", config={"prompts": ["x"]}))
    assert (result.request_id, result.action, result.detection) == ("r9", "set", "a/b")
    every = refused(request(request_id="r3", action="set", detection="d/", config={"prompts": [], "x": 1}))
    assert len(every.errors) == 1  # the name is wrong: the config is not looked at before the envelope is right
    both = refused(request(request_id="r4", action="set", detection="d", config={"prompts": "a", "x": 1}))
    assert len(both.errors) == 2 and both.detection == "d"
    assert json.loads(both.to_json()) == {
        "request_id": "r4",
        "ok": False,
        "action": "set",
        "detection": "d",
        "errors": both.errors,
    }


def test_retained_oversized_and_deep_payloads_are_refused() -> None:
    assert "retained" in refused(request(action="remove", detection="dog"), retained=True).errors[0]
    assert "bytes, more than" in refused(b" " * (MAX_CONTROL_PAYLOAD_BYTES + 1)).errors[0]
    assert "not a JSON document" in refused(b"[" * 50_000).errors[0]
    assert "not a JSON document" in refused(b'{"request_id": ' + b"9" * 5000 + b"}").errors[0]


# --- applying ---


def test_set_adds_or_replaces_update_merges_remove_removes() -> None:
    before = dict(DETECTIONS)
    added = apply_request(
        DETECTIONS, parsed(request(action="set", detection="glass", config={"prompts": ["g"]})), STREAMS
    )
    assert added["glass"] == DetectionConfig(prompts=["g"]) and added["smoke"] is DETECTIONS["smoke"]
    replaced = apply_request(
        DETECTIONS, parsed(request(action="set", detection="dog", config={"prompts": ["woof"]})), STREAMS
    )
    assert replaced["dog"] == DetectionConfig(prompts=["woof"])  # a whole new detection: streams back to all
    updated = apply_request(
        DETECTIONS, parsed(request(action="update", detection="dog", config={"threshold_on": 0.8})), STREAMS
    )
    assert updated["dog"] == DETECTIONS["dog"].model_copy(update={"threshold_on": 0.8})
    removed = apply_request(DETECTIONS, parsed(request(action="remove", detection="dog")), STREAMS)
    assert list(removed) == ["smoke"]
    assert DETECTIONS == before


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (request(action="set", detection="d", config={"prompts": ["x"], "streams": ["attic"]}), "unknown streams"),
        (request(action="update", detection="dog", config={"streams": ["kitchen", "attic"]}), "['attic']"),
        (
            request(action="update", detection="smoke", config={"threshold_off": 0.6}),
            "config: Value error, threshold_off",
        ),
        (
            request(action="update", detection="cat", config={"threshold_on": 0.6}),
            "detection = 'cat': no such detection",
        ),
        (request(action="remove", detection="cat"), "detection = 'cat': no such detection (there are: dog, smoke)"),
    ],
)
def test_apply_refuses_what_the_config_would(payload: bytes, expected: str) -> None:
    with pytest.raises(ControlError) as caught:
        apply_request(DETECTIONS, parsed(payload), STREAMS)
    assert any(expected in problem for problem in caught.value.problems), caught.value.problems


def test_the_last_detection_stays() -> None:
    only = {"smoke": DETECTIONS["smoke"]}
    with pytest.raises(ControlError, match="the last detection cannot be removed"):
        apply_request(only, parsed(request(action="remove", detection="smoke")), STREAMS)


def test_a_request_built_in_code_is_validated_too() -> None:
    unchecked = ControlRequest(action="set", detection="d", config={"prompts": "not a list"})
    with pytest.raises(ControlError, match="config.prompts"):
        apply_request(DETECTIONS, unchecked, STREAMS)
    unchecked = ControlRequest(action="update", detection="dog", config={"colour": "red"})
    with pytest.raises(ControlError, match="config.colour = 'red': Extra inputs"):
        apply_request(DETECTIONS, unchecked, STREAMS)


# --- persisting ---


def test_changes_survive_a_restart(tmp_path: Path) -> None:
    store = ControlStore(tmp_path / "control.json")
    assert store.merge(DETECTIONS) == DETECTIONS  # nothing saved yet
    live = apply_request(
        DETECTIONS, parsed(request(action="set", detection="glass", config={"prompts": ["g"]})), STREAMS
    )
    live = apply_request(live, parsed(request(action="remove", detection="dog")), STREAMS)
    live = apply_request(
        live, parsed(request(action="update", detection="smoke", config={"threshold_on": 0.9})), STREAMS
    )
    store.save(live, DETECTIONS)
    assert [p.name for p in tmp_path.iterdir()] == ["control.json"]  # no temporary file left
    saved = json.loads((tmp_path / "control.json").read_text())
    assert sorted(saved["detections"]) == ["glass", "smoke"] and saved["removed"] == ["dog"]

    restarted = ControlStore(tmp_path / "control.json").merge(DETECTIONS, STREAMS)
    assert restarted == live


def test_saved_changes_that_no_longer_fit_are_skipped(tmp_path: Path) -> None:
    store = ControlStore(tmp_path / "control.json")
    live = apply_request(
        DETECTIONS, parsed(request(action="update", detection="dog", config={"threshold_on": 0.9})), STREAMS
    )
    store.save(live, DETECTIONS)
    assert store.merge(DETECTIONS, ["kitchen"]) == DETECTIONS  # the hall stream is gone: the config file's dog
    store.save({"dog": DETECTIONS["dog"]}, {"smoke": DETECTIONS["smoke"]})
    assert store.merge({"smoke": DETECTIONS["smoke"]}, ["kitchen"]) == {"smoke": DETECTIONS["smoke"]}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{broken", "cannot read the saved MQTT changes"),
        ('{"version": 1, "detections": {"a/b": {"prompts": ["x"]}}, "removed": []}', "detections.a/b.[key]"),
        ('{"version": 2, "detections": {}, "removed": []}', "version = 2"),
    ],
)
def test_a_bad_file_is_an_actionable_error(tmp_path: Path, content: str, expected: str) -> None:
    (tmp_path / "control.json").write_text(content)
    with pytest.raises(ControlError) as caught:
        ControlStore(tmp_path / "control.json").merge(DETECTIONS)
    assert caught.value.source == str(tmp_path / "control.json")
    assert any(expected in p for p in caught.value.problems) and "fix or remove" in caught.value.problems[-1]


# --- on the broker ---

USER, PASSWORD = "clapd", "correct horse"


@pytest.fixture
def authenticated(brokers) -> MosquittoBroker:
    return brokers(users={USER: PASSWORD})


@pytest.fixture
def links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., MqttLink]]:
    """`links(port, **mqtt fields)`: MQTT output and control channel, authenticated, control on, each with a state
    directory of its own; stopped at teardown."""
    monkeypatch.setenv("CLAPD_TEST_PASSWORD", PASSWORD)
    made: list[MqttLink] = []

    def make(port: int, **fields: object) -> MqttLink:
        fields = {"username": USER, "password_env": "CLAPD_TEST_PASSWORD", "control": {"enabled": True}, **fields}
        config = MqttConfig.model_validate({"host": "127.0.0.1", "port": port, **fields})
        link = build_mqtt(
            config, tmp_path / f"state{len(made)}", client_id_default=f"clapd-{len(made)}", hostname=HOSTNAME
        )
        made.append(link)
        return link

    yield make
    for link in made:
        link.output.stop(timeout=0.5)


def control_of(link: MqttLink) -> ControlChannel:
    assert link.control is not None
    return link.control


def send(port: int, payload: bytes, *, retain: bool = False) -> None:
    auth = {"username": USER, "password": PASSWORD}
    paho.mqtt.publish.single(
        f"{PREFIX}/control/set", payload, qos=1, retain=retain, hostname="127.0.0.1", port=port, auth=auth
    )


def results(got) -> list[dict]:
    return [json.loads(m.payload) for m in got if m.topic == f"{PREFIX}/control/result"]


def test_requests_reach_the_handler_and_results_the_result_topic(
    authenticated: MosquittoBroker, links, subscribers
) -> None:
    answers = subscribers(authenticated.port, f"{PREFIX}/control/result", username=USER, password=PASSWORD)
    requests: queue.Queue[ControlRequest] = queue.Queue()
    link = links(authenticated.port)
    control = control_of(link)
    control.listen(requests.put)
    link.output.start()
    wait_until(lambda: link.output.stats().connected, TIMEOUT, "the connection")
    time.sleep(0.2)  # the subscription is made in on_connect

    detections = dict(DETECTIONS)
    wanted = [
        request(request_id="1", action="set", detection="glass", config={"prompts": ["glass breaking"]}),
        request(request_id="2", action="update", detection="glass", config={"threshold_on": 0.7}),
        request(request_id="3", action="remove", detection="dog"),
        request(request_id="4", action="remove", detection="cat"),  # valid in shape; refused when applied
    ]
    for payload in wanted:
        send(authenticated.port, payload)
        taken = requests.get(timeout=TIMEOUT)  # what the daemon's main thread does with it:
        try:
            detections = apply_request(detections, taken, STREAMS)
            control.answer(ControlResult.success(taken))
        except ControlError as e:
            control.answer(ControlResult.failure(taken, e.problems))
    got = results(answers.wait_for(lambda got: len(got) == 4, TIMEOUT, "four results"))
    assert [(r["request_id"], r["ok"], r["action"], r["detection"]) for r in got] == [
        ("1", True, "set", "glass"),
        ("2", True, "update", "glass"),
        ("3", True, "remove", "dog"),
        ("4", False, "remove", "cat"),
    ]
    assert "no such detection" in got[3]["errors"][0]
    assert sorted(detections) == ["glass", "smoke"] and detections["glass"].threshold_on == 0.7
    assert not any(m.retain for m in answers.received())


def test_invalid_requests_are_answered_at_once(authenticated: MosquittoBroker, links, subscribers) -> None:
    answers = subscribers(authenticated.port, f"{PREFIX}/control/result", username=USER, password=PASSWORD)
    # Retained before the daemon subscribes, it is a replay when it arrives: refused, never applied.
    send(authenticated.port, request(request_id="r", action="remove", detection="dog"), retain=True)
    requests: queue.Queue[ControlRequest] = queue.Queue()
    link = links(authenticated.port)
    control_of(link).listen(requests.put)
    link.output.start()
    wait_until(lambda: link.output.stats().connected, TIMEOUT, "the connection")
    time.sleep(0.2)
    bad = [
        b"not json",
        request(request_id="t", action="set", detection="x", config={"prompts": "one"}),
        request(request_id="k", action="remove", detection="dog", extra=1),
        request(request_id="n", action="remove", detection="a/b+#"),
    ]
    for payload in bad:
        send(authenticated.port, payload)
    got = results(answers.wait_for(lambda got: len(got) == 5, TIMEOUT, "five refusals"))
    assert not any(r["ok"] for r in got)
    errors = {r["request_id"]: r["errors"][0] for r in got}
    assert errors[None].startswith("(payload): not a JSON document")
    assert errors["t"].startswith("config.prompts = 'one': Input should be a valid list")
    assert errors["k"].startswith("extra = 1: Extra inputs are not permitted")
    assert errors["n"].startswith("detection = 'a/b+#': String should match pattern")
    assert errors["r"].startswith("(message): a retained request is refused when replayed")
    assert requests.empty()


def test_a_handler_that_fails_is_answered(authenticated: MosquittoBroker, links, subscribers) -> None:
    answers = subscribers(authenticated.port, f"{PREFIX}/control/result", username=USER, password=PASSWORD)
    link = links(authenticated.port)
    link.output.start()
    wait_until(lambda: link.output.stats().connected, TIMEOUT, "the connection")

    def full(request: ControlRequest) -> None:
        raise queue.Full()

    control_of(link).listen(full)  # after connecting: subscribes now
    time.sleep(0.2)
    send(authenticated.port, request(request_id="f", action="remove", detection="dog"))
    (got,) = results(answers.wait_for(lambda got: len(got) == 1, TIMEOUT, "a refusal"))
    assert got["ok"] is False and got["errors"][0].startswith("(daemon): cannot take the request")


def test_control_off_means_no_channel_and_no_subscription(authenticated: MosquittoBroker, links, subscribers) -> None:
    answers = subscribers(authenticated.port, f"{PREFIX}/control/result", username=USER, password=PASSWORD)
    link = links(authenticated.port, control={"enabled": False})
    assert link.control is None
    link.output.start()
    wait_until(lambda: link.output.stats().connected, TIMEOUT, "the connection")
    time.sleep(0.2)
    send(authenticated.port, request(action="remove", detection="dog"))
    send(authenticated.port, b"not json")  # a subscribed channel would refuse it at once
    time.sleep(QUIET)
    assert answers.received() == []


# --- the level topic ---


def test_level_payloads() -> None:
    assert level_payload(-23.456) == b"-23.5"
    assert level_payload(-math.inf) == b"-120.0"  # digital silence
    assert level_payload(math.nan) is None


def test_levels_are_published_live_only(authenticated: MosquittoBroker, links, subscribers) -> None:
    live = subscribers(authenticated.port, f"{PREFIX}/+/level", username=USER, password=PASSWORD)
    output = links(authenticated.port).output
    output.publish_level(LevelReading("kitchen", -20.0))  # not started: dropped
    output.start()
    wait_until(lambda: output.stats().connected, TIMEOUT, "the connection")
    output.publish_level(LevelReading("kitchen", -31.27))
    output.publish_level(LevelReading("hall", math.nan))  # nothing to say
    output.publish_level(LevelReading("hall", -math.inf))
    got = live.wait_for(lambda got: len(got) == 2, TIMEOUT, "two levels")
    assert [(m.topic, m.payload, m.retain) for m in got] == [
        (f"{PREFIX}/kitchen/level", b"-31.3", False),
        (f"{PREFIX}/hall/level", b"-120.0", False),
    ]
    with pytest.raises(ValueError):
        output.publish_level(LevelReading("a/b", -10.0))

    authenticated.stop()
    wait_until(lambda: not output.stats().connected, TIMEOUT, "the output to notice")
    output.publish_level(LevelReading("kitchen", -10.0))  # while disconnected: dropped, never spooled
    assert output.stats().queued == 0
    authenticated.start()
    wait_until(lambda: output.stats().connected, 15, "the reconnection")
    time.sleep(QUIET)
    assert len(live.received()) == 2


# --- finite numbers, the saved file, the limit on detections (issue 10, items 1 and 5) ---


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        # Python's JSON reads 1e999 as infinity, and NaN and Infinity as the floats they name.
        (
            b'{"action":"update","detection":"smoke","config":{"cooldown_seconds":1e999}}',
            "config.cooldown_seconds = inf",
        ),
        (b'{"action":"update","detection":"smoke","config":{"threshold_on":NaN}}', "config.threshold_on = nan"),
        (
            b'{"action":"update","detection":"smoke","config":{"min_duration_seconds":-Infinity}}',
            "config.min_duration_seconds = -inf",
        ),
        (
            b'{"action":"set","detection":"x","config":{"prompts":["x"],"threshold_off":Infinity}}',
            "config.threshold_off = inf",
        ),
    ],
)
def test_infinity_and_nan_are_refused_naming_the_key(payload: bytes, expected: str) -> None:
    result = refused(payload)
    assert result.errors == [f"{expected}: Input should be a finite number"], result.errors


def test_a_request_built_in_code_with_infinity_is_refused() -> None:
    unchecked = ControlRequest(action="update", detection="smoke", config={"cooldown_seconds": math.inf})
    with pytest.raises(ControlError, match="config.cooldown_seconds = inf: Input should be a finite number"):
        apply_request(DETECTIONS, unchecked, STREAMS)


def test_a_saved_infinity_is_refused_at_load(tmp_path: Path) -> None:
    """control.json as an older version saved an accepted 1e999: `Infinity`, which Python's JSON reads back."""
    saved = {"version": 1, "detections": {"smoke": {"prompts": ["a smoke alarm"], "cooldown_seconds": math.inf}}}
    (tmp_path / "control.json").write_text(json.dumps({**saved, "removed": []}))
    assert "Infinity" in (tmp_path / "control.json").read_text()
    with pytest.raises(ControlError) as caught:
        ControlStore(tmp_path / "control.json").merge(DETECTIONS)
    assert caught.value.problems[0] == "detections.smoke.cooldown_seconds = inf: Input should be a finite number"
    assert "fix or remove" in caught.value.problems[-1]


def test_the_number_of_detections_is_limited() -> None:
    add = parsed(request(action="set", detection="glass", config={"prompts": ["g"]}))
    with pytest.raises(ControlError) as caught:
        apply_request(DETECTIONS, add, STREAMS, max_detections=2)
    assert caught.value.problems == [
        "detection = 'glass': 2 detections in force, the limit (mqtt.control.max_detections = 2); "
        "remove one first, or raise the limit"
    ]
    assert sorted(apply_request(DETECTIONS, add, STREAMS, max_detections=3)) == ["dog", "glass", "smoke"]
    # At the limit, what does not add is taken: replacing, updating, removing.
    replace = parsed(request(action="set", detection="dog", config={"prompts": ["woof"]}))
    assert apply_request(DETECTIONS, replace, STREAMS, max_detections=2)["dog"].prompts == ["woof"]
    update = parsed(request(action="update", detection="dog", config={"threshold_on": 0.8}))
    assert apply_request(DETECTIONS, update, STREAMS, max_detections=1)["dog"].threshold_on == 0.8
    assert list(apply_request(DETECTIONS, parsed(request(action="remove", detection="dog")), STREAMS, 1)) == ["smoke"]
