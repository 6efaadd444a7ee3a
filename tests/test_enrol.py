"""Enrolment from the live stream (issue 11, item 2): `clapd enrol`, `clapd false-alarm` and `clapd forget-example`
against a running `clapd run` of the demo bundle, through a real authenticated mosquitto.

The daemon plays three looping files in real time: "hall" (room tone, and a vacuum cleaner for its last 3 s of every
12 s), "kitchen" (a microwave's beeping, 2.2 s of every 8 s, which the smoke detector's text prompt takes for a smoke
alarm) and "quiet" (digital silence). The sounds are synthesised here, as tests/test_examples.py's are: the demo model
never trained on either. A level detection ("loud") marks each take on the broker, so the test knows where the
sounds are without a clock: every wait is for a message, bounded.

The smoke detection keeps clips, so an event that is no longer the pair's last can still be marked (its audio comes
from its clip file), and one whose clip is gone is refused by its id.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import paho.mqtt.publish
import pytest
import soundfile
import yaml
from helpers import start_daemon, stop_daemon
from mqtt_broker import MosquittoBroker, Subscriber

import clapd
from clapd.daemon.clip_files import clip_name
from clapd.daemon.config import DetectionConfig
from clapd.daemon.control import MAX_ENROL_SECONDS, ControlError, ControlRequest, ControlResult, parse_request
from clapd.daemon.demo import DEMO_EVENT_SETTINGS, DEMO_WINDOWS
from clapd.daemon.enrol import Clip, ClipRequest, Enroller, NotInRing
from clapd.daemon.records import DetectionEvent
from clapd.models.demo_stream import BACKGROUND_DBFS, EVENT_SNR_DB, make_demo_stream

DEMO_BUNDLE = Path(clapd.__file__).parent / "demo_bundle"
RATE = 48_000
USER, PASSWORD = "clapd", "correct horse"
PREFIX = "enroltest"
HALL_SECONDS, VACUUM_SECONDS = 12.0, 3.0  # the hall's loop; its vacuum cleaner runs for the loop's last 3 s
KITCHEN_SECONDS, BEEPS_AT, BEEPS_SECONDS = 8.0, 1.0, 2.2  # the kitchen's loop and its microwave's beeping
WAIT = 60.0  # s: the longest wait for one message (a loop lasts at most 12 s; a loaded machine is slow to start)
ANSWER = 15.0  # s: the longest wait for a control result
TOO_LONG = int(MAX_ENROL_SECONDS) + 1  # s: more than an enrolment may take


# --- sounds (as tests/test_examples.py makes them) ------------------------------------------------------------------


def _finished(x: np.ndarray) -> np.ndarray:
    fade = np.linspace(0.0, 1.0, int(0.005 * RATE))
    x = x.copy()
    x[: fade.size] *= fade
    x[-fade.size :] *= fade[::-1]
    return (0.9 * x / np.abs(x).max()).astype(np.float32)


def vacuum_cleaner(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Broadband airflow and the motor's 1 kHz whine."""
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    air = np.convolve(rng.standard_normal(n), np.ones(4) / 4, "same")
    return _finished(air + 0.5 * np.sin(2 * np.pi * 1000 * t + rng.uniform(0, 2 * np.pi)))


