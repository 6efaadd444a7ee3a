"""The few-shot benchmark's sounds (`clapd.models.novel_sounds`): deterministic generators of the documented length
and level, planted confusions that really are close to the demo class they imitate, held-out streams with ground
truth, and one real-model check through the Detector that an example teaches the demo model what text does not."""

from __future__ import annotations

import math
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

import clapd
from clapd.daemon.classify import Classifier, scoring_from
from clapd.daemon.config import ClapdConfig
from clapd.daemon.demo import DEMO_EVENT_SETTINGS, DEMO_WINDOWS
from clapd.models import synthetic
from clapd.models.demo_stream import BACKGROUND_DBFS, EVENT_SNR_DB, MIN_GAP_S, DemoStream
from clapd.models.novel_sounds import (
    CHIRP_HZ,
    CONFUSIONS,
    EXAMPLE_ONSET_S,
    MAX_GAP_S,
    NOVEL,
    OVEN_TIMER_HZ,
    STREAM_SOUNDS,
    durations_of,
    make_example,
    make_novel_stream,
    notification_chirp,
    oven_timer,
)

RATE = synthetic.SAMPLE_RATE
DEMO_BUNDLE = Path(clapd.__file__).parent / "demo_bundle"
SMOKE_ALARM_HZ = (2900.0, 3300.0)  # synthetic.smoke_alarm's piezo
PHONE_HZ = (400.0, 480.0)  # synthetic.PHONE_TONES, US and UK
NEAR = 0.06  # "near": a confusion's dominant frequency within 6 % of the band of the class it imitates
EVERY = {**NOVEL, **CONFUSIONS}


def db(x: np.ndarray) -> float:
    return 10 * math.log10(float(np.mean(np.square(x, dtype=np.float64))) + 1e-20)


def dominant_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64) * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1.0 / RATE)[int(np.argmax(spectrum))])


def distance_to_band(f: float, band: tuple[float, float]) -> float:
    """How far `f` lies outside `band`, relative to the band's nearer edge (0 inside it)."""
    lo, hi = band
    return max(lo - f, f - hi, 0.0) / (lo if f < lo else hi)


@pytest.mark.parametrize("name", EVERY)
def test_generators_are_deterministic_per_seed_and_of_the_documented_length_and_peak(name: str) -> None:
    make = EVERY[name].make
    a = make(np.random.default_rng(5), 3.3)
    assert a.dtype == np.float32 and a.shape == (round(3.3 * RATE),)
    assert np.isfinite(a).all()
    assert np.max(np.abs(a)) == pytest.approx(synthetic.PEAK, abs=1e-6)
    assert abs(float(a[0])) < 1e-3 and abs(float(a[-1])) < 1e-3  # faded in and out
    np.testing.assert_array_equal(a, make(np.random.default_rng(5), 3.3))
    assert not np.array_equal(a, make(np.random.default_rng(6), 3.3))
    assert db(a) > -30  # a sound, not near-silence: every class is heard through its span


def test_the_oven_timer_beeps_near_the_smoke_alarm_and_the_chirp_near_the_phone() -> None:
    for seed in range(8):
        oven = dominant_hz(oven_timer(np.random.default_rng(seed), 4.0))
        alarm = dominant_hz(synthetic.smoke_alarm(np.random.default_rng(seed), 4.0))
        assert OVEN_TIMER_HZ[0] - 5 <= oven <= OVEN_TIMER_HZ[1] + 5
        assert SMOKE_ALARM_HZ[0] - 5 <= alarm <= SMOKE_ALARM_HZ[1] + 5
        assert 0 < distance_to_band(oven, SMOKE_ALARM_HZ) <= NEAR, oven  # near it, yet not in it
        chirp = dominant_hz(notification_chirp(np.random.default_rng(seed), 4.0))
        assert CHIRP_HZ[0] - 5 <= chirp <= CHIRP_HZ[1] + 5
        assert distance_to_band(chirp, PHONE_HZ) <= NEAR, chirp


