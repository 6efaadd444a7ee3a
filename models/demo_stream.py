"""A long recording with sounds planted at known times over a continuous background, and its ground truth.

Numpy only (no torch). Whole-pipeline tests play it through the daemon and compare detections with the plan:

    python -m clapd.models.demo_stream --seed 0 --seconds 120 -o demo.wav   # writes demo.wav and demo.json
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from clapd.models.recording import PlannedRecording, add_output_options, samples
from clapd.models.synthetic import BACKGROUNDS, CLASSES, SAMPLE_RATE, Generator

BACKGROUND_DBFS = -50.0  # dBFS: the background's RMS level, a quiet room through a decent microphone
EVENT_SNR_DB = 25.0  # dB: a planted sound's mean power over its span, above the background's
MIN_GAP_S = 5.0  # s: the least quiet stretch between planted sounds, so a detector can end one event first
LAYOUT_PERIOD_S = 120.0  # s: the default layout repeats this often in longer streams
CLASS_SOUNDS: dict[str, Generator] = {name: c.make for name, c in CLASSES.items()}  # what events plant by default


@dataclass(frozen=True, slots=True)
class PlannedEvent:
    """A sound planted in the stream: the ground truth a detector is scored against."""

    class_name: str  # a synthetic.CLASSES key
    start_s: float  # s from the stream's start
    end_s: float  # s; the sound fills [start_s, end_s) and nothing of it lies outside
    snr_db: float = EVENT_SNR_DB  # dB: mean power over the span against the nominal background level


DEFAULT_LAYOUT = (
    PlannedEvent("smoke_alarm", 10.0, 16.0),
    PlannedEvent("knocking", 26.0, 29.0),
    PlannedEvent("glass_breaking", 40.0, 42.0),
    PlannedEvent("dog_barking", 52.0, 56.0),
    PlannedEvent("siren", 70.0, 80.0),
    PlannedEvent("phone_ringing", 90.0, 98.0),
    PlannedEvent("running_water", 106.0, 113.0),
)


@dataclass(frozen=True, slots=True, eq=False)
class DemoStream(PlannedRecording):
    """A planted recording and its plan."""

    audio: np.ndarray  # float32 mono [samples] at sample_rate, within [-1, 1]
    events: tuple[PlannedEvent, ...]  # in time order, non-overlapping
    seed: int
    background: str  # a synthetic.BACKGROUNDS key
    background_dbfs: float  # dBFS RMS
    sample_rate: int = SAMPLE_RATE  # Hz

    def ground_truth(self) -> dict[str, object]:
        return {
            "seed": self.seed,
            "seconds": self.seconds,
            "sample_rate": self.sample_rate,
            "background": self.background,
            "background_dbfs": self.background_dbfs,
            "events": [asdict(event) for event in self.events],
        }


def default_events(seconds: float) -> list[PlannedEvent]:
    """DEFAULT_LAYOUT repeated every LAYOUT_PERIOD_S, keeping the events that end within `seconds`."""
    events = []
    for k in range(math.ceil(seconds / LAYOUT_PERIOD_S)):
        shift = k * LAYOUT_PERIOD_S
        for e in DEFAULT_LAYOUT:
            if e.end_s + shift <= seconds:
                events.append(PlannedEvent(e.class_name, e.start_s + shift, e.end_s + shift, e.snr_db))
    return events


def check_events(
    events: Sequence[PlannedEvent], seconds: float, min_gap_s: float = MIN_GAP_S, known: Collection[str] = CLASSES
) -> None:
    """Raise ValueError unless the events are `known` classes, inside the stream, in order and `min_gap_s` apart."""
    previous_end = -math.inf
    for e in events:
        if e.class_name not in known:
            raise ValueError(f"unknown sound class {e.class_name!r}; known: {', '.join(known)}")
        if not 0.0 <= e.start_s < e.end_s <= seconds:
            raise ValueError(f"{e} does not lie within a {seconds} s stream")
        if e.start_s - previous_end < min_gap_s:
            raise ValueError(f"{e} starts less than {min_gap_s} s after the previous event ends (or overlaps it)")
        previous_end = e.end_s


def make_demo_stream(
    seed: int,
    seconds: float = LAYOUT_PERIOD_S,
    events: Sequence[PlannedEvent] | None = None,
    background: str = "room_tone",
    background_dbfs: float = BACKGROUND_DBFS,
    sounds: Mapping[str, Generator] | None = None,
) -> DemoStream:
    """`seconds` of `background` with `events` (default: `default_events`) planted; the same seed, the same audio.

    Each event's sound comes from its own generator seeded by (seed, index), so editing one event leaves the
    others' audio unchanged. `sounds`: the generator of each class the events may name (default: `CLASS_SOUNDS`;
    sounds the demo model never learnt: `clapd.models.novel_sounds`).
    """
    if seconds <= 0:
        raise ValueError(f"a stream needs a positive length, not {seconds} s")
    events = default_events(seconds) if events is None else list(events)
    sounds = CLASS_SOUNDS if sounds is None else sounds
    check_events(events, seconds, known=sounds)
    if background not in BACKGROUNDS:
        raise ValueError(f"unknown background {background!r}; known: {', '.join(BACKGROUNDS)}")
    bed = BACKGROUNDS[background](np.random.default_rng([seed, 0]), seconds).astype(np.float64)
    rms = math.sqrt(float(np.mean(bed**2)))
    audio = bed * (10 ** (background_dbfs / 20) / rms) if rms > 0 else bed
    for i, e in enumerate(events, start=1):
        start, end = samples(e.start_s, SAMPLE_RATE), samples(e.end_s, SAMPLE_RATE)
        sound = sounds[e.class_name](np.random.default_rng([seed, i]), (end - start) / SAMPLE_RATE)
        sound = sound.astype(np.float64)[: end - start]
        power = float(np.mean(sound**2))
        if power > 0:
            audio[start : start + len(sound)] += sound * 10 ** ((background_dbfs + e.snr_db) / 20) / math.sqrt(power)
    audio = np.clip(audio, -1.0, 1.0).astype(np.float32)
    return DemoStream(audio, tuple(events), seed, background, background_dbfs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clapd.models.demo_stream", description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=LAYOUT_PERIOD_S)
    parser.add_argument("--background", choices=sorted(BACKGROUNDS), default="room_tone")
    parser.add_argument("--background-dbfs", type=float, default=BACKGROUND_DBFS, help="background RMS, dBFS")
    add_output_options(parser, "demo.wav")
    args = parser.parse_args(argv)
    try:
        stream = make_demo_stream(
            args.seed, args.seconds, background=args.background, background_dbfs=args.background_dbfs
        )
    except ValueError as e:
        parser.error(str(e))
    wav, truth = stream.write_with_truth(args.output, args.subtype)
    print(f"wrote {wav} ({stream.seconds:.1f} s, {len(stream.events)} events) and {truth}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
