"""Audio examples as prompts (issue 11, item 1): the combination rule, the example cache, bad files named with their
reason, control requests checked alike, and whole `clapd run`s of the demo bundle on a planted demo stream.

The sounds the demo model never trained on are synthesised here: a vacuum cleaner (broadband airflow and a motor's
1 kHz whine) and a microwave oven's beeping (3.5 kHz, 1 s on every 1.5 s), which the smoke alarm's text prompt
takes for a smoke alarm. Each is one machine: its pitch is fixed, its noise and phase differ from one take to the
next. Whether one negative example tells a beep from the alarm depends on the model's audio side, beep by beep:
the demo model shipped until 2026-12-02 told 0.25 s beeps every 0.6 s apart from its alarm but not these long ones
(the negative example took the real alarm down with them), the one shipped since then the other way round, so
this is a demonstration on one beep the shipped model separates, not a measure: bench_fewshot's planted oven timer
is the measure (docs/benchmarks.md). Examples are "recorded" as the demo stream's sounds are planted: 25 dB over
room tone at -50 dBFS.
`clapd.models.novel_sounds` has a vacuum cleaner and microwave beeps too, but draws each take's pitch, pattern and
spin-up anew, and its microwave beeps at 1.6-2.4 kHz, far below the smoke alarm's 2.9-3.3 kHz: the assertions here
need one fixed machine per sound (an example of one take finds the others) and beeps the smoke alarm's prompt fires
on, so these two stay.
"""

from __future__ import annotations

import json
import logging
import math
import stat
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml
from helpers import run_clapd

import clapd
from clapd.daemon.classify import Classifier, read_audio, scoring_from
from clapd.daemon.config import ConfigError, DetectionConfig, parse_config
from clapd.daemon.control import ControlError, ControlRequest, ControlResult, apply_request, parse_request
from clapd.daemon.demo import DEMO_DETECTIONS, DEMO_EVENT_SETTINGS, DEMO_WINDOWS, demo_detections
from clapd.daemon.examples import ExampleEmbedder, ExampleError, check_example_entry
from clapd.daemon.matcher import DetectionPrompts, Matcher, detection_logits
from clapd.models.demo_stream import BACKGROUND_DBFS, EVENT_SNR_DB, PlannedEvent, make_demo_stream
from clapd.models.synthetic import _finish  # 5 ms fades, peak 0.9: as every generated sound ends

DEMO_BUNDLE = Path(clapd.__file__).parent / "demo_bundle"
RATE = 48_000
HOP_S, WINDOW_S = DEMO_WINDOWS["hop_seconds"], DEMO_WINDOWS["window_seconds"]
SEED = 26  # the test stream's; every sound in it is its own take, unlike any example's
LAYOUT = (  # the demo sounds planted, leaving room for the synthesised ones
    PlannedEvent("smoke_alarm", 3.0, 9.0),
    PlannedEvent("knocking", 35.0, 38.0),
    PlannedEvent("siren", 45.0, 52.0),
    PlannedEvent("phone_ringing", 75.0, 83.0),
    PlannedEvent("dog_barking", 88.0, 92.0),
    PlannedEvent("glass_breaking", 110.0, 112.0),
)
VACUUM_AT = (20.3, 100.0)  # s: each a 3 s take
BEEPS_AT = (60.1,)  # s: a 2.2 s take
EXAMPLE_CLASSES = ("smoke_alarm", "knocking", "dog_barking", "glass_breaking")  # demo classes taught by example


# --- sounds ---------------------------------------------------------------------------------------------------------


def vacuum_cleaner(rng: np.random.Generator, seconds: float = 3.0) -> np.ndarray:
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    air = np.convolve(rng.standard_normal(n), np.ones(4) / 4, "same")
    return _finish(air + 0.5 * np.sin(2 * np.pi * 1000 * t + rng.uniform(0, 2 * np.pi)))


def microwave_beeps(rng: np.random.Generator, seconds: float = 2.2) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return _finish(np.sin(2 * np.pi * 3500 * t + rng.uniform(0, 2 * np.pi)) * ((t % 1.5) < 1.0))


