"""Sounds the demo model never trained on, planted confusions, and held-out streams of them with ground truth.

Numpy and soundfile only (no torch). Every generator is `(rng, seconds) -> audio` as in `clapd.models.synthetic`
(whose building blocks it uses): mono float32 at 48 kHz, exactly `round(seconds * SAMPLE_RATE)` samples,
peak-normalised to `synthetic.PEAK` (0.9), 5 ms fades at both ends; all randomness comes from the generator passed in.

- New classes (`NOVEL`): doorbell chimes, microwave beeps, a kettle whistle, a vacuum cleaner, a car horn, an alarm
  clock; none of them is one of `synthetic.CLASSES`, on which the demo model was trained.
- Planted confusions (`CONFUSIONS`): sounds made to resemble a demo class without being one. The oven timer beeps
  on a piezo just below the smoke alarm's (2.75-2.85 kHz against the alarm's 2.9-3.3 kHz: its dominant frequency
  within 6 % of the alarm's) in fast groups of four rather than the alarm's T3 pattern; the notification chirp
  sweeps through 400-500 Hz, where the phone's ring tones lie (400-480 Hz), in short pairs of chirps, not a ring.
  The oven timer's band is where the demo model's smoke-alarm prompt still fires on it (on 15 of 20 in
  `benchmarks/bench_fewshot.py`'s streams) without the model hearing it as the alarm throughout: inside the alarm's
  own band the demo model embeds any piezo beeping as it embeds the alarm (cosine 0.99, whatever the pattern), and
  from 3.4 kHz up or 2.6 kHz down the prompt no longer fires on these groups of four (a steadier beep does: the
  3.5 kHz beeps of tests/test_examples.py, 0.25 s on every 0.6 s, fire it).

Streams (`make_novel_stream`) and example recordings (`make_example`) are `demo_stream.DemoStream`s: a background at
`demo_stream.BACKGROUND_DBFS` with each sound planted `demo_stream.EVENT_SNR_DB` above it, as the demo stream does.

    python -m clapd.models.novel_sounds --seed 1000 --seconds 240 -o novel.wav   # writes novel.wav and novel.json
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from clapd.models.demo_stream import (
    BACKGROUND_DBFS,
    CLASS_SOUNDS,
    MIN_GAP_S,
    DemoStream,
    PlannedEvent,
    make_demo_stream,
)
from clapd.models.synthetic import (
    BACKGROUNDS,
    SAMPLE_RATE,
    Generator,
    _add,
    _finish,
    _gate,
    _harmonics,
    _ringing,
    _samples,
    _shaped_noise,
    _slow_noise,
    _time,
)

MAX_GAP_S = 12.0  # s: the longest quiet stretch between planted sounds in a novel stream
NOVEL_STREAM_S = 240.0  # s: a novel stream's default length
EXAMPLE_S = 5.0  # s: an example recording: the sound 0.5 s in, room tone around it
EXAMPLE_ONSET_S = 0.5  # s
OVEN_TIMER_HZ = (2750.0, 2850.0)  # the oven timer's piezo; the smoke alarm's is 2900-3300 Hz (synthetic.smoke_alarm)
CHIRP_HZ = (400.0, 500.0)  # the notification chirp's sweep; the phone's ring tones are 400-480 Hz


# --- new classes ----------------------------------------------------------------------------------------------------


def _chime(rng: np.random.Generator, f0: float, seconds: float) -> np.ndarray:
    """One struck chime bar: the partials of a free bar, the higher ones dying faster, and a soft strike."""
    n = _samples(seconds)
    ratios = np.array([1.0, 2.76, 5.40])  # a free bar's partials
    decay = rng.uniform(0.6, 1.4)  # s: the fundamental's
    tone = _ringing(n, f0 * ratios, decay / ratios**1.5, np.array([1.0, 0.35, 0.12]), rng)
    m = _samples(0.01)
    tone[:m] += 0.2 * _shaped_noise(rng, m, 1000, 8000) * np.exp(-_time(m) / 0.002)
    return tone


def doorbell(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Doorbell chimes: ding-dong (a falling third) or three falling tones, each press 2.5-4 s after the last."""
    n = _samples(seconds)
    top = rng.uniform(600, 900)  # Hz
    steps = [1.0, rng.choice([0.8, 5 / 6])]  # a major or minor third down
    if rng.uniform() < 0.5:
        steps.append(steps[-1] * rng.choice([0.8, 5 / 6]))
    spacing, period = rng.uniform(0.35, 0.7), rng.uniform(2.5, 4.0)  # s
    out = np.zeros(n)
    for press in np.arange(rng.uniform(0.0, 0.1), max(seconds - 0.3, 0.01), period):
        for k, step in enumerate(steps):
            _add(out, _chime(rng, top * step, 2.5) * rng.uniform(0.85, 1.0), _samples(press + k * spacing))
    return _finish(out)


