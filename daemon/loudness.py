"""Input levels in dBFS inside the Detector: the level gate's window level, and `level` detections' loud runs.

Levels are RMS over full scale 1.0 (a full-scale sine is -3 dBFS), digital silence `SILENCE_DBFS`.

- **Level gate** (a stream's `min_level_dbfs`): a window whose level, over its real (unpadded) samples, is below the
  gate is not given to the model; the Detector scores it 0 for every model detection of the stream.
- **Level detections** (`level: {above_dbfs, min_seconds}`): each window's new audio (what the previous window of
  the stream did not hold: the newest hop, or the whole first window) is cut into `BLOCK_SECONDS` blocks; a run of
  consecutive blocks at or above `above_dbfs` that has lasted `min_seconds` makes the window's score 1, else 0. A
  gap in a stream's windows (skipped or unscored windows) ends every run. The score goes through the same event
  tracker as the model's, with the run's first sample as the event's onset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from clapd.daemon.config import DetectionConfig
from clapd.daemon.events import Span
from clapd.daemon.records import Window
from clapd.daemon.streams import SILENCE_DBFS

BLOCK_SECONDS = 0.1  # a level detection's short-time level: RMS over 100 ms blocks (a sound level meter's "fast")


def rms_dbfs(samples: np.ndarray) -> float:
    """RMS level of `samples` in dBFS; SILENCE_DBFS for silence or no samples."""
    if samples.size == 0:
        return SILENCE_DBFS
    rms = math.sqrt(float(np.mean(np.square(samples, dtype=np.float64))))
    return max(SILENCE_DBFS, 20 * math.log10(rms)) if rms > 0 else SILENCE_DBFS


def window_level_dbfs(window: Window) -> float:
    """The window's level over its real samples (the model input beyond them is repeat-padding)."""
    return rms_dbfs(window.samples[: window.end_sample - window.start_sample])


def block_levels_dbfs(samples: np.ndarray, block: int) -> np.ndarray:
    """RMS level in dBFS of each `block` samples (the last block may be shorter): float64 [ceil(n / block)]."""
    n = samples.size
    if n == 0:
        return np.zeros(0)
    starts = np.arange(0, n, block)
    power = np.add.reduceat(np.square(samples, dtype=np.float64), starts) / np.diff(np.append(starts, n))
    with np.errstate(divide="ignore"):
        return np.maximum(10 * np.log10(power), SILENCE_DBFS)


@dataclass(slots=True)
class _Run:
    start: int | None = None  # first sample of the current run of loud blocks; None: not loud now
    length: int = 0  # samples in it


@dataclass(frozen=True, slots=True)
class LevelScore:
    score: float  # 1.0: the level stayed above the threshold long enough within the window's new audio; else 0.0
    span: Span  # the window's new audio, and the first sample of the loud run when the score is 1


class LevelWatch:
    """One stream's level detections, fed the stream's windows in time order."""

    def __init__(self, sample_rate: int) -> None:
        self._rate = sample_rate
        self._block = max(1, round(BLOCK_SECONDS * sample_rate))  # samples
        self._next = 0  # first sample not yet measured
        self._runs: dict[str, _Run] = {}
        self._configs: dict[str, DetectionConfig] = {}

    def update(self, detections: dict[str, DetectionConfig]) -> None:
        """Watch these level detections from now on; unchanged ones keep their runs."""
        for name in [n for n in self._configs if detections.get(n) != self._configs[n]]:
            del self._configs[name], self._runs[name]
        for name, config in detections.items():
            if name not in self._configs:
                self._configs[name], self._runs[name] = config, _Run()

    def reset(self) -> None:
        """The stream's audio stopped (an outage): every run ends."""
        for name in self._runs:
            self._runs[name] = _Run()

    def feed(self, window: Window) -> dict[str, LevelScore]:
        """Each level detection's score for this window, from the audio no earlier window held (empty when the
        window holds nothing new)."""
        if window.start_sample > self._next:  # a gap: windows were skipped, their audio is unknown
            self.reset()
        first = max(self._next, window.start_sample)
        new = window.samples[first - window.start_sample : window.end_sample - window.start_sample]
        self._next = max(self._next, window.end_sample)
        if new.size == 0:
            return {}
        levels = block_levels_dbfs(new, self._block)
        lengths = np.minimum(self._block, new.size - np.arange(levels.size) * self._block)
        return {name: self._advance(name, first, window.end_sample, levels, lengths) for name in self._configs}

    def _advance(self, name: str, first: int, end: int, levels: np.ndarray, lengths: np.ndarray) -> LevelScore:
        level = self._configs[name].level
        assert level is not None, "only level detections are watched"
        needed = max(1, round(level.min_seconds * self._rate))
        run, onset = self._runs[name], None
        for k, (dbfs, length) in enumerate(zip(levels, lengths, strict=True)):
            if dbfs >= level.above_dbfs:
                run.start = first + k * self._block if run.start is None else run.start
                run.length += int(length)
                if run.length >= needed and onset is None:
                    onset = run.start
            else:
                run.start, run.length = None, 0
        return LevelScore(1.0 if onset is not None else 0.0, Span(first, end, onset))
