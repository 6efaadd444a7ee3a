"""`clapd calibrate`: each detection's threshold_on from the room's ambient sound, for a target false-alarm rate.

The ambient recording goes through the daemon's own Detector (`clapd.daemon.classify.Classifier`), so the scores
are those `clapd run` would see. For each model detection, its window scores are fed, at each threshold of a
grid, through the daemon's own event lifecycle (`DetectionTracker`: smoothing, hysteresis, minimum duration,
cooldown), counting the events it would start; the chosen threshold_on is the lowest that keeps the count at or
under `false_alarms_per_day` on audio like the recording:

- observed: the recording is long enough to show the target rate itself (at least MIN_OBSERVED_STARTS starts at
  the target), and the lowest threshold whose count does not exceed it is taken: found on the grid, then narrowed
  between two grid points (near 1 a grid step can change the count severalfold), and rounded up. Read off the
  recording down to one start, because following the tail's line instead proved more conservative than the target
  on other recordings of the same room (bench_calibration `--seed-offset 1000`, 60 min to calibrate, 120 to count:
  within 2x of the target on 17 of 20 rows, against 10 of 13 when three starts were needed);
- extrapolated: a target rarer than the recording can show (1 a day from an hour) is reached along the count's
  tail: log(starts a day) falls about linearly with the threshold's logit above the ambient's usual scores, so a
  line fitted to the tail's last few points with starts is followed down to the target;
  An extrapolated threshold stays within MAX_EXTRAPOLATION_LOGITS of the ambient's highest smoothed score
  (`capped`, with a warning to record longer): a line followed far past anything heard says little;
- above_ambient: the recording starts (almost) no event at any threshold, so there is no tail to follow: the
  threshold is put ABOVE_AMBIENT_LOGITS above the ambient's highest smoothed score.

Every choice is then kept within [MIN_AUTO_THRESHOLD, MAX_AUTO_THRESHOLD] (methods `floor`, `ceiling`): a quiet
room does not make a detection fire on anything faintly like it, and a detection whose threshold would have to
reach the ceiling is one the room cannot tell apart from its own sound (a warning says so, as it does when the
ambient's highest score reaches recordings of the detection's own sound: its examples, --sound files).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from clapd.daemon.calibration import (
    AmbientScores,
    ChosenThreshold,
    auto_threshold_off,
    fingerprint,
)
from clapd.daemon.classify import Classifier, Scoring, read_audio, scoring_from
from clapd.daemon.config import ClapdConfig, DetectionConfig
from clapd.daemon.events import DetectionTracker, StreamClock
from clapd.daemon.examples import example_files

logger = logging.getLogger(__name__)

GRID_POINTS = 61  # thresholds tried, evenly spaced in logit between the grid's ends
GRID_LOW, GRID_HIGH = 0.02, 0.995
MIN_OBSERVED_STARTS = 1.0  # the recording shows a rate itself when it holds at least one start at it
STEADY_STARTS = 8  # read off fewer starts than this, a threshold's rate on other days of the room can miss 2x
REFINE_STEPS = 7  # bisections between two grid points: thresholds to 1/128 of the grid's step
TAIL_POINTS = 6  # grid thresholds with starts, from the highest down, that the tail's line is fitted to
MAX_EXTRAPOLATION_LOGITS = 2.0  # an extrapolated threshold stays within this (in logit) of the ambient's highest score
ABOVE_AMBIENT_LOGITS = 1.0  # with no tail to follow: this far (in logit) above the ambient's highest smoothed score
MIN_AUTO_THRESHOLD = 0.3  # the lowest auto threshold: a quiet room must not make a detection fire on near misses
MAX_AUTO_THRESHOLD = 0.99
SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class AmbientRun:
    """One detection's window scores over the ambient audio, and where the windows lay."""

    scores: np.ndarray  # [windows] raw (unsmoothed) scores, 0 to 1
    start_samples: np.ndarray  # [windows]
    end_samples: np.ndarray  # [windows]
    sample_rate: int
    hop: int  # samples between window starts
    seconds: float  # the ambient audio's length


def _logit(p: np.ndarray | float) -> np.ndarray | float:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def threshold_grid() -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.linspace(_logit(GRID_LOW), _logit(GRID_HIGH), GRID_POINTS)))


def start_samples(config: DetectionConfig, run: AmbientRun, threshold_on: float) -> list[int]:
    """Where the daemon's lifecycle would start events on these scores with this threshold_on (stream samples)."""
    settings = config.model_copy(
        update={"threshold_on": threshold_on, "threshold_off": auto_threshold_off(config, threshold_on)}
    )
    clock = StreamClock(datetime(2000, 1, 1, tzinfo=timezone.utc), run.sample_rate)
    tracker = DetectionTracker("ambient", "calibrating", settings, clock, run.hop)
    starts = []
    for score, start, end in zip(run.scores, run.start_samples, run.end_samples, strict=True):
        starts.extend(e.start_sample for e in tracker.feed(float(score), int(start), int(end)) if e.kind == "start")
    return starts