def microwave_beeps(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """3.5 kHz, 0.25 s on every 0.6 s."""
    t = np.arange(int(seconds * RATE)) / RATE
    return _finished(np.sin(2 * np.pi * 3500 * t + rng.uniform(0, 2 * np.pi)) * ((t % 0.6) < 0.25))


def room_with(sound: np.ndarray, at: float, seconds: float, seed: int) -> np.ndarray:
    """Room tone with `sound` planted at `at` s as the demo stream plants its sounds (25 dB over the room)."""
    audio = make_demo_stream(seed=seed, seconds=seconds, events=[]).audio.astype(np.float64)
    start = int(at * RATE)
    power = float(np.mean(sound.astype(np.float64) ** 2))
    audio[start : start + sound.size] += sound * 10 ** ((BACKGROUND_DBFS + EVENT_SNR_DB) / 20) / math.sqrt(power)
    return np.clip(audio, -1, 1).astype(np.float32)


# --- requests parsed --------------------------------------------------------------------------------------------------


def parse(**fields: object) -> ControlRequest | ControlResult:
    return parse_request(json.dumps(fields).encode())


def test_example_actions_are_parsed_with_the_fields_each_takes() -> None:
    enrol = parse(action="enrol", detection="door", stream="hall", last_seconds=4, negative=True)
    assert isinstance(enrol, ControlRequest) and (enrol.stream, enrol.last_seconds, enrol.negative) == ("hall", 4, True)
    assert isinstance(parse(action="false_alarm", detection="door"), ControlRequest)
    assert isinstance(parse(action="forget_example", detection="door", file="a.flac"), ControlRequest)
    refusals = {
        "last_seconds: enrol needs last_seconds": parse(action="enrol", detection="d", stream="hall"),
        "stream: enrol needs stream": parse(action="enrol", detection="d", last_seconds=2),
        f"last_seconds = {TOO_LONG}: Input should be less than or equal to {MAX_ENROL_SECONDS:g}": parse(
            action="enrol", detection="d", stream="hall", last_seconds=TOO_LONG
        ),
        "last_seconds = 0.01: Input should be greater than or equal to 0.1": parse(
            action="enrol", detection="d", stream="hall", last_seconds=0.01
        ),
        "stream = 'a/b': String should match pattern": parse(
            action="enrol", detection="d", stream="a/b", last_seconds=2
        ),
        "config: enrol takes no config": parse(
            action="enrol", detection="d", stream="h", last_seconds=2, config={"prompts": ["x"]}
        ),
        "last_seconds: false_alarm takes no last_seconds": parse(action="false_alarm", detection="d", last_seconds=2),
        "file: forget_example needs file": parse(action="forget_example", detection="d"),
        "file: update takes no file": parse(action="update", detection="d", config={"threshold_on": 0.6}, file="x"),
        "negative: remove takes no negative": parse(action="remove", detection="d", negative=True),
    }
    for expected, outcome in refusals.items():
        assert isinstance(outcome, ControlResult) and not outcome.ok, (expected, outcome)
        assert any(error.startswith(expected) for error in outcome.errors), (expected, outcome.errors)


def test_a_result_names_its_example_only_when_it_has_one() -> None:
    request = ControlRequest(action="remove", detection="d")
    assert "example" not in json.loads(ControlResult.success(request).to_json())
    assert json.loads(ControlResult.success(request, "x.flac").to_json())["example"] == "x.flac"


# --- an event's audio from its clip file ------------------------------------------------------------------------------


class RingWithoutIt:
    """Streams whose rings hold no event's audio (a daemon restarted since, or one that has moved on)."""

    def clip(self, request: ClipRequest, timeout: float) -> Clip:
        raise NotInRing("event_id: not in the ring", "it is not the last event")


def test_a_clip_at_another_rate_is_resampled_and_capped(tmp_path: Path) -> None:
    """A clip written at another rate than the model's (a bundle changed since) is resampled to the model's; one
    longer than an enrolment takes gives its first `MAX_ENROL_SECONDS`; a clip of another detection is refused."""
    clips, clip_rate = tmp_path / "clips", 16_000
    clips.mkdir()
    event = DetectionEvent("5e1f", "end", "kitchen", "smoke", 0, 1, "2026-12-01T10:00:00+00:00", None, 0.9, 0.9, RATE)
    path = clips / clip_name(event, datetime(2026, 12, 1, 9, 59, 58, 250_000, tzinfo=timezone.utc), ".flac")
    t = np.arange(int((MAX_ENROL_SECONDS + 5) * clip_rate)) / clip_rate
    soundfile.write(path, 0.5 * np.sin(2 * np.pi * 1000 * t), clip_rate, subtype="PCM_16")
    enroller = Enroller(RingWithoutIt(), tmp_path / "state", RATE, clips, RATE)
    detections = {"smoke": DetectionConfig(prompts=["a smoke alarm"]), "door": DetectionConfig(prompts=["a door"])}
    request = ControlRequest(action="false_alarm", detection="smoke", stream="kitchen", event_id="5e1f")
    change = enroller.change(detections, request, ["kitchen"])
    saved = Path(change.detections["smoke"].negative_examples[0])
    assert saved.name == "kitchen-20261201T095958250Z-negative.flac" and change.added == saved
    taken, rate = soundfile.read(saved, dtype="float32")
    assert rate == RATE and taken.size == MAX_ENROL_SECONDS * RATE
    spectrum = np.abs(np.fft.rfft(taken[RATE : 2 * RATE]))  # one second: 1 Hz bins
    assert int(np.argmax(spectrum)) == 1000 and 0.45 < np.abs(taken[RATE:]).max() < 0.55  # the tone, resampled
    with pytest.raises(ControlError, match="event_id = '5e1f': its clip is of 'smoke' on 'kitchen', not of 'door'"):
        enroller.change(detections, request.model_copy(update={"detection": "door"}), ["kitchen"])
    with pytest.raises(ControlError, match="event_id = 'f00d': no clip kept for event f00d and it is not the last"):
        enroller.change(detections, request.model_copy(update={"event_id": "f00d"}), ["kitchen"])


# --- a running daemon -------------------------------------------------------------------------------------------------


@pytest.fixture
def setup(tmp_path: Path, brokers) -> tuple[Path, MosquittoBroker]:
    """The config (the demo bundle on hall, kitchen and quiet, MQTT control on an authenticated broker) and the
    broker."""
    broker = brokers(users={USER: PASSWORD})
    rng = np.random.default_rng(11)
    files = {
        "hall": room_with(vacuum_cleaner(rng, VACUUM_SECONDS), HALL_SECONDS - VACUUM_SECONDS, HALL_SECONDS, seed=1),
        "kitchen": room_with(microwave_beeps(rng, BEEPS_SECONDS), BEEPS_AT, KITCHEN_SECONDS, seed=2),
        "quiet": np.zeros(2 * RATE, dtype=np.float32),
    }
    streams = {}
    for name, audio in files.items():
        soundfile.write(tmp_path / f"{name}.wav", audio, RATE, subtype="FLOAT")
        streams[name] = {"type": "file", "path": str(tmp_path / f"{name}.wav"), "loop": True}
    streams["quiet"]["min_level_dbfs"] = -90  # digital silence: the model is never called for it
    password = tmp_path / "password"
    password.write_text(PASSWORD)
    config = {
        "model": {"bundle": str(DEMO_BUNDLE), "providers": ["cpu"], "precision": "fp32", "threads": 1},
        "windows": DEMO_WINDOWS,
        "streams": streams,
        "detections": {
            # No prompt describes a vacuum cleaner: "a dog barking" stands in until one is enrolled.
            "vacuum": {"prompts": ["a dog barking"], "streams": ["hall"], **DEMO_EVENT_SETTINGS},
            "smoke": {
                "prompts": ["a smoke detector going off"],
                "streams": ["kitchen"],
                "clips": {"pre_roll_seconds": 1.0, "post_roll_seconds": 1.0},
                **DEMO_EVENT_SETTINGS,
            },
            "loud": {"level": {"above_dbfs": -40, "min_seconds": 0.3}, "cooldown_seconds": 3},
        },
        "outputs": {
            "mqtt": {
                "host": "127.0.0.1",
                "port": broker.port,
                "username": USER,
                "password_file": str(password),
                "topic_prefix": PREFIX,
                "control": {"enabled": True},
            }
        },
        "state_dir": str(tmp_path / "state"),
    }
    path = tmp_path / "clapd.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, broker


def clapd_cli(*args: str) -> tuple[int, dict | None, str]:
    """A `clapd` command as a user runs it: exit code, the result it printed (None if none), stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "clapd", *args], capture_output=True, text=True, timeout=120, env=dict(os.environ)
    )
    lines = done.stdout.strip().splitlines()
    return done.returncode, json.loads(lines[-1]) if lines else None, done.stderr


def ask(results: Subscriber, port: int, **fields: object) -> dict:
    """A request published as any MQTT client would; its result."""
    request_id = uuid.uuid4().hex
    paho.mqtt.publish.single(
        f"{PREFIX}/control/set",
        json.dumps({"request_id": request_id, **fields}),
        qos=1,
        hostname="127.0.0.1",
        port=port,
        auth={"username": USER, "password": PASSWORD},
    )
    got = results.wait_for(lambda rs: any(_id(r) == request_id for r in rs), ANSWER, f"the result of {fields}")
    return next(json.loads(r.payload) for r in got if _id(r) == request_id)


def _id(message: object) -> str | None:
    return json.loads(message.payload).get("request_id")  # type: ignore[attr-defined]


def events(subscriber: Subscriber, stream: str, detection: str, kind: str) -> list[dict]:
    topic = f"{PREFIX}/{stream}/{detection}/event"
    return [e for e in map(json.loads, (m.payload for m in subscriber.received(topic))) if e["kind"] == kind]


def wait_events(subscriber: Subscriber, stream: str, detection: str, kind: str, count: int) -> list[dict]:
    subscriber.wait_for(
        lambda _: len(events(subscriber, stream, detection, kind)) >= count,
        WAIT,
        f"{count} {detection} {kind}(s) on {stream}",
    )
    return events(subscriber, stream, detection, kind)


def test_enrol_false_alarm_restart_and_forget(setup: tuple[Path, MosquittoBroker], subscribers, running) -> None:
    path, broker = setup
    state = Path(yaml.safe_load(path.read_text())["state_dir"])
    auth = {"username": USER, "password": PASSWORD}
    heard = subscribers(broker.port, f"{PREFIX}/+/+/event", **auth)
    results = subscribers(broker.port, f"{PREFIX}/control/result", **auth)
    daemon = start_daemon(path)
    running.append(daemon)

    # The kitchen's beeping starts the smoke detector (its text cannot tell them apart) on every loop. The first
    # event, no longer the last, is marked a false alarm from its clip; then the last one from the ring.
    first = wait_events(heard, "kitchen", "smoke", "end", 2)[0]
    from_clip = check_false_alarm_from_a_clip(results, broker.port, first, state)
    code, result, stderr = clapd_cli("false-alarm", "smoke", "--stream", "kitchen", "-c", str(path))
    assert code == 0 and result is not None and result["ok"], (result, stderr)
    negative = state / "examples" / "smoke" / result["example"]
    assert negative.is_file() and result["example"].startswith("kitchen-") and negative.suffix == ".flac"
    assert result["example"].endswith("-negative.flac")
    info = soundfile.info(negative)
    assert info.samplerate == RATE and info.frames >= DEMO_WINDOWS["window_seconds"] * RATE  # widened to a window
    marked = len(events(heard, "kitchen", "loud", "start"))

    # Bad requests are refused with the reason, and change nothing.
    code, result, stderr = clapd_cli("enrol", "vacuum", "--stream", "attic", "--last", "3", "-c", str(path))
    assert code == 1 and result is not None and not result["ok"]
    assert "stream = 'attic': no such stream (there are: hall, kitchen, quiet)" in stderr, stderr
    refusals = {
        "last_seconds = 31": ask(
            results, broker.port, action="enrol", detection="vacuum", stream="hall", last_seconds=31
        ),
        "the audio is not a usable example: silent": ask(
            results, broker.port, action="enrol", detection="vacuum", stream="quiet", last_seconds=1.5
        ),
        "detection = 'vacuum': no event on any stream": ask(
            results, broker.port, action="false_alarm", detection="vacuum"
        ),
        "detection = 'loud': a level detection takes no audio examples": ask(
            results, broker.port, action="enrol", detection="loud", stream="hall", last_seconds=2
        ),
        "file = 'nothing.flac': not an enrolled example of 'vacuum' (enrolled: none)": ask(
            results, broker.port, action="forget_example", detection="vacuum", file="nothing.flac"
        ),
    }
    for expected, answer in refusals.items():
        assert not answer["ok"] and any(expected in error for error in answer["errors"]), (expected, answer)
    assert not (state / "examples" / "vacuum").exists() or not any((state / "examples" / "vacuum").iterdir())

    # The hall's vacuum cleaner fires nothing until it is enrolled; then its next run starts the detection. A loop's
    # worth of audio holds one whole run of it wherever the request falls.
    run = wait_events(heard, "hall", "loud", "end", 1)[-1]
    assert not events(heard, "hall", "vacuum", "start")
    code, result, stderr = clapd_cli(
        "enrol", "vacuum", "--stream", "hall", "--last", f"{HALL_SECONDS:g}", "-c", str(path)
    )
    assert code == 0 and result is not None and result["ok"] and result["example"].endswith("-positive.flac"), stderr
    positive = state / "examples" / "vacuum" / result["example"]
    assert positive.is_file() and soundfile.info(positive).frames == HALL_SECONDS * RATE
    starts = wait_events(heard, "hall", "vacuum", "start", 1)
    assert all(s["start_offset_seconds"] > run["end_offset_seconds"] for s in starts), (run, starts)  # later runs

    # The beeping's next runs, all begun after the false alarm was marked, start no smoke event.
    louds = wait_events(heard, "kitchen", "loud", "start", marked + 3)
    after = louds[marked]["start_offset_seconds"]
    late = [e for e in events(heard, "kitchen", "smoke", "start") if e["start_offset_seconds"] >= after - 0.5]
    assert not late, late
    _, stderr = stop_daemon(daemon)
    assert daemon.returncode == 0, stderr[-3000:]

    # Both examples are kept: in control.json, and as files, and they are in force after a restart.
    saved = json.loads((state / "control.json").read_text())["detections"]
    assert saved["vacuum"]["examples"] == [str(positive)]
    assert saved["smoke"]["negative_examples"] == [str(from_clip), str(negative)]
    heard_again = subscribers(broker.port, f"{PREFIX}/+/+/event", **auth)
    daemon = start_daemon(path)
    running.append(daemon)
    wait_events(heard_again, "hall", "vacuum", "start", 1)
    assert len(events(heard_again, "kitchen", "loud", "start")) >= 1 and not events(
        heard_again, "kitchen", "smoke", "start"
    )

    # forget-example removes the enrolled example: its entry and its file; a second time is refused.
    code, result, stderr = clapd_cli("forget-example", "vacuum", positive.name, "-c", str(path))
    assert code == 0 and result is not None and result["ok"] and result["example"] == positive.name, stderr
    assert not positive.exists() and negative.exists()
    saved = json.loads((state / "control.json").read_text())["detections"]
    assert "vacuum" not in saved and saved["smoke"]["negative_examples"] == [str(from_clip), str(negative)]
    code, result, stderr = clapd_cli("forget-example", "vacuum", positive.name, "-c", str(path))
    assert code == 1 and "not an enrolled example" in stderr, stderr
    _, stderr = stop_daemon(daemon)
    assert daemon.returncode == 0, stderr[-3000:]


def check_false_alarm_from_a_clip(results: Subscriber, port: int, event: dict, state: Path) -> Path:
    """An event that is not its pair's last becomes a negative example from its clip file, sample for sample; once
    its clip is gone, it is refused by its id. The example's path."""
    clip = Path(event["clip"])
    deadline = time.monotonic() + WAIT  # written by the clip writer's thread a post-roll after the event's end
    while not clip.is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert clip.is_file(), clip
    answer = ask(results, port, action="false_alarm", detection="smoke", stream="kitchen", event_id=event["event_id"])
    assert answer["ok"], answer
    example = state / "examples" / "smoke" / answer["example"]
    stamp = clip.name.split(".")[2] + clip.name.split(".")[3]  # the clip's first sample: 20261201T031200 + 123Z
    assert answer["example"] == f"kitchen-{stamp}-negative.flac", (answer, clip.name)
    heard, rate = soundfile.read(clip, dtype="float32")
    taken, taken_rate = soundfile.read(example, dtype="float32")
    assert rate == taken_rate == RATE and taken.shape == heard.shape and heard.size > RATE, (heard.shape, taken.shape)
    np.testing.assert_allclose(taken, heard, atol=2**-15)  # the clip's 16-bit samples, kept in 24 bits
    clip.unlink()  # as retention would
    answer = ask(results, port, action="enrol", detection="smoke", stream="kitchen", event_id=event["event_id"])
    expected = f"event_id = {event['event_id']!r}: no clip kept for event {event['event_id']} and it is not the last"
    assert not answer["ok"] and any(error.startswith(expected) for error in answer["errors"]), answer
    return example


def test_no_daemon_is_no_result_and_a_non_zero_exit(setup: tuple[Path, MosquittoBroker]) -> None:
    path, _ = setup
    code, result, stderr = clapd_cli("false-alarm", "smoke", "-c", str(path), "--timeout", "1")
    assert code == 1 and result is None and "no result on enroltest/control/result within 1 s" in stderr, stderr
