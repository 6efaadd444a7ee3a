"""Calibration to the room: do thresholds chosen on one ambient recording keep their false-alarm rate on another
recording of the same kind of room?

A "kitchen" is room tone (or babble) with everyday sounds the demo model was never trained on, planted now and then
(clapd.models.novel_sounds: doorbell, microwave beeps, kettle, vacuum cleaner, car horn, alarm clock, an oven timer
like the smoke alarm, a chirp like the phone), none of the detections' own sounds, so every event a detection starts
in it is a false alarm. `clapd calibrate`'s choice (clapd.daemon.calibrate) is made on recording A, then the demo
detections' starts on recording B (other seeds: another day in the same room) are counted at the chosen thresholds
with the daemon's own event lifecycle and compared with the target. A detection the room never brings near its
threshold gets the floor threshold and no false alarm: the target is an upper bound, so such rows are shown but not
held to the 2x criterion; nor are rows at the ceiling, where no threshold meets the target on A either (`clapd
calibrate` warns of each: the room holds sounds the detection cannot tell apart).

    .venv/bin/python benchmarks/bench_calibration.py [--calibration-minutes 20] [--test-minutes 60] \
        [--seed-offset N] [--keep-scores DIR] [--write docs/benchmarks.md]

`--seed-offset` draws other rooms (every seed moved by N): a rule is tried on those before it is measured on the
benchmark's own. `--keep-scores` keeps each recording's window scores in DIR (pickles: a folder of your own) and
reuses them, so the calibration rule can be compared on the same scores without scoring the audio again.
docs/benchmarks.md's figures are `--calibration-minutes 240 --test-minutes 240`: 8 hours of audio per kind of room,
about 1.5 hours of scoring on 2 cores (the section says how it was split between processes).
"""

from __future__ import annotations

import hashlib
import pickle
import sys
from collections.abc import Iterable
from dataclasses import astuple, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import arg_parser, header_lines, publish, tally_starts  # noqa: E402

from clapd.daemon.calibrate import (  # noqa: E402
    SECONDS_PER_DAY,
    AmbientRun,
    choose_threshold,
    count_starts,
    start_samples,
)
from clapd.daemon.calibration import ChosenThreshold  # noqa: E402
from clapd.daemon.classify import Classifier, scoring_from  # noqa: E402
from clapd.daemon.config import ClapdConfig, DetectionConfig  # noqa: E402
from clapd.daemon.demo import DEMO_DETECTIONS, DEMO_EVENT_SETTINGS, DEMO_WINDOWS, default_config  # noqa: E402
from clapd.models.demo_stream import DemoStream, make_demo_stream  # noqa: E402
from clapd.models.novel_sounds import CONFUSIONS, NOVEL, make_novel_stream  # noqa: E402

START, END = "<!-- bench_calibration:start -->", "<!-- bench_calibration:end -->"
ROOM_SOUNDS = (*NOVEL, *CONFUSIONS)  # everyday sounds, none a demo detection's own
KINDS = ("room_tone", "babble")  # two kinds of room; A and B of each kind differ in seeds only
CALIBRATION_S = 20 * 60.0  # recording A, by default
TEST_S = 60 * 60.0  # recording B, by default: long enough to count a few false alarms a detection at the targets
TARGETS_PER_DAY = (48.0, 144.0)  # 2 and 6 expected false alarms a detection in 60 min of B
PIECE_S = 300.0  # s: the rooms are made and scored 5 minutes at a time
OWN_SOUNDS_S = 20 * 60.0  # the detections' own sounds (the demo layout) over each kind of room: is recall kept?
OWN_SEED = 300  # their pieces' seeds from here: neither A's nor B's
WINDOW_S = float(DEMO_WINDOWS["window_seconds"])  # a start up to a window before or after a planted sound finds it


@dataclass(frozen=True, slots=True)
class Row:
    kind: str
    detection: str
    target: float
    chosen: ChosenThreshold
    realised_per_day: float
    recall: float  # of the detection's own planted sounds, at the chosen threshold
    recall_default: float  # and at the demo detection's own threshold_on


def demo_config() -> ClapdConfig:
    return default_config(Path("/nonexistent-state"))


def score(classifier: Classifier, kind: str, first_seed: int, seconds: float) -> tuple[AmbientTable, float]:
    """The room's scores over `seconds`, made and scored PIECE_S at a time (memory stays bounded)."""
    pieces = (
        make_novel_stream(first_seed + k, PIECE_S, ROOM_SOUNDS, background=kind)
        for k in range(round(seconds / PIECE_S))
    )
    table, scored_seconds, _ = joined(classifier, pieces, f"{kind}: scored {{}} of {seconds / 60:.0f} min")
    return table, scored_seconds