def count_starts(config: DetectionConfig, run: AmbientRun, threshold_on: float) -> int:
    """Events the daemon's lifecycle would start on these scores with this threshold_on."""
    return len(start_samples(config, run, threshold_on))


def smoothed_scores(config: DetectionConfig, scores: np.ndarray) -> np.ndarray:
    """The trailing mean the event lifecycle compares with its thresholds (shorter at the start)."""
    width = config.smoothing_windows
    sums = np.cumsum(np.concatenate([[0.0], scores]))
    ends = np.arange(1, len(scores) + 1)
    starts = np.maximum(0, ends - width)
    return (sums[ends] - sums[starts]) / (ends - starts)


def ambient_scores(config: DetectionConfig, scores: np.ndarray) -> AmbientScores:
    smoothed = smoothed_scores(config, scores)
    p50, p99 = np.percentile(smoothed, [50, 99])
    return AmbientScores(p50=round(float(p50), 4), p99=round(float(p99), 4), max=round(float(smoothed.max()), 4))


class StartCurve:
    """Event starts a day against threshold_on on the ambient audio: counted on a grid, and along the tail's line
    (log starts a day linear in the threshold's logit) beyond what the recording can show."""

    def __init__(self, config: DetectionConfig, run: AmbientRun) -> None:
        self.config, self.run = config, run
        self.days = run.seconds / SECONDS_PER_DAY
        self.grid = threshold_grid()
        # Monotone in the threshold: hysteresis can make a higher threshold start one event more, never many.
        self.counts = np.minimum.accumulate([count_starts(config, run, float(t)) for t in self.grid])
        self.line = self._tail_line()

    def _tail_line(self) -> tuple[float, float] | None:
        tail = np.flatnonzero(self.counts > 0)[-TAIL_POINTS:]
        if len(tail) < 2 or len(set(self.counts[tail].tolist())) < 2:
            return None
        slope, intercept = np.polyfit(_logit(self.grid[tail]), np.log(self.counts[tail] / self.days), 1)
        return (float(slope), float(intercept)) if slope < 0 else None

    def observed_threshold(self, allowed: float) -> float:
        """The lowest threshold whose count is within `allowed` starts (the grid's highest if none is): found on the
        grid, then between that grid point and the one below it, since near the top a grid step can change the
        count severalfold (ambient look-alikes crowd just under 1)."""
        within = self.counts <= allowed
        if not within.any():
            return float(self.grid[-1])
        index = int(np.argmax(within))
        if index == 0:
            return float(self.grid[0])
        too_low, high = float(_logit(self.grid[index - 1])), float(_logit(self.grid[index]))
        for _ in range(REFINE_STEPS):
            middle = (too_low + high) / 2
            if count_starts(self.config, self.run, _sigmoid(middle)) <= allowed:
                high = middle
            else:
                too_low = middle
        return _sigmoid(high)

    def extrapolated_threshold(self, per_day: float) -> float | None:
        """Where the tail's line reaches `per_day`, above every threshold seen to start an event; None: no line."""
        if self.line is None:
            return None
        slope, intercept = self.line
        return max(_sigmoid((math.log(per_day) - intercept) / slope), self.observed_threshold(0))

    def per_day(self, threshold: float) -> float | None:
        """Starts a day expected at `threshold`: counted where the recording shows enough, else along the line;
        None: fewer than the recording can show and no line to follow."""
        count = count_starts(self.config, self.run, threshold)
        if count >= MIN_OBSERVED_STARTS:
            return count / self.days
        if self.line is not None:
            slope, intercept = self.line
            return math.exp(intercept + slope * float(_logit(threshold)))
        return None


