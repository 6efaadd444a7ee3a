"""The one place where windows of audio become scores and events.

`Detector` is synchronous: no threads, no network, no clock of its own (each stream's `StreamClock`, passed in,
turns sample offsets into UTC). The daemon's inference thread, `clapd classify`, the tests and the benchmarks all
feed windows through `Detector.process`; new decision features plug in here:

- model detections: prompts and audio examples against negatives and the background (`clapd.daemon.matcher`);
- the level gate: a window quieter than its stream's `min_level_dbfs` skips the model and scores 0 for every model
  detection of the stream, so events in progress end as on a sound gone quiet (counted in `gated`);
- level detections: the stream's short-time level over each window's new audio, no model
  (`clapd.daemon.loudness`).

Every score goes through the same `EventTracker`, so every output sees ordinary `DetectionEvent`s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from clapd.daemon.anomaly.monitor import StreamAnomaly
from clapd.daemon.config import DetectionConfig
from clapd.daemon.events import EventTracker, StreamClock
from clapd.daemon.loudness import LevelWatch, window_level_dbfs
from clapd.daemon.matcher import Matcher
from clapd.daemon.records import AnomalyReading, DetectionEvent, Scores, Window, WindowEmbedding


class Embedder(Protocol):
    """Windows [n, window_samples] -> unit embeddings [n, dim] (`clapd.daemon.inference.AudioModel`)."""

    def embed(self, windows: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True, slots=True)
class DetectionSet:
    """Detections with their prompts and examples embedded (`clapd.daemon.prompts.DetectionPreparer`), ready to be
    swapped in. `matcher` scores the model detections; level detections are in `configs` only."""

    configs: dict[str, DetectionConfig]  # as given: what control changes start from and what is saved
    matcher: Matcher
    # The configs whose events are tracked: `threshold_on: auto` made the calibrated number (empty: `configs`).
    resolved: dict[str, DetectionConfig] = field(default_factory=dict)

    @property
    def tracked(self) -> dict[str, DetectionConfig]:
        return {name: self.resolved.get(name, config) for name, config in self.configs.items()}


@dataclass(frozen=True, slots=True)
class Detections:
    """What one batch of windows gave: every window's scores, and the events they started or ended, in order."""

    scores: list[Scores]
    events: list[DetectionEvent]
    embedded: list[WindowEmbedding] = field(default_factory=list)  # the windows the model embedded, in order
    anomalies: list[AnomalyReading] = field(default_factory=list)  # every anomaly-scored window's reading, in order


@dataclass(frozen=True, slots=True)
class Swap:
    """What replacing the detections did."""

    ended: list[DetectionEvent]  # events of removed or changed detections, ended where their stream had got to
    new_pairs: list[tuple[str, str]]  # (stream, detection) pairs tracked from now on that were not before