def joined(
    classifier: Classifier, pieces: Iterable[DemoStream], progress: str
) -> tuple[AmbientTable, float, list[tuple[str, float, float]]]:
    """The pieces scored one after the other as one recording (each piece's windows and planted sounds placed after
    the previous piece's audio): its table, its length in s and its planted sounds (class, start s, end s)."""
    scores, starts, ends, planted, offset = [], [], [], [], 0
    rate = classifier.sample_rate
    for stream in pieces:
        table = classifier.score(stream.audio)
        scores.append(table.scores)
        starts.append(np.round(table.starts * rate).astype(int) + offset)
        ends.append(np.round(table.ends * rate).astype(int) + offset)
        planted += [(e.class_name, e.start_s + offset / rate, e.end_s + offset / rate) for e in stream.events]
        offset += len(stream.audio)
        print(progress.format(f"{offset / rate / 60:.0f}"), file=sys.stderr, flush=True)
    table = AmbientTable(table.prompts, np.concatenate(scores), np.concatenate(starts), np.concatenate(ends))
    return table, offset / rate, planted


@dataclass(frozen=True, slots=True)
class OwnSounds:
    """The demo detections' own sounds (the demo streams' layout) over a kind of room, scored: recall is counted
    on it at the chosen thresholds, since a threshold that keeps false alarms down must not lose the sound."""

    table: AmbientTable
    seconds: float
    planted: list[tuple[str, float, float]]  # (class, start s, end s)

    def recall(self, config: DetectionConfig, name: str, threshold_on: float, classifier: Classifier) -> float:
        run = ambient_run(self.table, self.table.prompts.index(name), self.seconds, classifier)
        starts = [sample / classifier.sample_rate for sample in start_samples(config, run, threshold_on)]
        tally = tally_starts(starts, [(a, z) for c, a, z in self.planted if c == name], WINDOW_S, WINDOW_S)
        return tally.found / tally.spans


def own_sounds(classifier: Classifier, kind: str, seed_offset: int) -> OwnSounds:
    seeds = range(OWN_SEED + seed_offset, OWN_SEED + seed_offset + round(OWN_SOUNDS_S / PIECE_S))
    pieces = (make_demo_stream(seed, PIECE_S, background=kind) for seed in seeds)
    progress = f"{kind}, the detections' own sounds: scored {{}} of {OWN_SOUNDS_S / 60:.0f} min"
    return OwnSounds(*joined(classifier, pieces, progress))


@dataclass(frozen=True, slots=True)
class AmbientTable:
    prompts: list[str]
    scores: np.ndarray  # [windows, detections]
    start_samples: np.ndarray  # [windows]
    end_samples: np.ndarray


def ambient_run(table: AmbientTable, column: int, seconds: float, classifier: Classifier) -> AmbientRun:
    hop = round(classifier.hop_seconds * classifier.sample_rate)
    scores = table.scores[:, column]
    return AmbientRun(scores, table.start_samples, table.end_samples, classifier.sample_rate, hop, seconds)


@dataclass(frozen=True, slots=True)
class Recordings:
    """Where the rooms come from: their lengths, the first seeds' offset and an optional folder of kept scores."""

    calibration_s: float
    test_s: float
    seed_offset: int = 0
    kept: Path | None = None

    def scored(self, classifier: Classifier, kind: str, first_seed: int, seconds: float) -> tuple[AmbientTable, float]:
        # scores of these models (audio and text side): kept scores of another text model are not reused
        seed, model = first_seed + self.seed_offset, hashlib.sha256(classifier.scoring_models.encode()).hexdigest()[:12]
        path = self.kept / f"{kind}-{seed}-{seconds:.0f}-{model}.pickle" if self.kept is not None else None
        if path is not None and path.exists():  # plain values, so that any script can read them
            fields, kept_seconds = pickle.loads(path.read_bytes())
            return AmbientTable(*fields), kept_seconds
        table, scored_seconds = score(classifier, kind, seed, seconds)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(pickle.dumps((astuple(table), scored_seconds)))
        return table, scored_seconds


def rows_for(kind: str, classifier: Classifier, config: ClapdConfig, recordings: Recordings) -> list[Row]:
    a, a_seconds = recordings.scored(classifier, kind, 100, recordings.calibration_s)
    b, b_seconds = recordings.scored(classifier, kind, 200, recordings.test_s)
    own = own_sounds(classifier, kind, recordings.seed_offset)
    rows = []
    for column, name in enumerate(a.prompts):
        shipped = config.detections[name]
        at_default = own.recall(shipped, name, float(shipped.threshold_on), classifier)
        for target in TARGETS_PER_DAY:
            detection: DetectionConfig = shipped.model_copy(update={"false_alarms_per_day": target})
            chosen = choose_threshold(detection, ambient_run(a, column, a_seconds, classifier), [])
            starts = count_starts(detection, ambient_run(b, column, b_seconds, classifier), chosen.threshold_on)
            recall = own.recall(detection, name, chosen.threshold_on, classifier)
            rows.append(Row(kind, name, target, chosen, starts / (b_seconds / SECONDS_PER_DAY), recall, at_default))
    return rows