@pytest.fixture(scope="module")
def stream() -> DemoStream:
    return make_novel_stream(1000, 240.0)


def test_a_novel_stream_plants_every_sound_apart_at_the_stream_level(stream: DemoStream) -> None:
    assert stream.audio.shape == (240 * RATE,)
    assert {e.class_name for e in stream.events} == set(STREAM_SOUNDS)
    for e, following in pairwise(stream.events):
        assert MIN_GAP_S <= following.start_s - e.end_s <= MAX_GAP_S
    for e in stream.events:
        lo, hi = durations_of(e.class_name)
        assert lo - 0.01 <= e.end_s - e.start_s <= hi + 0.01, e
        span = stream.audio[round(e.start_s * RATE) : round(e.end_s * RATE)]
        assert db(span) == pytest.approx(BACKGROUND_DBFS + EVENT_SNR_DB, abs=0.5), e  # sound + background power


def test_a_novel_stream_is_the_same_for_the_same_seed() -> None:
    a = make_novel_stream(1000, 40.0)
    np.testing.assert_array_equal(a.audio, make_novel_stream(1000, 40.0).audio)
    assert a.events == make_novel_stream(1000, 40.0).events
    assert not np.array_equal(a.audio, make_novel_stream(1001, 40.0).audio)
    with pytest.raises(ValueError, match="unknown sounds theremin"):
        make_novel_stream(1000, 40.0, ["doorbell", "theremin"])


def test_an_example_is_one_occurrence_half_a_second_into_room_tone() -> None:
    example = make_example("doorbell", 7)
    (event,) = example.events
    assert example.seconds == 5.0 and event.start_s == EXAMPLE_ONSET_S and event.class_name == "doorbell"
    assert durations_of("doorbell")[0] <= event.end_s - event.start_s <= durations_of("doorbell")[1]
    assert db(example.audio[: round(0.4 * RATE)]) < BACKGROUND_DBFS + 3  # room tone before it
    span = example.audio[round(event.start_s * RATE) : round(event.end_s * RATE)]
    assert db(span) == pytest.approx(BACKGROUND_DBFS + EVENT_SNR_DB, abs=0.5)
    with pytest.raises(ValueError, match="unknown sound 'theremin'"):
        make_example("theremin", 1)


def test_an_example_teaches_the_demo_model_a_sound_its_text_does_not_describe(tmp_path: Path) -> None:
    """A vacuum cleaner (never trained on): one example recording scores a held-out take of another vacuum cleaner,
    through the daemon's Detector, above the plain prompt, and above the demo threshold."""
    example = make_example("vacuum_cleaner", 93_000).write_wav(tmp_path / "vacuum.wav")
    held_out = make_example("vacuum_cleaner", 71_000, seconds=8.0)  # another seed: another machine, another take
    settings = {**DEMO_EVENT_SETTINGS}
    config = ClapdConfig.model_validate(
        {
            "model": {"bundle": str(DEMO_BUNDLE), "providers": ["cpu"], "precision": "fp32"},
            "windows": DEMO_WINDOWS,
            "streams": {"room": {"type": "file", "path": str(example)}},
            "detections": {
                "by_text": {"prompts": [NOVEL["vacuum_cleaner"].prompt], **settings},
                "by_example": {"examples": [str(example)], **settings},
            },
            "state_dir": str(tmp_path / "state"),
        }
    )
    table = Classifier(scoring_from(config)).score(held_out.audio)
    (event,) = held_out.events
    inside = (table.starts >= event.start_s) & (table.ends <= event.end_s)  # windows filled by the sound
    assert inside.sum() >= 4
    by_text = table.scores[inside, table.prompts.index("by_text")]
    by_example = table.scores[inside, table.prompts.index("by_example")]
    assert np.median(by_example) > np.median(by_text), (by_example, by_text)
    assert np.median(by_example) >= DEMO_EVENT_SETTINGS["threshold_on"]
