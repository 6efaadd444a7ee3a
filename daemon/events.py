"""Scores over time -> start/end events: smoothing, hysteresis, minimum duration, cooldown.

Times are sample offsets in the stream. A sound's onset lies within the last hop of the first window that
heard it (the window one hop earlier did not), so the onset is placed half a hop before that window's end; its
end likewise half a hop after the start of the last window that still heard it. Both are then within half a
hop of the truth where the model's per-window decision is right.

A sound heard by fewer windows than its onset and end estimates need (`hops * hop <= window`: a short sound, or
one the model heard only in the windows that held most of it) would get an end at or before its onset. Such an
event is reported as lasting one hop, the detector's time resolution: it starts at its onset and ends a hop later.
An event still in progress when its stream stops ends where the audio did.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from clapd.daemon.config import DetectionConfig
from clapd.daemon.records import DetectionEvent, EventKind, Scores


class StreamClock:
    """Turns a stream's sample offsets into UTC from an anchor: (sample, UTC time it was captured).

    Anchored when the stream starts; re-anchored after an outage, because a microphone or pipe that was away
    delivered no samples meanwhile and the counter alone would place later audio too early; and re-anchored when a
    live source delivers faster than real time, which would place later audio in the future (`Stream.keep_clock`).
    """

    __slots__ = ("sample_rate", "_anchor_sample", "_anchor_utc")

    def __init__(self, started_utc: datetime, sample_rate: int) -> None:
        self.sample_rate = sample_rate  # Hz
        self._anchor_sample, self._anchor_utc = 0, started_utc

    def reanchor(self, sample: int, utc: datetime) -> None:
        self._anchor_sample, self._anchor_utc = sample, utc

    def datetime_at(self, sample: int) -> datetime:
        return self._anchor_utc + timedelta(seconds=(sample - self._anchor_sample) / self.sample_rate)

    def utc(self, sample: int) -> str:
        return self.datetime_at(sample).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class Span:
    """The part of a window a detection heard, when it is not the whole window: sample offsets in the stream."""

    start_sample: int
    end_sample: int
    onset: int | None = None  # where what it heard began, when known exactly


@dataclass(slots=True)
class _Heard:
    score: float
    start_sample: int
    end_sample: int


@dataclass(slots=True)
class _Active:
    event_id: str
    onset: int
    scores: list[float] = field(default_factory=list)
    announced: bool = False
    start_utc: str | None = None  # dated once, at the start: a clock re-anchored meanwhile must not move it
    last_heard: _Heard | None = None


class EventRules(Protocol):
    """What a tracker reads of its config: a `DetectionConfig`, or a stream's anomaly rules
    (`clapd.daemon.anomaly.monitor`), whose scores are normalised distances rather than probabilities."""

    @property
    def level(self) -> object | None: ...  # not None: a level detection (0/1 scores, no smoothing)
    @property
    def threshold_on(self) -> float: ...
    @property
    def threshold_off(self) -> float: ...
    @property
    def smoothing_windows(self) -> int: ...
    @property
    def min_duration_seconds(self) -> float: ...
    @property
    def cooldown_seconds(self) -> float: ...


class DetectionTracker:
    """One detection on one stream, fed one window's score at a time."""

    def __init__(self, stream: str, detection: str, config: EventRules, clock: StreamClock, hop: int) -> None:
        self.stream, self.detection = stream, detection
        self._config = config
        self._clock = clock
        self._hop = hop  # samples between window starts
        smoothing = 1 if config.level is not None else config.smoothing_windows  # a level's score is 0 or 1: no mean
        self._history: deque[_Heard] = deque(maxlen=smoothing)
        self._active: _Active | None = None
        self._quiet_until = 0  # cooldown: no new start before this sample

    @property
    def active(self) -> bool:
        """An event is in progress (announced or not yet)."""
        return self._active is not None

    def feed(self, score: float, start_sample: int, end_sample: int, onset: int | None = None) -> list[DetectionEvent]:
        """One window's score; `onset`, when known (a level detection's loud stretch), dates an event it starts."""
        heard = _Heard(score, start_sample, end_sample)
        self._history.append(heard)
        smoothed = sum(h.score for h in self._history) / len(self._history)
        if self._active is None:
            if smoothed < self._config.threshold_on or start_sample < self._quiet_until:
                return []
            self._active = _Active(event_id=uuid.uuid4().hex, onset=self._onset() if onset is None else onset)
        active = self._active
        if smoothed < self._config.threshold_off:
            return self._finish(self._offset(active))
        active.scores.append(score)
        if score >= self._config.threshold_off:
            active.last_heard = heard
        min_samples = self._config.min_duration_seconds * self._clock.sample_rate
        if active.announced or end_sample - self._hop // 2 - active.onset < min_samples:
            return []
        active.announced = True
        return [self._event("start", active, None)]

    def close(self, end_sample: int) -> list[DetectionEvent]:
        """The stream stopped: an event still in progress ends where the audio did."""
        return self._finish(end_sample) if self._active is not None else []

    def _finish(self, end: int) -> list[DetectionEvent]:
        active, self._active = self._active, None
        assert active is not None
        self._quiet_until = end + int(self._config.cooldown_seconds * self._clock.sample_rate)
        return [self._event("end", active, end)] if active.announced else []

    def _onset(self) -> int:
        """Half a hop before the end of the earliest window of the current run that heard the sound."""
        earliest = self._history[-1]
        for heard in reversed(self._history):
            if heard.score < self._config.threshold_off:
                break
            earliest = heard
        return max(0, earliest.end_sample - self._hop // 2)

    def _offset(self, active: _Active) -> int:
        last = active.last_heard
        return max(active.onset + self._hop, (last.start_sample if last else active.onset) + self._hop // 2)

    def _event(self, kind: EventKind, active: _Active, end: int | None) -> DetectionEvent:
        if active.start_utc is None:
            active.start_utc = self._clock.utc(active.onset)
        return DetectionEvent(
            event_id=active.event_id,
            kind=kind,
            stream=self.stream,
            detection=self.detection,
            start_sample=active.onset,
            end_sample=end,
            start_utc=active.start_utc,
            end_utc=self._clock.utc(end) if end is not None else None,
            peak_score=max(active.scores),
            mean_score=sum(active.scores) / len(active.scores),
            sample_rate=self._clock.sample_rate,
        )


class EventTracker:
    """Every (stream, detection) pair's tracker; `Scores` in, events out, in time order per stream."""

    def __init__(self, detections: dict[str, DetectionConfig], clocks: dict[str, StreamClock], hop: int) -> None:
        self._clocks = clocks
        self._hop = hop
        self._configs: dict[tuple[str, str], DetectionConfig] = {}
        self._trackers: dict[tuple[str, str], DetectionTracker] = {}
        self.update(detections, {})

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """The (stream, detection) pairs being tracked."""
        return list(self._trackers)

    def update(self, detections: dict[str, DetectionConfig], end_samples: dict[str, int]) -> list[DetectionEvent]:
        """Swap in new detections: unchanged ones keep their state; removed or changed ones end where their
        stream's audio has got to (`end_samples`), changed and new ones start afresh."""
        wanted = {
            (stream, name): config
            for stream in self._clocks
            for name, config in detections.items()
            if config.streams is None or stream in config.streams
        }
        ended = []
        for key, tracker in list(self._trackers.items()):
            if not _same_decisions(wanted.get(key), self._configs[key]):
                ended.extend(tracker.close(end_samples.get(key[0], 0)))
                del self._trackers[key], self._configs[key]
        for key, config in wanted.items():
            if key not in self._trackers:
                stream, name = key
                self._trackers[key] = DetectionTracker(stream, name, config, self._clocks[stream], self._hop)
                self._configs[key] = config
        return ended

    def feed(self, scores: Scores, heard: Mapping[str, Span] | None = None) -> list[DetectionEvent]:
        """One window's scores. `heard` gives a detection its own span of the window (a level detection hears only
        the window's new audio) and the onset of what it heard, instead of the window's bounds."""
        events = []
        for name, value in scores.values.items():
            tracker = self._trackers.get((scores.stream, name))
            if tracker is None:
                continue
            span = (heard or {}).get(name)
            if span is None:
                events.extend(tracker.feed(value, scores.start_sample, scores.end_sample))
            else:
                events.extend(tracker.feed(value, span.start_sample, span.end_sample, span.onset))
        return events

    def close(self, stream: str, end_sample: int) -> list[DetectionEvent]:
        return [e for (s, _), t in self._trackers.items() if s == stream for e in t.close(end_sample)]


DISPLAY_ONLY_FIELDS = {"name": None}  # fields that change how a detection is shown, not what it decides


def _same_decisions(new: DetectionConfig | None, old: DetectionConfig) -> bool:
    """A new name for a detection keeps its events going; any other change starts it afresh."""
    return new is not None and new.model_copy(update=DISPLAY_ONLY_FIELDS) == old.model_copy(update=DISPLAY_ONLY_FIELDS)