class Detector:
    """Windows of any streams -> scores per detection -> start/end events (smoothing, hysteresis, cooldown).

    `gates`: each stream's `min_level_dbfs` (None or absent: no gate). `hidden`: detections scored on every
    embedded window but never tracked or published (clip privacy prompts), their scores in `Detections.embedded`.
    `keep_embedded`: hand out each embedded window in `Detections.embedded` (the history and clips' privacy check
    read them); off, nothing is built for them, and with `hidden` it is always on."""

    def __init__(
        self,
        embedder: Embedder,
        detections: DetectionSet,
        clocks: Mapping[str, StreamClock],
        hop: int,
        *,
        gates: Mapping[str, float | None] | None = None,
        hidden: Matcher | None = None,
        anomalies: Mapping[str, StreamAnomaly] | None = None,
        keep_embedded: bool = False,
    ) -> None:
        self._embedder = embedder
        self.anomalies = dict(anomalies or {})  # stream -> its anomaly monitoring (`clapd.daemon.anomaly`)
        self._hidden = hidden
        self._keep_embedded = keep_embedded or hidden is not None
        self._detections = detections
        self._tracker = EventTracker(detections.tracked, dict(clocks), hop)
        self._gates = {stream: gate for stream, gate in (gates or {}).items() if gate is not None}
        self._levels = {stream: LevelWatch(clock.sample_rate) for stream, clock in clocks.items()}
        self._watch_levels(detections.configs)
        self.unscored = 0  # windows whose embedding was not finite: neither scored nor tracked
        # stream -> windows below its level gate, not given to the model; every stream's key made here, so a reader in
        # another thread (metrics) never meets the mapping growing
        self.gated: dict[str, int] = dict.fromkeys(clocks, 0)

    @property
    def detections(self) -> dict[str, DetectionConfig]:
        return dict(self._detections.configs)

    @property
    def tracked(self) -> dict[str, DetectionConfig]:
        """The detections as their events are tracked: `threshold_on: auto` as the calibrated number."""
        return self._detections.tracked

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """The (stream, detection) pairs being tracked, anomaly events' (stream, event name) included."""
        return self._tracker.pairs + [(stream, anomaly.config.event) for stream, anomaly in self.anomalies.items()]

    def process(self, windows: Sequence[Window]) -> Detections:
        """Embed the windows that need the model in one call, score each window, and track events; windows of a
        stream in time order. A window whose embedding is not finite is left out (counted in `unscored`)."""
        if not windows:
            return Detections([], [])
        matcher = self._detections.matcher
        gated = [self._below_gate(w) for w in windows]
        modelled = [not below and self._embeds(w.stream) for w, below in zip(windows, gated, strict=True)]
        to_embed = [w.samples for w, m in zip(windows, modelled, strict=True) if m]
        embeddings = iter(self._embedder.embed(np.stack(to_embed)) if to_embed else ())
        scores, events, embedded, anomalies = [], [], [], []
        for window, below, needs_model in zip(windows, gated, modelled, strict=True):
            values: dict[str, float] = {}
            if below:
                self.gated[window.stream] += 1
                values = dict.fromkeys(matcher.names(window.stream), 0.0)  # as on silence: events in progress end
            elif needs_model:
                embedding = next(embeddings)
                if not np.isfinite(embedding).all():  # the model overflowed (fp16 on absurd audio): a NaN score
                    self.unscored += 1  # would start every detection
                    continue
                values = matcher.score(window.stream, embedding) if matcher.watches(window.stream) else {}
                if self._keep_embedded:
                    embedded.append(self._embedded(window, embedding))
                self._feed_anomaly(window, embedding, anomalies, events)
            elif window.stream in self.anomalies:  # compared by sound features only: no model call for it
                self._feed_anomaly(window, None, anomalies, events)
            levels = self._levels[window.stream].feed(window)
            values.update({name: level.score for name, level in levels.items()})
            window_scores = Scores(window.stream, window.start_sample, window.end_sample, values)
            scores.append(window_scores)
            events.extend(self._tracker.feed(window_scores, {name: level.span for name, level in levels.items()}))
        return Detections(scores, events, embedded, anomalies)

    def replace(self, detections: DetectionSet, end_samples: Mapping[str, int]) -> Swap:
        """Use `detections` from the next call on: unchanged ones keep their state; removed or changed ones end where
        their stream's audio has got to (`end_samples`)."""
        before = set(self._tracker.pairs)
        ended = self._tracker.update(detections.tracked, dict(end_samples))
        self._detections = detections
        self._watch_levels(detections.configs)
        return Swap(ended, sorted(set(self._tracker.pairs) - before))

    def close(self, stream: str, end_sample: int) -> list[DetectionEvent]:
        """The stream's audio ended at `end_sample`: its events in progress end there."""
        self._levels[stream].reset()
        anomaly = self.anomalies.get(stream)
        return self._tracker.close(stream, end_sample) + (anomaly.close(end_sample) if anomaly is not None else [])

    def rebaseline(self, stream: str, seconds: float, end_sample: int) -> list[DetectionEvent]:
        """Learn the stream's normal bank anew from its next `seconds` of audio; an anomaly in progress ends at
        `end_sample`. KeyError for a stream without anomaly monitoring."""
        return self.anomalies[stream].relearn(seconds, end_sample)

    def reload_banks(self, end_samples: Mapping[str, int]) -> list[DetectionEvent]:
        """Each monitored stream takes its stored bank if another process wrote it (see
        `StreamAnomaly.reload_stored`); `end_samples`: where each stream's audio stands now."""
        return [e for name, a in self.anomalies.items() for e in a.reload_stored(end_samples[name])]

    def _embeds(self, stream: str) -> bool:
        hidden = self._hidden is not None and self._hidden.watches(stream)
        anomaly = self.anomalies.get(stream)
        embedded_for_anomaly = anomaly is not None and (anomaly.needs_embedding or self._keep_embedded)
        return hidden or self._detections.matcher.watches(stream) or embedded_for_anomaly

    def _feed_anomaly(
        self,
        window: Window,
        embedding: np.ndarray | None,
        anomalies: list[AnomalyReading],
        events: list[DetectionEvent],
    ) -> None:
        if (anomaly := self.anomalies.get(window.stream)) is not None:
            reading, anomaly_events = anomaly.feed(window, embedding)
            anomalies.extend([reading] if reading is not None else [])
            events.extend(anomaly_events)

    def _embedded(self, window: Window, embedding: np.ndarray) -> WindowEmbedding:
        hidden = self._hidden.score(window.stream, embedding) if self._hidden is not None else {}
        level = window_level_dbfs(window)
        return WindowEmbedding(window.stream, window.start_sample, window.end_sample, embedding, level, hidden)

    def _below_gate(self, window: Window) -> bool:
        gate = self._gates.get(window.stream)
        return gate is not None and window_level_dbfs(window) < gate

    def _watch_levels(self, configs: Mapping[str, DetectionConfig]) -> None:
        for stream, watch in self._levels.items():
            watch.update(
                {
                    name: config
                    for name, config in configs.items()
                    if config.level is not None and (config.streams is None or stream in config.streams)
                }
            )