def choose_threshold(
    config: DetectionConfig, run: AmbientRun, background: Sequence[str], bundle_margin: float | None = None
) -> ChosenThreshold:
    """The lowest threshold_on that starts at most `config.false_alarms_per_day` events a day on audio like this;
    `bundle_margin`: the manifest's `example_margin`, part of the calibration's fingerprint."""
    curve = StartCurve(config, run)
    ambient = ambient_scores(config, run.scores)
    target = config.false_alarms_per_day
    if target * curve.days >= MIN_OBSERVED_STARTS:
        threshold, method = curve.observed_threshold(target * curve.days), "observed"
    elif (extrapolated := curve.extrapolated_threshold(target)) is not None:
        threshold, method = extrapolated, "extrapolated"
        cap = _sigmoid(float(_logit(ambient.max)) + MAX_EXTRAPOLATION_LOGITS)
        if threshold > cap:  # the line followed too far past anything heard: the recording is too short for it
            threshold, method = cap, "capped"
    else:  # the recording starts (almost) nothing at any threshold: stay clear of its loudest moment
        threshold, method = _sigmoid(float(_logit(ambient.max)) + ABOVE_AMBIENT_LOGITS), "above_ambient"
    if threshold < MIN_AUTO_THRESHOLD:
        threshold, method = MIN_AUTO_THRESHOLD, "floor"
    elif threshold > MAX_AUTO_THRESHOLD:
        threshold, method = MAX_AUTO_THRESHOLD, "ceiling"
    threshold = math.ceil(round(threshold * 1e4, 6)) / 1e4  # up: a threshold found by counting stays on its side
    per_day = curve.per_day(threshold)
    return ChosenThreshold(
        fingerprint=fingerprint(config, background, bundle_margin),
        threshold_on=threshold,
        threshold_off=auto_threshold_off(config, threshold),
        starts_per_day=round(per_day, 4) if per_day is not None else None,
        method=method,
        ambient=ambient,
    )


@dataclass(frozen=True, slots=True)
class Report:
    """What `clapd calibrate` found, per model detection."""

    seconds: float
    chosen: dict[str, ChosenThreshold]
    warnings: list[str]


@dataclass(frozen=True, slots=True)
class SoundCheck:
    """A detection's recordings of its own sound (its examples, --sound files) against the room."""

    lowest: float  # the lowest of the recordings' highest smoothed scores
    threshold: float  # that, rounded down: the highest threshold_on that fires on every recording
    room_starts: int  # the events that threshold starts on the ambient recording


def threshold_warnings(
    chosen: Mapping[str, ChosenThreshold], sounds: Mapping[str, SoundCheck], days: float
) -> list[str]:
    """Detections the room cannot tell apart (the ambient's highest score reaches that of recordings of their own
    sound, or their threshold had to go to the ceiling), thresholds past those recordings' scores, and thresholds
    the recording (`days` long) says little about."""
    warnings = []
    for name, choice in chosen.items():
        if (few := few_starts_warning(name, choice, days)) is not None:
            warnings.append(few)
        if (check := sounds.get(name)) is not None and (missed := own_sound_warning(name, choice, check, days)):
            warnings.append(missed)
        if choice.method == "capped":
            rate = f"about {choice.starts_per_day:.0f}" if choice.starts_per_day is not None else "more"
            warnings.append(
                f"{name}: the recording is too short to show its false_alarms_per_day; at threshold_on "
                f"{choice.threshold_on} the room's sound would start {rate} a day: calibrate on a longer recording"
            )
        if choice.method == "ceiling":
            warnings.append(
                f"{name}: even threshold_on {MAX_AUTO_THRESHOLD} would start more than the target on this room's "
                "sound: describe the sound more precisely, or add negative prompts or examples"
            )
    return warnings


def own_sound_warning(name: str, choice: ChosenThreshold, check: SoundCheck, days: float) -> str | None:
    """The room scores as high as recordings of the detection's own sound, or the threshold chosen above the room
    went past them too (a detection deaf to its sound); either way, what the room would start at the highest
    threshold that still fires on them: the trade the user has to make."""
    own, starts = check.lowest, check.room_starts
    rate = (
        f"{starts} event(s) on this recording ({starts / days:.0f} a day)" if starts else "no event on this recording"
    )
    cost = f"at threshold_on {check.threshold} it would fire on them and start {rate}"
    if choice.ambient.max >= own:
        return (
            f"{name}: the room's sound scores up to {choice.ambient.max:.3f}, as high as recordings of its own sound "
            f"({own:.3f}): the room holds sounds this detection cannot tell apart; add negative examples of them "
            f"({cost})"
        )
    if choice.threshold_on > own:
        return (
            f"{name}: threshold_on {choice.threshold_on} is above the lowest score of recordings of its own sound "
            f"({own:.3f}): it would not fire on sounds like that one; {cost}"
        )
    return None