def microwave_beeps(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A microwave oven done: 3-5 short pure-tone beeps at 1.6-2.4 kHz, the group repeated after a pause."""
    n = _samples(seconds)
    f = rng.uniform(1600, 2400)  # Hz
    on, off = rng.uniform(0.12, 0.35), rng.uniform(0.1, 0.3)  # s
    count = int(rng.integers(3, 6))
    cycle = count * (on + off) + rng.uniform(1.0, 2.0)
    env = _gate(n, [(k * (on + off), k * (on + off) + on) for k in range(count)], cycle, rng.uniform(0.0, 0.1))
    phase = 2 * np.pi * f * _time(n) + rng.uniform(0, 2 * np.pi)
    return _finish(_harmonics(phase, np.array([1.0, 0.0, rng.uniform(0.0, 0.05)])) * env)


def kettle_whistle(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A whistling kettle: a whistle rising to 1.8-2.6 kHz as it swells, warbling, in breathy steam noise."""
    n = _samples(seconds)
    t = _time(n)
    end, rise, first = rng.uniform(1800, 2600), rng.uniform(0.5, 2.0), rng.uniform(0.5, 0.7)  # Hz, s, of end
    settle = 1.0 - np.exp(-t / rise)
    warble = 1.0 + 0.004 * np.sin(2 * np.pi * rng.uniform(4, 9) * t) + 0.01 * _slow_noise(rng, n, 1.0)
    f = end * (first + (1 - first) * settle) * warble
    phase = 2 * np.pi * np.cumsum(f) / SAMPLE_RATE
    whistle = np.sin(phase) + 0.1 * np.sin(2 * phase)
    if rng.uniform() < 0.5:  # a two-reed whistle: a second tone just above, beating
        whistle += rng.uniform(0.3, 0.8) * np.sin(phase * rng.uniform(1.02, 1.08))
    swell = settle * (1.0 + 0.15 * _slow_noise(rng, n, 2.0))
    steam = _shaped_noise(rng, n, 1000, 9000) * (0.2 + 0.8 * settle)
    return _finish(swell * whistle + rng.uniform(0.2, 0.5) * steam)


def vacuum_cleaner(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A vacuum cleaner: a motor's whine (400-1200 Hz and harmonics, sometimes spinning up) over broadband airflow
    that swells as the nozzle moves."""
    n = _samples(seconds)
    t = _time(n)
    f0 = rng.uniform(400, 1200)  # Hz
    spin_up = 1.0 - 0.6 * np.exp(-t / rng.uniform(0.3, 1.0)) if rng.uniform() < 0.5 else np.ones(n)
    f = f0 * spin_up * (1.0 + 0.003 * _slow_noise(rng, n, 1.0))
    phase = 2 * np.pi * np.cumsum(f) / SAMPLE_RATE
    whine = _harmonics(phase, np.array([1.0, rng.uniform(0.2, 0.6), rng.uniform(0.1, 0.4)]))
    air = _shaped_noise(rng, n, rng.uniform(60, 150), rng.uniform(6000, 12000), rng.uniform(0.2, 0.8))
    nozzle = 1.0 + rng.uniform(0.1, 0.3) * _slow_noise(rng, n, rng.uniform(0.3, 1.0))
    return _finish(air * nozzle * np.minimum(spin_up, 1.0) + rng.uniform(0.2, 0.6) * whine)


def car_horn(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A car horn: two harmonic-rich tones a third apart (350-450 Hz and above), in groups of 1-3 honks."""
    n = _samples(seconds)
    low = rng.uniform(350, 450)  # Hz
    k = np.arange(1, 13)
    tones = sum(
        np.tanh(2.0 * _harmonics(2 * np.pi * f * _time(n) + rng.uniform(0, 2 * np.pi), k ** -rng.uniform(0.6, 1.0)))
        for f in (low, low * rng.uniform(1.2, 1.3))
    )
    ons, t = [], 0.0
    for _ in range(rng.integers(1, 4)):
        length = rng.uniform(0.25, 1.2)  # s
        ons.append((t, t + length))
        t += length + rng.uniform(0.15, 0.4)
    return _finish(tones * _gate(n, ons, t + rng.uniform(0.8, 2.0), rng.uniform(0.0, 0.1)))


def alarm_clock(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """An alarm clock: an electronic one's rapid groups of four beeps (1-2 kHz), or a twin-bell one's clapper
    striking 15-25 times a second without a break."""
    n = _samples(seconds)
    if rng.uniform() < 0.5:
        f, beep = rng.uniform(1000, 2000), rng.uniform(0.05, 0.08)  # Hz, s
        step = beep * rng.uniform(1.6, 2.2)
        env = _gate(n, [(k * step, k * step + beep) for k in range(4)], rng.uniform(0.8, 1.2), rng.uniform(0, 0.1))
        return _finish(np.sin(2 * np.pi * f * _time(n)) * env)
    f0, strike_s = rng.uniform(1500, 3000), 1.0 / rng.uniform(15, 25)  # Hz, s
    ratios = np.array([1.0, 2.0, 2.76, 5.4])  # a small bell's partials
    bells = [_ringing(_samples(0.2), f * ratios, np.full(4, 0.1) / ratios, 1.0 / ratios, rng) for f in (f0, f0 * 1.06)]
    out = np.zeros(n)
    for i, t in enumerate(np.arange(rng.uniform(0, 0.05), seconds, strike_s)):
        _add(out, bells[i % 2] * rng.uniform(0.7, 1.0), _samples(t))
    return _finish(out)


# --- planted confusions ---------------------------------------------------------------------------------------------


def oven_timer(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """An oven timer: a piezo at 2.75-2.85 kHz (just below the smoke alarm's) in groups of four 0.15-0.25 s beeps."""
    n = _samples(seconds)
    f = rng.uniform(*OVEN_TIMER_HZ)  # Hz
    on, off = rng.uniform(0.15, 0.25), rng.uniform(0.1, 0.2)  # s
    cycle = 4 * (on + off) + rng.uniform(0.6, 1.2)
    env = _gate(n, [(k * (on + off), k * (on + off) + on) for k in range(4)], cycle, rng.uniform(0.0, 0.2))
    phase = 2 * np.pi * f * _time(n) + rng.uniform(0, 2 * np.pi)
    return _finish(_harmonics(phase, np.array([1.0, rng.uniform(0.02, 0.2), rng.uniform(0.05, 0.3)])) * env)


def notification_chirp(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A gadget's notification: pairs of short rising chirps through 400-500 Hz, a few times a second apart."""
    n = _samples(seconds)
    chirp_s = rng.uniform(0.08, 0.15)
    m = _samples(chirp_s)
    u = np.linspace(0.0, 1.0, m)
    f = CHIRP_HZ[0] + (CHIRP_HZ[1] - CHIRP_HZ[0]) * u  # Hz
    chirp = _harmonics(2 * np.pi * np.cumsum(f) / SAMPLE_RATE, np.array([1.0, 0.3, 0.15])) * np.sin(np.pi * u)
    out = np.zeros(n)
    gap, period = rng.uniform(0.05, 0.12), rng.uniform(1.0, 2.0)  # s
    for t in np.arange(rng.uniform(0.0, 0.1), seconds, period):
        _add(out, chirp, _samples(t))
        _add(out, chirp, _samples(t + chirp_s + gap))
    return _finish(out)


# --- the catalogue --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NovelSound:
    """A kind of sound the demo model never trained on."""

    name: str
    make: Generator
    prompt: str  # a plain description: the text-only detection
    durations_s: tuple[float, float]  # s: the span one occurrence takes in a novel stream
    resembles: str | None = None  # a confusion: the synthetic.CLASSES class it is made to resemble


NOVEL: dict[str, NovelSound] = {
    s.name: s
    for s in (
        NovelSound("doorbell", doorbell, "a doorbell ringing", (2.5, 6.0)),
        NovelSound("microwave_beeps", microwave_beeps, "a microwave oven beeping", (1.5, 4.0)),
        NovelSound("kettle_whistle", kettle_whistle, "a kettle whistling", (3.0, 8.0)),
        NovelSound("vacuum_cleaner", vacuum_cleaner, "a vacuum cleaner running", (3.0, 8.0)),
        NovelSound("car_horn", car_horn, "a car horn honking", (1.5, 4.0)),
        NovelSound("alarm_clock", alarm_clock, "an alarm clock ringing", (2.0, 6.0)),
    )
}
CONFUSIONS: dict[str, NovelSound] = {
    s.name: s
    for s in (
        NovelSound("oven_timer", oven_timer, "an oven timer beeping", (3.0, 8.0), resembles="smoke_alarm"),
        NovelSound("notification_chirp", notification_chirp, "a notification chirp", (2.0, 6.0), "phone_ringing"),
    )
}
# Every sound a novel stream may plant: the new ones, the confusions and the demo model's own.
SOUNDS: dict[str, Generator] = {
    **CLASS_SOUNDS,
    **{name: s.make for name, s in NOVEL.items()},
    **{name: s.make for name, s in CONFUSIONS.items()},
}
# A novel stream's sounds: every new class, every confusion, and the demo classes they resemble.
STREAM_SOUNDS: tuple[str, ...] = (*NOVEL, *CONFUSIONS, *(s.resembles for s in CONFUSIONS.values() if s.resembles))
DEMO_DURATIONS_S = {"smoke_alarm": (4.0, 8.0), "phone_ringing": (3.0, 8.0)}  # s: the demo classes a stream plants


def durations_of(name: str) -> tuple[float, float]:
    """The span (s) one occurrence of `name` takes in a novel stream."""
    novel = NOVEL.get(name) or CONFUSIONS.get(name)
    return novel.durations_s if novel else DEMO_DURATIONS_S.get(name, (2.0, 6.0))


# --- streams and examples -------------------------------------------------------------------------------------------


def novel_layout(rng: np.random.Generator, seconds: float, sounds: Sequence[str] = STREAM_SOUNDS) -> list[PlannedEvent]:
    """`sounds` in a shuffled order, again and again, each 5-12 s after the last, while they fit in `seconds`."""
    events: list[PlannedEvent] = []
    t = rng.uniform(1.0, MAX_GAP_S)
    while True:
        for name in rng.permutation(list(sounds)):
            length = round(float(rng.uniform(*durations_of(str(name)))), 2)
            if t + length > seconds:
                return events
            events.append(PlannedEvent(str(name), round(t, 2), round(t + length, 2)))
            t += length + rng.uniform(MIN_GAP_S, MAX_GAP_S)


def make_novel_stream(
    seed: int,
    seconds: float = NOVEL_STREAM_S,
    sounds: Sequence[str] = STREAM_SOUNDS,
    background: str = "room_tone",
    background_dbfs: float = BACKGROUND_DBFS,
) -> DemoStream:
    """A held-out stream: `background` with `sounds` planted by `novel_layout` (its order and gaps drawn from the
    seed), as `demo_stream.make_demo_stream` plants them; the same seed, the same audio."""
    unknown = [name for name in sounds if name not in SOUNDS]
    if unknown:
        raise ValueError(f"unknown sounds {', '.join(unknown)}; known: {', '.join(SOUNDS)}")
    events = novel_layout(np.random.default_rng([seed, 0, 1]), seconds, sounds)
    return make_demo_stream(seed, seconds, events, background, background_dbfs, sounds=SOUNDS)


def make_example(name: str, seed: int, seconds: float = EXAMPLE_S) -> DemoStream:
    """An example as a user records one: one occurrence of `name` (as long as a stream's, at most the recording
    less a second), `EXAMPLE_ONSET_S` into room tone, planted at the stream's level."""
    if name not in SOUNDS:
        raise ValueError(f"unknown sound {name!r}; known: {', '.join(SOUNDS)}")
    lo, hi = (min(d, seconds - 2 * EXAMPLE_ONSET_S) for d in durations_of(name))
    length = round(float(np.random.default_rng([seed, 0, 2]).uniform(lo, hi)), 2)
    event = PlannedEvent(name, EXAMPLE_ONSET_S, EXAMPLE_ONSET_S + length)
    return make_demo_stream(seed, seconds, [event], sounds=SOUNDS)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clapd.models.novel_sounds", description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=NOVEL_STREAM_S)
    parser.add_argument("--background", choices=sorted(BACKGROUNDS), default="room_tone")
    parser.add_argument("-o", "--output", default="novel.wav", help="the .json goes beside it")
    args = parser.parse_args(argv)
    stream = make_novel_stream(args.seed, args.seconds, background=args.background)
    wav = stream.write_wav(args.output)
    wav.with_suffix(".json").write_text(stream.ground_truth_json() + "\n")
    print(f"wrote {wav} ({stream.seconds:.1f} s, {len(stream.events)} events) and {wav.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