def plant(audio: np.ndarray, sound: np.ndarray, start_s: float) -> None:
    """As the demo stream plants its sounds: mean power EVENT_SNR_DB above the background's nominal level."""
    start = int(start_s * RATE)
    power = float(np.mean(sound.astype(np.float64) ** 2))
    audio[start : start + sound.size] += sound * 10 ** ((BACKGROUND_DBFS + EVENT_SNR_DB) / 20) / math.sqrt(power)


def recording(seed: int, sound: np.ndarray, seconds: float = 5.0) -> np.ndarray:
    """An example as a user records one: the sound 0.3 s into room tone."""
    audio = make_demo_stream(seed=seed, seconds=seconds, events=[]).audio.astype(np.float64)
    plant(audio, sound, 0.3)
    return np.clip(audio, -1, 1).astype(np.float32)


def write(path: Path, audio: np.ndarray, rate: int = RATE, subtype: str = "FLOAT") -> str:
    soundfile.write(path, audio, rate, subtype=subtype)
    return str(path)


# --- the combination rule -------------------------------------------------------------------------------------------


def unit(v: list[float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float32)
    return a / np.linalg.norm(a)


NONE = np.zeros((0, 3), dtype=np.float32)


def test_the_detection_logit_is_the_larger_of_text_and_examples_less_the_margin() -> None:
    window = unit([1, 0, 0])
    text = DetectionPrompts("t", unit([1, 1, 0]), NONE, None)
    examples = DetectionPrompts("e", None, NONE, None, example=unit([4, 1, 0]), margin=0.3)
    both = DetectionPrompts("b", unit([1, 1, 0]), NONE, None, example=unit([4, 1, 0]), margin=0.3)
    cos_text, cos_example = float(unit([1, 1, 0])[0]), float(unit([4, 1, 0])[0])  # 0.707, 0.970
    assert detection_logits(text, window, 10.0) == pytest.approx([10 * cos_text])
    assert detection_logits(examples, window, 10.0) == pytest.approx([10 * (cos_example - 0.3)])
    assert detection_logits(both, window, 10.0) == pytest.approx([10 * max(cos_text, cos_example - 0.3)])
    far = unit([0, 1, 0])  # the text is closer here than the example, less its margin
    assert detection_logits(both, far, 10.0) == pytest.approx([10 * float(unit([1, 1, 0])[1])])


def test_negative_examples_compete_each_on_its_own_less_their_own_margin() -> None:
    window = unit([1, -0.3, 0])  # a sound the text half describes (cosine 0.47), and exactly a negative example
    negatives = np.stack([unit([1, -0.3, 0]), unit([0, 0, 1])])
    detection = DetectionPrompts(  # the examples' margin (0.6) is not the negative examples' (0.25)
        "d", unit([1, 1, 0]), unit([0, 1, 1])[None], None, negative_examples=negatives, margin=0.6, negative_margin=0.25
    )
    logits = detection_logits(detection, window, 20.0)
    expected = [window @ unit([1, 1, 0]), window @ unit([0, 1, 1]), 1.0 - 0.25, window @ unit([0, 0, 1]) - 0.25]
    assert logits == pytest.approx(20.0 * np.array(expected), rel=1e-5)
    matcher = Matcher([detection], unit([0, 0, 1])[None], 20.0)
    probabilities = np.exp(logits - logits.max())
    background = np.exp(20.0 * (window @ unit([0, 0, 1])) - logits.max())
    assert matcher.score("s", window)["d"] == pytest.approx(probabilities[0] / (probabilities.sum() + background))
    assert matcher.score("s", window)["d"] < 0.5  # the window is the negative example: it loses


def test_adding_examples_never_lowers_a_score_on_audio_like_them() -> None:
    background = unit([0, 0, 1])[None]
    text = DetectionPrompts("d", unit([1, 1, 0]), NONE, None)
    taught = DetectionPrompts("d", unit([1, 1, 0]), NONE, None, example=unit([1, 0, 0.1]))
    for window in (unit([1, 0, 0.1]), unit([1, 0.5, 0.3]), unit([0.2, 1, 0.5])):
        before = Matcher([text], background, 14.0).score("s", window)["d"]
        assert Matcher([taught], background, 14.0).score("s", window)["d"] >= before


# --- examples embedded and cached -----------------------------------------------------------------------------------


class LoudnessModel:
    """An audio model stand-in: the embedding says how loud a window is (loud, quiet), and counts its calls."""

    def __init__(self) -> None:
        self.windows = 0

    def embed(self, windows: np.ndarray) -> np.ndarray:
        self.windows += len(windows)
        rms = np.sqrt(np.mean(np.square(windows, dtype=np.float64), axis=1))
        vectors = np.stack([np.clip(rms * 10, 0, 1), 0.1 + np.zeros_like(rms), 1 - np.clip(rms * 10, 0, 1)], axis=1)
        return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def embedder(model: LoudnessModel, cache: Path | None, sha: str = "audio-sha") -> ExampleEmbedder:
    window = RATE  # 1 s windows at a 1 s hop: model input 2 s
    return ExampleEmbedder(
        model, sample_rate=RATE, window=window, hop=window, model_window=2 * window, cache_dir=cache, model_sha256=sha
    )


def test_an_example_is_the_mean_of_the_windows_that_hold_the_sound(tmp_path: Path) -> None:
    t = np.arange(6 * RATE) / RATE
    audio = np.where(t < 1, 0.5 * np.sin(2 * np.pi * 440 * t), 0.001 * np.sin(2 * np.pi * 50 * t)).astype(np.float32)
    path = write(tmp_path / "one_loud_second.wav", audio)
    model = LoudnessModel()
    got = embedder(model, None).embed([path])
    assert model.windows == 1  # the 5 quiet windows (room tone) are left out, not even embedded
    loud = model.embed(np.tile(audio[:RATE], 2)[None])[0]
    np.testing.assert_allclose(got[0], loud, atol=1e-6)


def test_a_short_example_is_one_repeat_padded_window_and_other_rates_are_resampled(tmp_path: Path) -> None:
    short = write(tmp_path / "short.wav", (0.3 * np.sin(np.arange(8000) / 5)).astype(np.float32), rate=16_000)
    model = LoudnessModel()
    got = embedder(model, None).embed([short])
    assert got.shape == (1, 3) and model.windows == 1


def test_the_cache_is_private_reused_and_keyed_by_model_and_content(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "state" / "example-cache"
    folder = tmp_path / "beeps"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.wav", "b.flac"):
        write(folder / name, recording(1, microwave_beeps(rng)), subtype="PCM_16")
    (folder / "notes.txt").write_text("not audio: ignored in a folder")
    model = LoudnessModel()
    first = embedder(model, cache).embed([str(folder)])
    files = sorted(cache.glob("*.npy"))
    assert first.shape == (2, 3) and len(files) == 2
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o600}
    stamps = [f.stat().st_mtime_ns for f in files]
    again = LoudnessModel()
    np.testing.assert_array_equal(embedder(again, cache).embed([str(folder)]), first)
    assert again.windows == 0 and [f.stat().st_mtime_ns for f in files] == stamps  # read, not re-embedded
    embedder(again, cache, sha="another-model").embed([str(folder / "a.wav")])
    assert again.windows > 0 and len(list(cache.glob("*.npy"))) == 3  # another audio model: its own entry
    files[0].write_bytes(b"")  # damaged: recomputed with a warning, written again whole
    np.save(files[1], np.full(3, np.nan, dtype=np.float32))
    caplog.set_level(logging.WARNING, logger="clapd.daemon.examples")
    healed = LoudnessModel()
    np.testing.assert_allclose(embedder(healed, cache).embed([str(folder)]), first, atol=1e-6)
    warnings = [r.getMessage() for r in caplog.records if "example cache entry" in r.getMessage()]
    assert len(warnings) == 2 and all("recomputing it" in w for w in warnings), warnings
    assert all(np.isfinite(np.load(f)).all() and np.load(f).shape == (3,) for f in files)


# --- bad example files ----------------------------------------------------------------------------------------------


@pytest.fixture
def bad_examples(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """name -> (path, the reason the check must give)."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "empty_folder"
    folder.mkdir()
    (folder / "readme.txt").write_text("no audio here")
    mixed = tmp_path / "mixed_folder"
    mixed.mkdir()
    write(mixed / "good.wav", recording(2, vacuum_cleaner(rng)))
    write(mixed / "quiet.wav", (1e-4 * rng.standard_normal(RATE)).astype(np.float32))
    (tmp_path / "notes.wav").write_text("this is text, not audio")
    nan = (0.1 * rng.standard_normal(RATE)).astype(np.float32)
    nan[100] = np.nan
    return {
        "missing": (str(tmp_path / "missing.wav"), "no such file or folder"),
        "unreadable": (str(tmp_path / "notes.wav"), "not audio libsndfile can read"),
        "short": (write(tmp_path / "click.wav", 0.5 * rng.standard_normal(int(0.05 * RATE))), "too short: 0.050 s"),
        "silent": (write(tmp_path / "quiet.wav", 1e-4 * rng.standard_normal(2 * RATE)), "silent: its loudest 0.1 s"),
        "nan": (write(tmp_path / "nan.wav", nan), "holds NaN or infinite samples"),
        "long": (write(tmp_path / "long.wav", np.full(61 * 8000, 0.1, np.float32), rate=8000), "61.0 s long"),
        "empty_folder": (str(folder), "the folder holds no audio files"),
        "mixed_folder": (str(mixed), "quiet.wav: silent"),
    }


def test_each_bad_example_is_named_with_its_reason(bad_examples: dict[str, tuple[str, str]]) -> None:
    for name, (path, reason) in bad_examples.items():
        with pytest.raises(ExampleError) as caught:
            check_example_entry(Path(path))
        assert reason in str(caught.value), (name, str(caught.value))


def test_check_config_and_run_name_every_bad_example_and_start_nothing(
    bad_examples: dict[str, tuple[str, str]], tmp_path: Path
) -> None:
    entries = [path for path, _ in bad_examples.values()]
    config = {
        "model": {"bundle": str(DEMO_BUNDLE), "providers": ["cpu"]},
        "streams": {"room": {"type": "file", "path": entries[0]}},
        "detections": {
            "thing": {"examples": entries[:4], "negative_examples": entries[4:]},
            "fine": {"prompts": ["a dog barking"]},
        },
        "outputs": {"stdout": True},
        "state_dir": str(tmp_path / "state"),
    }
    path = tmp_path / "clapd.yaml"
    path.write_text(yaml.safe_dump(config))
    for command in ("check-config", "run -c"):
        result = run_clapd(*command.split(), str(path), timeout=120)
        assert result.returncode == 2, result.stderr[-3000:]
        assert result.stdout == ""
        for k, (entry, reason) in enumerate(bad_examples.values()):
            key = f"detections.thing.examples.{k}" if k < 4 else f"detections.thing.negative_examples.{k - 4}"
            assert any(
                line.strip().startswith(f"{key} = {entry!r}") and reason in line for line in result.stderr.splitlines()
            ), (
                key,
                result.stderr,
            )
    assert not (tmp_path / "state").exists()  # nothing started


def test_a_detection_needs_prompts_examples_or_a_level() -> None:
    base = {"streams": {"room": {"type": "mic"}}}
    with pytest.raises(ConfigError, match="give prompts \\(text\\), examples \\(audio files\\) or both"):
        parse_config({**base, "detections": {"d": {"negative_prompts": ["x"]}}})
    with pytest.raises(ConfigError, match="remove prompts"):
        parse_config({**base, "detections": {"d": {"prompts": ["x"], "level": {"above_dbfs": -20}}}})


def test_control_requests_check_examples_as_the_config_does(tmp_path: Path) -> None:
    good = write(tmp_path / "vacuum.wav", recording(3, vacuum_cleaner(np.random.default_rng(3))))
    silent = write(tmp_path / "silent.wav", np.zeros(RATE, np.float32))
    detections = {"dog": DetectionConfig(prompts=["a dog barking"])}
    payload = {"request_id": "r", "action": "set", "detection": "vacuum", "config": {"examples": [silent]}}
    refused = parse_request(json.dumps(payload).encode())  # in the MQTT thread, at once
    assert isinstance(refused, ControlResult) and not refused.ok
    assert refused.errors[0].startswith(f"config.examples.0 = {silent!r}: Value error, silent"), refused.errors
    unchecked = ControlRequest.model_validate(payload)  # built in code, past the parser: apply checks again
    with pytest.raises(ControlError, match="config.examples.0 = .*silent"):
        apply_request(detections, unchecked, ["room"])
    accepted = ControlRequest.model_validate({**payload, "config": {"examples": [good], "threshold_on": 0.6}})
    assert apply_request(detections, accepted, ["room"])["vacuum"].examples == [good]
    update = ControlRequest.model_validate(
        {"action": "update", "detection": "dog", "config": {"negative_examples": [str(tmp_path / "gone.wav")]}}
    )
    with pytest.raises(ControlError, match="config.negative_examples.0 = .*no such file"):
        apply_request(detections, update, ["room"])


# --- whole runs of the demo bundle ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A demo stream with a vacuum cleaner and a microwave's beeping planted, the examples, and a config watching it:
    the demo detections by text, four of them again by one example each, a vacuum cleaner by one example only, and
    the smoke alarm by text alone and by text with the microwave's beeping as a negative example."""
    folder = tmp_path_factory.mktemp("examples")
    rng = np.random.default_rng(SEED)
    audio = make_demo_stream(seed=SEED, events=LAYOUT).audio.astype(np.float64)
    for start in VACUUM_AT:
        plant(audio, vacuum_cleaner(rng), start)
    for start in BEEPS_AT:
        plant(audio, microwave_beeps(rng), start)
    stream = write(folder / "stream.wav", np.clip(audio, -1, 1).astype(np.float32))
    vacuum = write(folder / "vacuum.wav", recording(SEED + 1000, vacuum_cleaner(rng)))
    beeps = write(folder / "microwave.wav", recording(SEED + 2000, microwave_beeps(rng)))
    detections = demo_detections()
    for name in EXAMPLE_CLASSES:  # recorded from other takes of the generator than any in the stream
        take = make_demo_stream(seed=500, seconds=6.0, events=[PlannedEvent(name, 1.0, 5.0)])
        detections[f"{name}_by_example"] = {"examples": [str(take.write_wav(folder / f"{name}.wav"))]}
        detections[f"{name}_by_example"].update(DEMO_EVENT_SETTINGS)
    detections["vacuum"] = {"examples": [vacuum], **DEMO_EVENT_SETTINGS}
    detections["smoke_alarm_not_microwave"] = {
        "prompts": [DEMO_DETECTIONS["smoke_alarm"]],
        "negative_examples": [beeps],
        **DEMO_EVENT_SETTINGS,
    }
    config = {
        "model": {"bundle": str(DEMO_BUNDLE), "providers": ["cpu"], "precision": "fp32"},
        "windows": DEMO_WINDOWS,
        "streams": {"demo": {"type": "file", "path": stream, "realtime": False}},
        "detections": detections,
        "outputs": {"stdout": True},
        "state_dir": str(folder / "state"),
    }
    path = folder / "clapd.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, config


def run_starts(path: Path) -> tuple[list[dict], str]:
    result = run_clapd("run", "-c", str(path), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return [e for e in map(json.loads, result.stdout.splitlines()) if e["kind"] == "start"], result.stderr


def starts_of(starts: list[dict], detection: str) -> list[float]:
    return [s["start_offset_seconds"] for s in starts if s["detection"] == detection]


def within(start: float, begin: float, end: float) -> bool:
    return begin - HOP_S <= start <= end


def test_examples_detect_what_text_does_a_new_sound_and_a_negative_stops_a_confusion(
    planted: tuple[Path, dict],
) -> None:
    path, config = planted
    state = Path(config["state_dir"])
    starts, stderr = run_starts(path)
    embedded = [line for line in stderr.splitlines() if "clapd.daemon.examples" in line and "embedded" in line]
    assert len(embedded) == len(EXAMPLE_CLASSES) + 2, stderr[-3000:]

    # A demo class taught by one example finds every planted sound of it that its text prompt finds.
    for event in (e for e in LAYOUT if e.class_name in EXAMPLE_CLASSES):
        assert any(within(s, event.start_s, event.end_s) for s in starts_of(starts, event.class_name)), event
        assert any(within(s, event.start_s, event.end_s) for s in starts_of(starts, f"{event.class_name}_by_example"))
    # Between the planted sounds, nothing taught by example starts.
    planted_spans = [(e.start_s, e.end_s) for e in LAYOUT] + [(a, a + 3.0) for a in VACUUM_AT + BEEPS_AT]
    quiet = [
        s
        for s in starts
        if (s["detection"].endswith("_by_example") or s["detection"] == "vacuum")
        and not any(a - HOP_S <= s["start_offset_seconds"] <= b + WINDOW_S for a, b in planted_spans)
    ]
    assert not quiet, quiet

    # A sound no text names: the vacuum cleaner, known by one example, fires on each take and nowhere else.
    vacuum = starts_of(starts, "vacuum")
    assert len(vacuum) == len(VACUUM_AT) and all(any(within(s, a, a + 3) for s in vacuum) for a in VACUUM_AT), vacuum

    # The microwave's beeping fires the smoke alarm's text; with the beeping as a negative example it does not,
    # and the real smoke alarm still fires.
    beep_start, beep_end = BEEPS_AT[0], BEEPS_AT[0] + 2.2
    assert any(within(s, beep_start, beep_end) for s in starts_of(starts, "smoke_alarm")), starts_of(
        starts, "smoke_alarm"
    )
    guarded = starts_of(starts, "smoke_alarm_not_microwave")
    assert not any(within(s, beep_start, beep_end + WINDOW_S) for s in guarded), guarded
    alarm = LAYOUT[0]
    assert any(within(s, alarm.start_s, alarm.end_s) for s in guarded), guarded

    # The second run reads every example from the cache: nothing re-embedded, no cache file rewritten.
    cache = state / "example-cache"
    files = sorted(cache.glob("*.npy"))
    assert len(files) == len(EXAMPLE_CLASSES) + 2
    assert {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o600} and stat.S_IMODE(cache.stat().st_mode) == 0o700
    stamps = [f.stat().st_mtime_ns for f in files]
    again, stderr = run_starts(path)
    assert not [line for line in stderr.splitlines() if "embedded" in line], stderr[-3000:]
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert sorted((s["detection"], s["start_offset_seconds"]) for s in again) == sorted(
        (s["detection"], s["start_offset_seconds"]) for s in starts
    )


def test_classify_scores_examples_with_the_same_detector(planted: tuple[Path, dict]) -> None:
    path, config = planted
    recording_path = config["streams"]["demo"]["path"]
    result = run_clapd("classify", "-c", str(path), recording_path, "--json", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    events = json.loads(result.stdout)["events"]
    vacuum = [e["start_offset_seconds"] for e in events if e["kind"] == "start" and e["detection"] == "vacuum"]
    assert len(vacuum) == len(VACUUM_AT) and all(any(within(s, a, a + 3) for s in vacuum) for a in VACUUM_AT)


def test_the_negative_examples_margin_is_their_own(planted: tuple[Path, dict]) -> None:
    """A smaller `negative_example_margin` lowers the guarded detection's scores on the negative example's sound;
    it leaves a detection taught by examples alone as it was (its `example_margin` is another setting)."""
    _, config = planted
    detections = {
        f"{name}_{round(100 * margin)}": {**config["detections"][name], "negative_example_margin": margin}
        for name in ("smoke_alarm_not_microwave", "vacuum")
        for margin in (0.3, 0.1)
    }
    classifier = Classifier(scoring_from(parse_config({**config, "detections": detections})))
    beeps = config["detections"]["smoke_alarm_not_microwave"]["negative_examples"][0]
    table = classifier.score(read_audio(Path(beeps), classifier.sample_rate))
    column = {name: table.scores[:, table.prompts.index(name)] for name in detections}
    assert column["smoke_alarm_not_microwave_10"].max() < column["smoke_alarm_not_microwave_30"].max()
    assert np.array_equal(column["vacuum_10"], column["vacuum_30"])
