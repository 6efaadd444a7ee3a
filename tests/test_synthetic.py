"""The procedural sound generator and the planted demo stream: shapes, levels, patterns and ground truth."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import soundfile

from clapd.models import synthetic
from clapd.models.demo_stream import MIN_GAP_S, DemoStream, PlannedEvent, make_demo_stream
from clapd.models.synthetic import CLASSES, SAMPLE_RATE, make_clip, mix

STOP_WORDS = {"a", "an", "the", "of", "on", "in", "at", "to", "for", "from", "by", "with", "and", "is", "be", "you"}


def db(x: np.ndarray) -> float:
    return 10 * np.log10(np.mean(np.asarray(x, dtype=np.float64) ** 2) + 1e-30)


def spectrum(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE), np.abs(np.fft.rfft(x))


def runs(on: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) frame indices of each run of True."""
    edges = np.diff(np.concatenate([[0], on.astype(int), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


def content_words(texts: tuple[str, ...]) -> set[str]:
    words = {w for t in texts for w in re.findall(r"[a-z]+", t.lower())} - STOP_WORDS
    return {re.sub(r"(ing|ed|es|s)$", "", w) if len(w) > 4 else w for w in words}


def test_catalogue() -> None:
    assert len(CLASSES) >= 9
    for name, sound_class in CLASSES.items():
        assert sound_class.name == name
        assert 4 <= len(sound_class.captions) <= 6 and 2 <= len(sound_class.paraphrases) <= 3
        assert 0 < sound_class.durations_s[0] <= sound_class.durations_s[1] <= 10
    assert ("speech" in CLASSES) == (synthetic.ESPEAK is not None)


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_captions_and_paraphrases_share_no_content_word(name: str) -> None:
    sound_class = CLASSES[name]
    assert not content_words(sound_class.captions) & content_words(sound_class.paraphrases)


@pytest.mark.parametrize("name", sorted(CLASSES) + sorted(synthetic.BACKGROUNDS))
def test_generator_contract(name: str) -> None:
    make = CLASSES[name].make if name in CLASSES else synthetic.BACKGROUNDS[name]
    x = make(np.random.default_rng(0), 3.3)
    assert x.dtype == np.float32 and x.shape == (round(3.3 * SAMPLE_RATE),)
    assert np.isfinite(x).all() and np.abs(x).max() <= 1.0
    np.testing.assert_array_equal(x, make(np.random.default_rng(0), 3.3))
    if name != "silence":
        assert db(x) > -50
        assert not np.array_equal(x, make(np.random.default_rng(1), 3.3))


@pytest.mark.parametrize("seed", range(3))
def test_smoke_alarm_near_3khz_in_t3_pattern(seed: int) -> None:
    x = synthetic.smoke_alarm(np.random.default_rng(seed), 12.0)
    f, mag = spectrum(x)
    assert 2800 <= f[np.argmax(mag)] <= 3400
    frame = SAMPLE_RATE // 100  # 10 ms
    env = np.sqrt(np.mean(x[: len(x) // frame * frame].reshape(-1, frame).astype(np.float64) ** 2, axis=1))
    beeps = runs(env > 0.1 * env.max())
    assert all(0.45 <= (b - a) / 100 <= 0.55 for a, b in beeps[:-1])  # the last may be cut by the clip's end
    gaps = [(c - b) / 100 for (_, b), (c, _) in pairwise(beeps)]
    kinds = ["short" if 0.45 <= g <= 0.55 else "long" if 1.38 <= g <= 1.62 else f"{g} s" for g in gaps]
    first = kinds.index("long")
    assert len(gaps) >= 6 and first <= 2
    assert kinds[first:] == (["long", "short", "short"] * 4)[: len(kinds) - first]


@pytest.mark.parametrize("style", ["us", "uk"])
def test_phone_rings_with_both_tones(style: str) -> None:
    x = synthetic.phone_ringing(np.random.default_rng(0), 6.0, style=style)
    f, mag = spectrum(x)
    low, high = synthetic.PHONE_TONES[style]
    peak = mag[(f > 300) & (f < 600)].max()

    def strongest(hz: float) -> float:
        return mag[np.abs(f - hz) < 0.015 * hz].max()

    assert strongest(low) > 0.5 * peak and strongest(high) > 0.5 * peak
    assert strongest((low + high) / 2) < 0.1 * peak  # two tones, not one between them


@pytest.mark.parametrize("seed", range(5))
def test_engine_fundamental_is_low(seed: int) -> None:
    f, mag = spectrum(synthetic.engine_hum(np.random.default_rng(seed), 4.0))
    band = (f > 20) & (f < 2000)
    assert 28 <= f[band][np.argmax(mag[band])] <= 125


def fit(y: np.ndarray, sound: np.ndarray, background: np.ndarray, onset: int) -> tuple[float, float]:
    """The scales a and b with y = a * placed sound + b * background (least squares)."""
    placed = np.zeros_like(background, dtype=np.float64)
    placed[onset : onset + len(sound)] = sound
    (a, b), *_ = np.linalg.lstsq(np.stack([placed, background], axis=1).astype(np.float64), y, rcond=None)
    return a, b


@pytest.mark.parametrize(("snr_db", "gain_db"), [(0.0, -30.0), (10.0, -12.0), (30.0, -3.0), (-5.0, -20.0)])
def test_mix_hits_snr_and_peak_gain(snr_db: float, gain_db: float) -> None:
    rng = np.random.default_rng(0)
    sound, background = synthetic.siren(rng, 2.0), synthetic.colored_noise(rng, 5.0)
    onset = SAMPLE_RATE
    y = mix(sound, background, snr_db, gain_db, onset)
    assert y.dtype == np.float32 and y.shape == background.shape
    a, b = fit(y, sound, background, onset)
    span = background[onset : onset + len(sound)]
    assert abs(db(a * sound) - db(b * span) - snr_db) < 0.5
    assert abs(20 * np.log10(np.abs(y).max()) - gain_db) < 0.5


def test_mix_over_silence_and_bounds() -> None:
    sound = synthetic.knocking(np.random.default_rng(0), 1.0)
    y = mix(sound, np.zeros(2 * SAMPLE_RATE, np.float32), 10.0, -6.0, 100)
    assert abs(20 * np.log10(np.abs(y).max()) + 6.0) < 0.01 and not y[:100].any()
    with pytest.raises(ValueError, match="does not fit"):
        mix(sound, np.zeros(SAMPLE_RATE // 2, np.float32), 10.0, -6.0)


@pytest.mark.parametrize("name", [*sorted(CLASSES), None])
def test_make_clip(name: str | None) -> None:
    clip = make_clip(np.random.default_rng(7), name, seconds=5.0)
    assert clip.audio.dtype == np.float32 and clip.audio.shape == (5 * SAMPLE_RATE,)
    assert clip.class_name == name and clip.background in synthetic.BACKGROUNDS
    captions = CLASSES[name].captions if name else synthetic.BACKGROUND_CAPTIONS[clip.background]
    assert clip.caption in captions
    assert 0 <= clip.onset_s and clip.onset_s + clip.duration_s <= 5.0
    if clip.audio.any():
        assert abs(20 * np.log10(np.abs(clip.audio).max()) - clip.gain_db) < 0.01
    np.testing.assert_array_equal(clip.audio, make_clip(np.random.default_rng(7), name, seconds=5.0).audio)


@pytest.fixture(scope="module")
def stream() -> DemoStream:
    return make_demo_stream(seed=0, seconds=120.0)


def test_demo_stream_events_are_ordered_and_apart(stream: DemoStream) -> None:
    assert len(stream.events) >= 6 and stream.audio.shape == (120 * SAMPLE_RATE,)
    for e, following in pairwise(stream.events):
        assert following.start_s - e.end_s >= MIN_GAP_S


def test_demo_stream_energy_is_where_the_truth_says(stream: DemoStream) -> None:
    x = stream.audio.astype(np.float64)
    inside = np.zeros(len(x), bool)
    for e in stream.events:
        inside[round(e.start_s * SAMPLE_RATE) : round(e.end_s * SAMPLE_RATE)] = True
    outside_db = db(x[~inside])
    assert abs(outside_db - stream.background_dbfs) < 1.0
    for e in stream.events:
        start, end = round(e.start_s * SAMPLE_RATE), round(e.end_s * SAMPLE_RATE)
        assert db(x[start:end]) > outside_db + 15, e
        assert db(x[start : start + SAMPLE_RATE * 3 // 10]) > outside_db + 10, f"{e}: nothing in its first 0.3 s"
    half = SAMPLE_RATE // 2
    quiet = [x[i : i + half] for i in range(0, len(x) - half, half) if not inside[i : i + half].any()]
    assert max(db(q) for q in quiet) < stream.background_dbfs + 3  # nothing leaks out of an event's span


def test_demo_stream_is_deterministic_and_events_independent() -> None:
    events = [PlannedEvent("siren", 2.0, 6.0), PlannedEvent("knocking", 12.0, 15.0)]
    a = make_demo_stream(3, 20.0, events)
    np.testing.assert_array_equal(a.audio, make_demo_stream(3, 20.0, events).audio)
    assert not np.array_equal(a.audio, make_demo_stream(4, 20.0, events).audio)
    b = make_demo_stream(3, 20.0, [events[0], PlannedEvent("clock_ticking", 12.0, 15.0)])
    np.testing.assert_array_equal(a.audio[: 12 * SAMPLE_RATE], b.audio[: 12 * SAMPLE_RATE])


@pytest.mark.parametrize(
    ("events", "message"),
    [
        ([PlannedEvent("siren", 2.0, 6.0), PlannedEvent("knocking", 5.0, 8.0)], "less than"),
        ([PlannedEvent("siren", 2.0, 6.0), PlannedEvent("knocking", 8.0, 10.0)], "less than"),
        ([PlannedEvent("theremin", 2.0, 6.0)], "unknown sound class"),
        ([PlannedEvent("siren", 18.0, 22.0)], "does not lie within"),
    ],
)
def test_demo_stream_refuses_bad_plans(events: list[PlannedEvent], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_demo_stream(0, 20.0, events)


def test_demo_stream_wav_and_json_round_trip(stream: DemoStream, tmp_path: Path) -> None:
    audio, rate = soundfile.read(stream.write_wav(tmp_path / "demo.wav"), dtype="float32")
    assert rate == SAMPLE_RATE
    np.testing.assert_array_equal(audio, stream.audio)
    truth = json.loads(stream.ground_truth_json())
    assert [PlannedEvent(**e) for e in truth["events"]] == list(stream.events)
    assert truth["seed"] == 0 and truth["seconds"] == 120.0


def test_demo_stream_cli(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "clapd.models.demo_stream", "--seed", "0", "--seconds", "60"]
    subprocess.run([*command, "-o", str(tmp_path / "demo.wav")], check=True, capture_output=True, timeout=120)
    audio, rate = soundfile.read(tmp_path / "demo.wav", dtype="float32")
    truth = json.loads((tmp_path / "demo.json").read_text())
    assert rate == SAMPLE_RATE and len(audio) == 60 * SAMPLE_RATE
    assert [e["class_name"] for e in truth["events"]] == ["smoke_alarm", "knocking", "glass_breaking", "dog_barking"]
    np.testing.assert_array_equal(audio, make_demo_stream(0, 60.0).audio)