def few_starts_warning(name: str, choice: ChosenThreshold, days: float) -> str | None:
    """An observed threshold read off only a few starts: a count that small is itself a draw, so on another day of
    the same room the rate at it can come out half or twice the target (bench_calibration: read off 2 and 6
    starts, 60 min, 16 of 21 rows within 2x on another 240 min of the room; off 8 and 24 starts, 240 min, 20 of 20,
    and 23 of 25 with the demo's later text side)."""
    if choice.method != "observed" or choice.starts_per_day is None:
        return None
    starts = round(choice.starts_per_day * days)
    if starts >= STEADY_STARTS:
        return None
    longer = math.ceil(STEADY_STARTS / max(starts, 1))
    return (
        f"{name}: threshold_on {choice.threshold_on} was read off {starts} start(s) in the recording; on other "
        f"days of this room its rate can come out half or twice false_alarms_per_day: a recording {longer} times "
        "as long gives a steadier threshold"
    )


def format_report(report: Report) -> str:
    # the thresholds as stored (to 1e-4, rounded up), so the table and the warnings name the same number
    header = f"{'detection':<24} {'p50':>6} {'p99':>6} {'max':>6} {'on':>7} {'off':>7} {'per day':>8}  method"
    lines = [f"ambient audio: {report.seconds / 60:.1f} min", header]
    for name, c in report.chosen.items():
        per_day = "-" if c.starts_per_day is None else f"{c.starts_per_day:.2f}"
        lines.append(
            f"{name:<24} {c.ambient.p50:6.3f} {c.ambient.p99:6.3f} {c.ambient.max:6.3f} "
            f"{c.threshold_on:7.4f} {c.threshold_off:7.4f} {per_day:>8}  {c.method}"
        )
    lines.extend(f"warning: {warning}" for warning in report.warnings)
    return "\n".join(lines)


def calibrate(
    classifier: Classifier, audio: np.ndarray, config: ClapdConfig, sounds: Mapping[str, Sequence[Path]] | None = None
) -> Report:
    """Choose every model detection's threshold_on from `audio` (mono float32 at the classifier's sample rate);
    `sounds`: recordings of a detection's own sound, checked against its threshold as its examples are."""
    table = classifier.score(audio)
    rate = classifier.sample_rate
    hop = round(classifier.hop_seconds * rate)
    starts, ends = np.round(table.starts * rate).astype(int), np.round(table.ends * rate).astype(int)
    chosen, runs = {}, {}
    background = list(config.background_prompts)
    for column, name in enumerate(table.prompts):
        detection = config.detections[name]
        if detection.level is not None:
            continue  # loudness alone: no score to calibrate
        runs[name] = AmbientRun(table.scores[:, column], starts, ends, rate, hop, len(audio) / rate)
        chosen[name] = choose_threshold(detection, runs[name], background, classifier.bundle_margin)
    own = own_scores(classifier, config, {name: own_recordings(config, name, sounds or {}) for name in chosen})
    checks = {name: sound_check(config.detections[name], runs[name], lowest) for name, lowest in own.items()}
    seconds = len(audio) / rate
    return Report(seconds, chosen, threshold_warnings(chosen, checks, seconds / SECONDS_PER_DAY))


def sound_check(config: DetectionConfig, run: AmbientRun, lowest: float) -> SoundCheck:
    threshold = math.floor(round(lowest * 1e4, 6)) / 1e4  # down: at or under every recording's peak
    return SoundCheck(lowest, threshold, count_starts(config, run, threshold))


def own_recordings(config: ClapdConfig, name: str, sounds: Mapping[str, Sequence[Path]]) -> list[Path]:
    """Recordings of a detection's own sound: its example files and those given with --sound."""
    examples = [file for entry in config.detections[name].examples for file in example_files(Path(entry))]
    return [*examples, *sounds.get(name, [])]


def own_scores(
    classifier: Classifier, config: ClapdConfig, recordings: Mapping[str, Sequence[Path]]
) -> dict[str, float]:
    """Each detection's lowest score on recordings of its own sound (the highest smoothed score of each file's
    windows): what the ambient must stay below, and the threshold too, for the detection to tell its sound from the
    room and still fire on it."""
    names = list(classifier.detections.configs)
    own = {}
    for name, files in recordings.items():
        peaks = []
        for file in files:
            audio = read_audio(file, classifier.sample_rate)
            if audio.size == 0:
                raise ValueError(f"{file}: no audio in it")
            table = classifier.score(audio)
            column = table.scores[:, names.index(name)]
            peaks.append(float(smoothed_scores(config.detections[name], column).max()))
        if peaks:
            own[name] = min(peaks)
    return own


def scoring_for_calibration(config: ClapdConfig) -> Scoring:
    """The config's scoring with auto thresholds set aside: scores do not depend on thresholds."""
    placeholder = {
        name: d.model_copy(update={"threshold_on": 0.5, "threshold_off": min(d.threshold_off, 0.35)})
        if d.threshold_on == "auto"
        else d
        for name, d in config.detections.items()
    }
    return scoring_from(config.model_copy(update={"detections": placeholder}))
