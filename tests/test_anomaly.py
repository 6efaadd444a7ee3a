"""Anomaly monitoring against learned normal operation: the normal bank, `clapd learn-normal`, anomaly events of
`clapd run` at a real broker on a machine stream with planted faults, the bank across a restart, a wrong bundle's
bank refused, and a re-baseline over MQTT control (an authenticated broker). The demo bundle, short windows."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import paho.mqtt.publish
import pytest
import soundfile
import yaml
from helpers import CountingModel, run_clapd, start_daemon, stop_daemon
from mqtt_broker import MosquittoBroker, free_port, wait_until

from clapd.daemon.anomaly import BankError, NormalBank
from clapd.daemon.anomaly.features import (
    BAND_GROUPS,
    FEATURE_SIZE,
    MODULATION_EDGES_HZ,
    PERCENTILES,
    features_id,
    sound_features,
)
from clapd.daemon.anomaly.monitor import BankStore, StreamAnomaly, bank_path, fit_bank, window_features
from clapd.daemon.config import AnomalyConfig, ModelConfig
from clapd.daemon.control import ControlRequest, ControlResult, parse_request
from clapd.daemon.demo import installed_demo_bundle
from clapd.daemon.detector import DetectionSet, Detector
from clapd.daemon.events import StreamClock
from clapd.daemon.inference import AudioModel, open_bundle
from clapd.daemon.matcher import Matcher
from clapd.daemon.mqtt.discovery import DiscoverySettings, discovery_messages
from clapd.daemon.mqtt.payloads import Topics
from clapd.daemon.records import Window
from clapd.daemon.windows import clip_windows
from clapd.models.machine_sounds import SAMPLE_RATE, machine_clip
from clapd.models.machine_streams import PlannedFault, make_machine_stream

HOP_S = 0.5
LEARN_S = 40.0  # the stream's first 40 s are normal operation: the daemon learns from them
FAULTS = [
    PlannedFault("bearing", 45.0, 55.0),
    PlannedFault("leak", 65.0, 75.0),
    PlannedFault("gear_whine", 85.0, 95.0),
]
STREAM_S = 100.0
PREFIX = "test/clapd"
USER, PASSWORD = "clapd", "correct horse"
WAIT = 60.0  # s, for a daemon to get through the audio on a busy machine


# --- the bank ---


def _cluster(rng: np.random.Generator, n: int, spread: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    centre = rng.normal(size=64)
    return centre, centre + spread * rng.normal(size=(n, 64))


def test_a_normal_sample_scores_about_one_and_a_far_one_much_more() -> None:
    rng = np.random.default_rng(0)
    centre, normal = _cluster(rng, 400)
    bank = NormalBank.fit(normal, k=2)
    _, more_normal = centre, centre + 0.3 * rng.normal(size=(200, 64))
    scores = bank.score(more_normal)
    assert 0.8 < float(np.median(scores)) < 1.25
    assert bank.score(rng.normal(size=(5, 64))).min() > 5 * float(np.median(scores))
    assert bank.embeddings.dtype == np.float32
    assert np.allclose(np.linalg.norm(bank.embeddings, axis=1), 1.0, atol=1e-5)


def test_the_bank_is_subsampled_to_max_size_and_left_out_neighbours_keep_the_scale() -> None:
    rng = np.random.default_rng(1)
    _, normal = _cluster(rng, 3000)
    bank = NormalBank.fit(normal, max_size=500, seed=3)
    assert bank.size == 500
    assert NormalBank.fit(normal, max_size=500, seed=3).embeddings.tobytes() == bank.embeddings.tobytes()
    # Overlapping windows are near-copies: left out of the reference, they do not shrink it.
    copies = np.repeat(normal[:300], 3, axis=0) + 1e-4 * rng.normal(size=(900, 64))
    assert NormalBank.fit(copies).reference < 0.01 < NormalBank.fit(copies, exclude_neighbours=2).reference
    with pytest.raises(ValueError, match="at least k \\+ 1"):
        NormalBank.fit(normal[:2], k=2)


def test_a_bank_round_trips_and_another_bundles_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    _, normal = _cluster(rng, 100)
    bank = NormalBank.fit(normal, k=3)
    path = tmp_path / "banks" / "pump.npz"
    bank.save(path, made_with="a" * 64)
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = NormalBank.load(path, made_with="a" * 64)
    assert loaded.k == 3 and loaded.reference == bank.reference
    assert np.array_equal(loaded.embeddings, bank.embeddings)
    assert np.array_equal(loaded.score(normal[:5]), bank.score(normal[:5]))
    with pytest.raises(BankError, match="another model bundle"):
        NormalBank.load(path, made_with="b" * 64)
    path.write_bytes(b"not a bank")
    with pytest.raises(BankError, match="not a readable normal bank"):
        NormalBank.load(path, made_with="a" * 64)


def test_a_whitened_bank_scores_by_normal_spread_not_by_units_and_an_old_bank_still_loads(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    spreads = np.linspace(0.1, 3.0, 20)  # features of very different spreads
    normal, fresh = rng.normal(size=(600, 20)) * spreads, rng.normal(size=(50, 20)) * spreads
    odd = fresh.copy()
    odd[:, 0] += 1.0  # ten times the normal spread of the steadiest feature: small against the others
    bank = NormalBank.fit(normal, whiten=True)
    assert np.median(bank.score(fresh)) < 1.2 and np.median(bank.score(odd)) > 2.0
    units = np.ones(20)
    units[0] = 1000.0  # the same features in other units: the same scores
    rescaled = NormalBank.fit(normal * units, whiten=True)
    assert np.allclose(rescaled.score(odd * units), bank.score(odd), rtol=1e-3)
    assert np.median(NormalBank.fit(normal).score(odd)) < 1.2  # by cosine the step is lost among the others
    path = tmp_path / "bank.npz"
    bank.save(path, made_with="sound-features-v1@48000Hz")
    assert np.array_equal(NormalBank.load(path, made_with="sound-features-v1@48000Hz").score(odd), bank.score(odd))
    cosine = NormalBank.fit(normal)
    old = {"format": "clapd-normal-bank-v1", "bundle_sha256": "a" * 64, "k": 1, "reference": cosine.reference}
    np.savez(path, embeddings=cosine.embeddings, **{k: np.array(v) for k, v in old.items()})
    assert np.array_equal(NormalBank.load(path, made_with="a" * 64).score(odd), cosine.score(odd))


def test_sound_features_hear_a_machine_rhythm_and_any_window_length() -> None:
    rate = 48_000
    rng = np.random.default_rng(7)
    t = np.arange(2 * rate) / rate
    noise = 0.1 * rng.normal(size=t.size)
    steady, beating = sound_features(noise, rate), sound_features(noise * (1 + 0.8 * np.sin(2 * np.pi * 21 * t)), rate)
    assert steady.shape == beating.shape == (FEATURE_SIZE,)
    rhythms = (beating - steady)[len(PERCENTILES) * 64 :].reshape(BAND_GROUPS, -1)
    centres = (MODULATION_EDGES_HZ[:-1] + MODULATION_EDGES_HZ[1:]) / 2
    assert np.all(np.abs(centres[np.argmax(rhythms, axis=1)] - 21) <= 1.1)  # every band group beats at 21 Hz
    assert np.all(rhythms.max(axis=1) > 10)  # dB over the steady noise's
    for seconds in (0.05, 0.5, 10):
        assert np.isfinite(sound_features(noise[: int(seconds * rate)], rate)).all()
    assert sound_features(noise[:16_000], 16_000).shape == (FEATURE_SIZE,)


def test_drift_admits_into_a_bounded_bank_keeping_the_reference() -> None:
    rng = np.random.default_rng(4)
    _, normal = _cluster(rng, 50)
    bank = NormalBank.fit(normal)
    grown = bank.admit(normal[:5], max_size=52, seed=0)
    assert grown.size == 52 and grown.reference == bank.reference and bank.size == 50


# --- the control request and Home Assistant discovery ---


def test_a_rebaseline_request_needs_a_stream_and_seconds() -> None:
    ok = parse_request(json.dumps({"action": "rebaseline", "stream": "pump", "seconds": 30}).encode())
    assert isinstance(ok, ControlRequest) and ok.seconds == 30 and ok.detection is None
    refused = parse_request(json.dumps({"action": "rebaseline", "stream": "pump"}).encode())
    assert isinstance(refused, ControlResult) and refused.errors == ["seconds: rebaseline needs seconds"]
    no_detection = parse_request(json.dumps({"action": "remove"}).encode())
    assert isinstance(no_detection, ControlResult) and "detection: remove needs detection" in no_detection.errors


def test_discovery_announces_the_anomaly_event_and_score_sensor() -> None:
    settings = DiscoverySettings("homeassistant", "node", "clapd node", Topics("p"), 1, 0.0, (("pump", "anomaly"),))
    messages = discovery_messages(settings, ["pump"], {})
    sensor = json.loads(messages["homeassistant/sensor/node/pump_anomaly/config"])
    assert sensor["state_topic"] == "p/pump/anomaly" and sensor["value_template"] == "{{ value_json.score }}"
    binary = [json.loads(v) for k, v in messages.items() if k.startswith("homeassistant/binary_sensor/")]
    assert [b["state_topic"] for b in binary] == ["p/pump/anomaly/state"]


# --- the daemon ---


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pump at one condition for 100 s, faults planted after its first 40 s; and those 40 s alone in normal/."""
    folder = tmp_path_factory.mktemp("machine")
    stream = make_machine_stream("pump", 3, STREAM_S, faults=FAULTS)
    stream.write_wav(folder / "pump.wav")
    (folder / "normal").mkdir()
    soundfile.write(folder / "normal" / "first.wav", stream.audio[: int(LEARN_S * SAMPLE_RATE)], SAMPLE_RATE)
    return folder