def held(row: Row) -> bool | None:
    """Within 2x of the target; None where calibration had nothing to choose: the room never came near the
    detection (floor), or it sounds like the detection at any threshold (ceiling: `clapd calibrate` warns)."""
    if row.chosen.method in ("floor", "ceiling"):
        return None
    return row.target / 2 <= row.realised_per_day <= row.target * 2


VERDICTS = {None: "", True: "yes", False: "**no**"}


def report(rows: list[Row], recordings: Recordings) -> str:
    calibration_s, test_s = recordings.calibration_s, recordings.test_s
    lines = [
        START,
        "## Calibration to the room (issue 11): false alarms on another recording of the same room",
        "",
        *header_lines(["onnxruntime", "numpy"]),
        f"- rooms: {', '.join(KINDS)} with everyday sounds the demo model never learnt planted 5-12 s apart "
        f"({', '.join(ROOM_SOUNDS)}); calibrated on {calibration_s / 60:.0f} min, counted on another "
        f"{test_s / 60:.0f} min (other seeds), both made of 5-min pieces (seeds from {100 + recordings.seed_offset} "
        f"and {200 + recordings.seed_offset}); the demo bundle (int8, CPU), its 8 text "
        "detections, 2 s windows, 0.5 s hop",
        "- each row: the threshold `clapd calibrate` chose on A for the target, and the starts a day it gives on B "
        f"(one start in B is {SECONDS_PER_DAY / test_s:g} a day); the targets are "
        + ", ".join(f"{t:g} a day ({t * calibration_s / SECONDS_PER_DAY:g} starts in A)" for t in TARGETS_PER_DAY)
        + ": a threshold read off a few starts is itself a draw (with 2, the rate at it on new audio varies about "
        "2x either way), so single rows can miss by chance",
        f"- recall: of the detection's own sounds, planted as the demo streams plant them (25 dB over the room) in "
        f"{OWN_SOUNDS_S / 60:.0f} min of the same kind of room (seeds from {OWN_SEED + recordings.seed_offset}), "
        f"at the chosen threshold and, in brackets, at the demo detection's own threshold_on "
        f"({DEMO_EVENT_SETTINGS['threshold_on']}): a threshold that "
        "keeps false alarms down must not lose the sound",
        "",
        "| room | detection | target / day | threshold_on | method | realised / day | within 2x | recall |",
        "| --- | --- | ---: | ---: | --- | ---: | --- | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row.kind} | {row.detection} | {row.target:.0f} | {row.chosen.threshold_on:.3f} | "
            f"{row.chosen.method} | {row.realised_per_day:.1f} | {VERDICTS[held(row)]} | "
            f"{row.recall:.0%} ({row.recall_default:.0%}) |"
        )
    judged = [row for row in rows if held(row) is not None]
    ceiling = [row for row in rows if row.chosen.method == "ceiling"]
    lines += [
        "",
        f"- where the room's look-alikes set the threshold (methods observed, extrapolated, capped): "
        f"{sum(1 for row in judged if held(row))} of {len(judged)} rows within 2x of the target; "
        f"{sum(r.realised_per_day for r in judged):.0f} false alarms a day realised for "
        f"{sum(r.target for r in judged):.0f} targeted; recall on their own sounds "
        f"{np.mean([r.recall for r in judged]):.0%} at the chosen thresholds, "
        f"{np.mean([r.recall_default for r in judged]):.0%} at the demo's threshold_on",
        f"- {len(ceiling)} rows reached the ceiling (0.99): the room's everyday sounds score as high as the "
        "detection's own sound, which `clapd calibrate` reports as a warning (the demo model hears them alike; see "
        "the few-shot section's neighbours)",
        END,
    ]
    return "\n".join(lines)


def main() -> int:
    parser = arg_parser(__doc__)
    parser.add_argument("--calibration-minutes", type=float, default=CALIBRATION_S / 60, help="recording A")
    parser.add_argument("--test-minutes", type=float, default=TEST_S / 60, help="recording B")
    parser.add_argument("--seed-offset", type=int, default=0, help="other rooms: every seed moved by this")
    parser.add_argument("--keep-scores", type=Path, help="keep (and reuse) the recordings' scores in this folder")
    parser.add_argument("--write", type=Path, help="update this docs page's section (docs/benchmarks.md)")
    args = parser.parse_args()
    recordings = Recordings(args.calibration_minutes * 60, args.test_minutes * 60, args.seed_offset, args.keep_scores)
    config = demo_config()
    assert set(config.detections) == set(DEMO_DETECTIONS)
    classifier = Classifier(scoring_from(config))
    rows = [row for kind in KINDS for row in rows_for(kind, classifier, config, recordings)]
    publish(report(rows, recordings), args.write, START, END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
