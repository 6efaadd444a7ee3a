"""The one place where windows of audio become scores and events.

`Detector` is synchronous: no threads, no network, no clock of its own (each stream's `StreamClock`, passed in,
turns sample offsets into UTC). The daemon's inference thread, `clapd classify`, the tests and the benchmarks all
feed windows through `Detector.process`; new decision features plug in here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from clapd.daemon.config import DetectionConfig
from clapd.daemon.events import EventTracker, StreamClock
from clapd.daemon.matcher import Matcher
from clapd.daemon.records import DetectionEvent, Scores, Window


class Embedder(Protocol):
    """Windows [n, window_samples] -> unit embeddings [n, dim] (`clapd.daemon.inference.AudioModel`)."""

    def embed(self, windows: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True, slots=True)
class DetectionSet:
    """Detections with their prompts embedded (`clapd.daemon.prompts.DetectionPreparer`), ready to be swapped in."""

    configs: dict[str, DetectionConfig]
    matcher: Matcher


@dataclass(frozen=True, slots=True)
class Detections:
    """What one batch of windows gave: every window's scores, and the events they started or ended, in order."""

    scores: list[Scores]
    events: list[DetectionEvent]


@dataclass(frozen=True, slots=True)
class Swap:
    """What replacing the detections did."""

    ended: list[DetectionEvent]  # events of removed or changed detections, ended where their stream had got to
    new_pairs: list[tuple[str, str]]  # (stream, detection) pairs tracked from now on that were not before


class Detector:
    """Windows of any streams -> scores per detection -> start/end events (smoothing, hysteresis, cooldown)."""

    def __init__(
        self, embedder: Embedder, detections: DetectionSet, clocks: Mapping[str, StreamClock], hop: int
    ) -> None:
        self._embedder = embedder
        self._detections = detections
        self._tracker = EventTracker(detections.configs, dict(clocks), hop)
        self.unscored = 0  # windows whose embedding was not finite: neither scored nor tracked

    @property
    def detections(self) -> dict[str, DetectionConfig]:
        return dict(self._detections.configs)

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """The (stream, detection) pairs being tracked."""
        return self._tracker.pairs

    def process(self, windows: Sequence[Window]) -> Detections:
        """Embed the windows in one model call, score each, and track events; windows of a stream in time order.
        A window whose embedding is not finite is left out (counted in `unscored`)."""
        if not windows:
            return Detections([], [])
        embeddings = self._embedder.embed(np.stack([w.samples for w in windows]))
        matcher = self._detections.matcher
        scores, events = [], []
        for window, embedding, finite in zip(windows, embeddings, np.isfinite(embeddings).all(axis=1), strict=True):
            if not finite:  # the model overflowed (fp16 on absurd audio): a NaN score would start every detection
                self.unscored += 1
                continue
            values = matcher.score(window.stream, embedding)
            window_scores = Scores(window.stream, window.start_sample, window.end_sample, values)
            scores.append(window_scores)
            events.extend(self._tracker.feed(window_scores))
        return Detections(scores, events)

    def replace(self, detections: DetectionSet, end_samples: Mapping[str, int]) -> Swap:
        """Use `detections` from the next call on: unchanged ones keep their state; removed or changed ones end where
        their stream's audio has got to (`end_samples`)."""
        before = set(self._tracker.pairs)
        ended = self._tracker.update(detections.configs, dict(end_samples))
        self._detections = detections
        return Swap(ended, sorted(set(self._tracker.pairs) - before))

    def close(self, stream: str, end_sample: int) -> list[DetectionEvent]:
        """The stream's audio ended at `end_sample`: its events in progress end there."""
        return self._tracker.close(stream, end_sample)