def _config(tmp_path: Path, audio: Path, anomaly: dict, **sections: object) -> Path:
    bundle = installed_demo_bundle()
    assert bundle is not None
    config = {
        "model": {"bundle": str(bundle), "providers": ["cpu"], "threads": 1},
        "windows": {"window_seconds": 1, "hop_seconds": HOP_S},
        "streams": {"pump": {"type": "file", "path": str(audio), "realtime": False, "anomaly": anomaly}},
        "detections": {"siren": {"prompts": ["a siren wailing"], "threshold_on": 0.95, "threshold_off": 0.9}},
        "state_dir": str(tmp_path / "state"),
        **sections,
    }
    path = tmp_path / "clapd.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


DESCRIPTIONS = ["a high-pitched whine", "a hissing air leak", "a metallic knocking"]
# Sound features (the default): normal windows of this pump score 1.1-1.25 against 40 s of it, the faults 2.4-25
ANOMALY = {"threshold": 2.0, "threshold_off": 1.5, "smoothing_windows": 3, "publish_interval_seconds": 5}


def _anomaly_starts(subscribers: list) -> list[dict]:
    return [
        json.loads(m.payload)
        for m in subscribers
        if m.topic == f"{PREFIX}/pump/anomaly/event" and json.loads(m.payload)["kind"] == "start"
    ]


def _run_to_the_end(config: Path, broker: MosquittoBroker, subscribers) -> list:
    received = subscribers(broker.port, f"{PREFIX}/#")
    daemon = start_daemon(config)
    try:
        _, stderr = daemon.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        stop_daemon(daemon)
        raise
    assert daemon.returncode == 0, stderr[-3000:]
    got = received.wait_for(
        lambda got: sum(m.topic == f"{PREFIX}/pump/anomaly/state" and m.payload == b"OFF" for m in got) >= 4,
        WAIT,
        "the anomaly events' end states",
    )
    received.close()
    return got


def test_clapd_run_reports_each_planted_fault_and_nothing_else_and_the_bank_survives_a_restart(
    tmp_path: Path, machine: Path, broker: MosquittoBroker, subscribers
) -> None:
    mqtt = {"mqtt": {"host": "127.0.0.1", "port": broker.port, "topic_prefix": PREFIX, "qos": 1}}
    anomaly = {**ANOMALY, "learn_seconds": LEARN_S, "descriptions": DESCRIPTIONS}
    config = _config(tmp_path, machine / "pump.wav", anomaly, outputs=mqtt)
    first = _run_to_the_end(config, broker, subscribers)
    assert bank_path(tmp_path / "state", "pump").is_file()
    starts = _anomaly_starts(first)
    onsets = sorted(s["start_offset_seconds"] for s in starts)
    assert len(onsets) == len(FAULTS), onsets
    for onset, fault in zip(onsets, FAULTS, strict=True):
        assert abs(onset - fault.start_s) <= 2 * HOP_S, (onset, fault)
    assert all(s["peak_score"] >= ANOMALY["threshold"] for s in starts)
    events = [json.loads(m.payload) for m in first if m.topic == f"{PREFIX}/pump/anomaly/event"]
    assert all(e["description"] in DESCRIPTIONS for e in events)  # each event named by one of them
    by_id = {e["event_id"]: e["description"] for e in events if e["kind"] == "start"}
    assert all(by_id[e["event_id"]] == e["description"] for e in events if e["kind"] == "end")
    scores = [json.loads(m.payload) for m in first if m.topic == f"{PREFIX}/pump/anomaly"]
    assert len(scores) >= 8 and all(s["bank_size"] > 0 and s["score"] >= 0 for s in scores)
    # Again, with no learning period: the stored bank is what scores, and the same faults are found.
    again = _config(tmp_path, machine / "pump.wav", ANOMALY, outputs=mqtt)
    second = _run_to_the_end(again, broker, subscribers)
    assert sorted(s["start_offset_seconds"] for s in _anomaly_starts(second)) == onsets


def test_learn_normal_classify_agrees_with_run_and_another_features_bank_is_refused(
    tmp_path: Path, machine: Path
) -> None:
    anomaly = {**ANOMALY, "publish_interval_seconds": 0}  # every window's score goes out
    config = _config(tmp_path, machine / "pump.wav", anomaly, outputs={"stdout": True})
    missing = run_clapd("run", "-c", str(config), timeout=120)
    assert missing.returncode != 0 and "learn-normal" in missing.stderr and "no normal bank" in missing.stderr
    learnt = run_clapd("learn-normal", "-c", str(config), "--stream", "pump", "--from", str(machine / "normal"))
    assert learnt.returncode == 0, learnt.stderr
    path = bank_path(tmp_path / "state", "pump")
    made_with = features_id(SAMPLE_RATE)
    bank = NormalBank.load(path, made_with=made_with)
    assert bank.size == 79 and bank.whitening is not None  # 40 s in 1 s windows every 0.5 s, sound features
    again = run_clapd("learn-normal", "-c", str(config), "--stream", "pump", "--from", str(machine / "normal"))
    assert again.returncode == 1 and "--rebaseline" in again.stderr
    # clapd classify scores anomalies as clapd run does: the same windows, the same scores, the same events.
    run = run_clapd("run", "-c", str(config), timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    run_scores = [line["score"] for line in lines if line.get("kind") == "anomaly"]
    classified = run_clapd("classify", "-c", str(config), "--json", str(machine / "pump.wav"), timeout=300)
    assert classified.returncode == 0, classified.stderr[-2000:]
    table = json.loads(classified.stdout)
    assert len(run_scores) == len(table["windows"]) == 199
    assert np.allclose(run_scores, [w["anomaly"] for w in table["windows"]], rtol=1e-4)
    starts = [
        e["start_offset_seconds"] for e in table["events"] if e["detection"] == "anomaly" and e["kind"] == "start"
    ]
    assert len(starts) == len(FAULTS)
    assert starts == [
        line["start_offset_seconds"] for line in lines if line.get("detection") == "anomaly" and line["kind"] == "start"
    ]
    # From the live source (a file, read as fast as it goes): 12 s of it, replacing the bank.
    live = run_clapd("learn-normal", "-c", str(config), "--stream", "pump", "--minutes", "0.2", "--rebaseline")
    assert live.returncode == 0, live.stderr
    assert 23 <= NormalBank.load(path, made_with=made_with).size <= 30
    bank = NormalBank.load(path, made_with=made_with)
    bank.save(path, made_with="0" * 64)  # as if learnt from a model's embeddings
    refused = run_clapd("run", "-c", str(config), timeout=120)
    assert refused.returncode != 0
    assert "configured for sound features" in refused.stderr and "learn-normal" in refused.stderr, refused.stderr


def test_an_embedding_bank_is_learnt_with_the_model_and_another_bundles_is_refused(
    tmp_path: Path, machine: Path
) -> None:
    config = _config(tmp_path, machine / "pump.wav", {**ANOMALY, "feature": "embedding"}, outputs={"stdout": True})
    learnt = run_clapd("learn-normal", "-c", str(config), "--stream", "pump", "--from", str(machine / "normal"))
    assert learnt.returncode == 0, learnt.stderr
    path = bank_path(tmp_path / "state", "pump")
    bundle = installed_demo_bundle()
    assert bundle is not None
    sha = AudioModel(bundle, open_bundle(bundle), ModelConfig(providers=["cpu"])).entry.sha256
    bank = NormalBank.load(path, made_with=sha)
    assert bank.size == 79 and bank.whitening is None  # cosine between the model's embeddings
    with pytest.raises(BankError, match="configured for sound features"):
        NormalBank.load(path, made_with=features_id(SAMPLE_RATE))
    bank.save(path, made_with="0" * 64)  # as if learnt with another model
    refused = run_clapd("run", "-c", str(config), timeout=120)
    assert refused.returncode != 0
    assert "another model bundle" in refused.stderr and "learn-normal" in refused.stderr, refused.stderr[-2000:]


def _scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return response.read().decode()
    except OSError:  # not listening yet
        return ""


def _live_config(tmp_path: Path, machine: Path, metrics_port: int, outputs: dict) -> Path:
    """10 s of the normal pump looped in real time, a bank learnt from its first 3 s, metrics on `metrics_port`."""
    short = tmp_path / "short.wav"
    soundfile.write(short, soundfile.read(machine / "normal" / "first.wav")[0][: 10 * SAMPLE_RATE], SAMPLE_RATE)
    metrics = {"enabled": True, "port": metrics_port}
    config = _config(tmp_path, short, {**ANOMALY, "learn_seconds": 3}, outputs=outputs, metrics=metrics)
    raw = yaml.safe_load(config.read_text())
    raw["streams"]["pump"].update(realtime=True, loop=True)
    config.write_text(yaml.safe_dump(raw))
    return config


def test_rebaseline_over_mqtt_control_learns_a_new_bank(
    tmp_path: Path, machine: Path, brokers, subscribers, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = brokers(users={USER: PASSWORD})
    mqtt = {
        "host": "127.0.0.1",
        "port": broker.port,
        "topic_prefix": PREFIX,
        "username": USER,
        "password_env": "CLAPD_TEST_PASSWORD",
        "control": {"enabled": True},
    }
    port = free_port()
    config = _live_config(tmp_path, machine, port, {"mqtt": mqtt})
    path = bank_path(tmp_path / "state", "pump")
    answers = subscribers(broker.port, f"{PREFIX}/control/result", username=USER, password=PASSWORD)
    daemon = start_daemon(config, CLAPD_TEST_PASSWORD=PASSWORD)
    try:
        wait_until(path.is_file, WAIT, "the bank learnt at start")
        first = path.read_bytes()
        request = {"request_id": "r1", "action": "rebaseline", "stream": "pump", "seconds": 2}
        paho.mqtt.publish.single(
            f"{PREFIX}/control/set",
            json.dumps(request).encode(),
            qos=1,
            hostname="127.0.0.1",
            port=broker.port,
            auth={"username": USER, "password": PASSWORD},
        )
        got = answers.wait_for(lambda got: len(got) >= 1, WAIT, "the rebaseline's result")
        assert json.loads(got[0].payload) == {
            "request_id": "r1",
            "ok": True,
            "action": "rebaseline",
            "detection": None,
            "errors": [],
        }
        wait_until(lambda: path.read_bytes() != first, WAIT, "the re-learnt bank on disk")
        wait_until(lambda: 'kind="learnt",stream="pump"} 2.0' in _scrape(port), WAIT, "two banks learnt, counted")
        wait_until(lambda: 'clapd_anomaly_score{stream="pump"}' in _scrape(port), WAIT, "the new bank's first score")
        assert 'clapd_anomaly_bank_size{stream="pump"}' in _scrape(port)
    finally:
        _, stderr = stop_daemon(daemon)
    assert "re-baselining the normal bank" in stderr and "normal bank learnt from" in stderr


def test_drift_admits_only_normal_windows_at_most_max_per_hour_and_counts_them(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    centre, normal = _cluster(rng, 200)
    rate, hop = 1000, 500  # a 1 kHz stream, a window every 0.5 s
    drift = {"enabled": True, "admit_below": 1.5, "max_per_hour": 360}  # one per 10 s at most
    config = AnomalyConfig(feature="embedding", drift=drift)
    store = BankStore(tmp_path / "pump.npz", "a" * 64)
    monitor = StreamAnomaly(
        "pump", config, NormalBank.fit(normal), store, StreamClock(datetime.now(timezone.utc), rate), 1000, hop
    )
    silence = np.zeros(1000, np.float32)
    for i in range(60):  # 30 s of normal windows: at most 3 admitted (0, 10, 20 s)
        embedding = (centre + 0.3 * rng.normal(size=64)).astype(np.float32)
        monitor.feed(Window("pump", i * hop, i * hop + 1000, silence), embedding)
    admitted = monitor.updates["admitted"]
    assert 1 <= admitted <= 3 and monitor.bank is not None and monitor.bank.size == 200 + admitted
    assert NormalBank.load(store.path, made_with="a" * 64).size == 200 + admitted  # saved
    for i in range(60, 120):  # 30 s of a fault: nothing admitted
        monitor.feed(Window("pump", i * hop, i * hop + 1000, silence), rng.normal(size=64).astype(np.float32))
    assert monitor.updates["admitted"] == admitted and monitor.status().bank_size == 200 + admitted


@pytest.mark.parametrize("feature", ["sound", "embedding"])
def test_a_stream_compared_by_sound_features_alone_is_never_given_to_the_model(feature: str) -> None:
    rate, window, hop = SAMPLE_RATE, SAMPLE_RATE, SAMPLE_RATE // 2
    audio = machine_clip("pump", "half", 5, 20.0).audio
    windows = clip_windows("pump", audio, window, hop, window)
    config = AnomalyConfig(feature=feature, threshold=2.0, threshold_off=1.5)
    model = CountingModel()
    rows = [window_features(config, w, model.embed(w.samples[None])[0], rate) for w in windows[:20]]
    model.windows = 0
    bank = fit_bank(config, np.stack(rows), exclude_neighbours=1)
    clock = StreamClock(datetime.now(timezone.utc), rate)
    monitor = StreamAnomaly("pump", config, bank, BankStore(None, "x"), clock, window, hop)
    no_detections = DetectionSet({}, Matcher([], np.array([[0.0, 1.0, 0.0]], np.float32), 20.0))
    detector = Detector(model, no_detections, {"pump": clock}, hop, anomalies={"pump": monitor})
    readings = [r for w in windows[20:] for r in detector.process([w]).anomalies]
    assert len(readings) == len(windows) - 20 and all(np.isfinite(r.score) for r in readings)
    assert model.windows == (0 if feature == "sound" else len(windows) - 20)


def test_a_bank_stored_by_another_process_is_taken_at_reload_and_never_overwritten_by_drift(tmp_path: Path) -> None:
    """`clapd learn-normal --rebaseline` beside a running daemon: the daemon takes the new file when asked (SIGHUP)
    or at its next drift update, instead of writing its own bank over it; an unusable file leaves the bank as is."""
    rng = np.random.default_rng(8)
    centre, normal = _cluster(rng, 100)
    rate, hop, sha = 1000, 500, "b" * 64
    drift = {"enabled": True, "admit_below": 1.5, "max_per_hour": 3600}  # one per second
    config = AnomalyConfig(feature="embedding", drift=drift)
    store = BankStore(tmp_path / "pump.npz", sha)
    store.save(NormalBank.fit(normal))
    monitor = StreamAnomaly(
        "pump", config, store.load(), store, StreamClock(datetime.now(timezone.utc), rate), 1000, hop
    )
    assert monitor.reload_stored(0) == [] and monitor.updates["reloaded"] == 0  # nothing new on disk
    silence = np.zeros(1000, np.float32)

    def feed(i: int) -> None:
        monitor.feed(Window("pump", i * hop, i * hop + 1000, silence), centre.astype(np.float32))  # clearly normal

    feed(0)
    assert monitor.updates["admitted"] == 1 and NormalBank.load(store.path, made_with=sha).size == 101
    NormalBank.fit(normal[:40]).save(store.path, made_with=sha)  # another process's new baseline
    feed(4)  # a drift update is due: it takes the new bank rather than saving its own over it
    assert monitor.updates["admitted"] == 1 and monitor.updates["reloaded"] == 1
    assert monitor.bank is not None and monitor.bank.size == 40
    assert NormalBank.load(store.path, made_with=sha).size == 40
    NormalBank.fit(normal[:30]).save(store.path, made_with=sha)
    assert monitor.reload_stored(5 * hop) == [] and monitor.bank.size == 30 and monitor.updates["reloaded"] == 2
    NormalBank.fit(normal[:20]).save(store.path, made_with="c" * 64)  # learnt with another model: refused
    assert monitor.reload_stored(6 * hop) == [] and monitor.bank.size == 30 and monitor.updates["reloaded"] == 2


def test_a_running_daemon_takes_a_bank_learnt_beside_it_at_sighup(tmp_path: Path, machine: Path) -> None:
    port = free_port()
    config = _live_config(tmp_path, machine, port, {"stdout": False})
    daemon = start_daemon(config)
    try:
        wait_until(lambda: 'kind="learnt",stream="pump"} 1.0' in _scrape(port), WAIT, "the bank learnt at start")
        learnt = run_clapd(
            "learn-normal", "-c", str(config), "--stream", "pump", "--from", str(machine / "normal"), "--rebaseline"
        )
        assert learnt.returncode == 0, learnt.stderr
        assert 'clapd_anomaly_bank_size{stream="pump"} 79.0' not in _scrape(port)  # not taken until asked
        daemon.send_signal(signal.SIGHUP)
        wait_until(lambda: 'kind="reloaded",stream="pump"} 1.0' in _scrape(port), WAIT, "the new bank taken")
        assert 'clapd_anomaly_bank_size{stream="pump"} 79.0' in _scrape(port)
    finally:
        _, stderr = stop_daemon(daemon)
    assert "normal bank reloaded from" in stderr
