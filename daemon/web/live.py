"""What the web page shows live: an `Output` that keeps the newest of everything the daemon publishes, in memory.

The outputs' thread hands it records (`publish_*`: a dict update or a bounded deque append under a lock, never a
wait); the web server's threads read a copy (`snapshot`, `events`). Nothing here reaches back into the pipeline:
the page sees what every other output sees, and a slow browser costs the inference thread nothing.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from clapd.daemon.config import DetectionConfig
from clapd.daemon.output import Output, OutputStats
from clapd.daemon.records import AnomalyReading, DetectionEvent, LevelReading, Scores, StateChange


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """An event as the page lists it: its start, and its end once it has one."""

    event_id: str
    stream: str
    detection: str
    start_utc: str
    end_utc: str | None  # None while it goes on
    peak_score: float
    clip: str | None  # the clip's path (from the end event); the file appears after the post-roll


class LiveView(Output):
    """The newest scores, level, anomaly score and states of every stream, and the last `max_events` events."""

    name = "web"
    wants_scores = True

    def __init__(self, max_events: int) -> None:
        self._lock = threading.Lock()  # the outputs' thread writes, the web server's threads read
        self._streams: list[str] = []
        self._detections: dict[str, DetectionConfig] = {}
        self._scores: dict[str, Scores] = {}  # stream -> its newest window's scores
        self._levels: dict[str, float] = {}  # stream -> dBFS
        self._anomaly: dict[str, float] = {}  # stream -> its latest published anomaly score
        self._on: set[tuple[str, str]] = set()  # (stream, detection) pairs with an event in progress
        self._events: deque[LiveEvent] = deque(maxlen=max_events)  # oldest first
        self._windows = 0  # scores records taken: the page sees the view change
        self._records = 0

    def start(self) -> None:
        """Nothing to connect to."""

    def stop(self, timeout: float = 2.0) -> None:
        """Nothing to flush: the page reads memory."""

    def publish_event(self, event: DetectionEvent) -> None:
        with self._lock:
            self._records += 1
            if event.kind == "start":
                self._events.append(_live(event))
                return
            for i, known in enumerate(self._events):
                if known.event_id == event.event_id:
                    del self._events[i]  # moved to the newest end: the list is by last change
                    break
            self._events.append(_live(event))

    def publish_state(self, change: StateChange) -> None:
        with self._lock:
            self._records += 1
            (self._on.add if change.on else self._on.discard)((change.stream, change.detection))

    def publish_level(self, reading: LevelReading) -> None:
        with self._lock:
            self._records += 1
            self._levels[reading.stream] = reading.dbfs

    def publish_scores(self, scores: Scores) -> None:
        with self._lock:
            self._records += 1
            self._windows += 1
            self._scores[scores.stream] = scores
            if scores.level_dbfs is not None:
                self._levels[scores.stream] = scores.level_dbfs

    def publish_anomaly(self, reading: AnomalyReading) -> None:
        with self._lock:
            self._records += 1
            self._anomaly[reading.stream] = reading.peak

    def announce(self, streams: Sequence[str], detections: Mapping[str, DetectionConfig]) -> None:
        with self._lock:
            self._streams = list(streams)
            self._detections = dict(detections)

    def stats(self) -> OutputStats:
        with self._lock:
            return OutputStats(sent=self._records, dropped=0)

    def snapshot(self) -> dict:
        """Every stream's newest window: per detection watching it, the score, thresholds and state (JSON-ready)."""
        with self._lock:
            streams = [self._stream_view(name) for name in self._streams]
            return {"windows": self._windows, "streams": streams}

    def teachable(self) -> set[str]:
        """The events whose audio the ring still holds for the per-event buttons: each (stream, detection)'s latest
        of this run, of a detection in force that takes examples (an older event's audio comes from its clip)."""
        with self._lock:
            takes = self._taking_examples()
            latest = {(e.stream, e.detection): e.event_id for e in sorted(self._events, key=lambda e: e.start_utc)}
            return {event_id for (_, detection), event_id in latest.items() if detection in takes}

    def taking_examples(self) -> set[str]:
        """The detections in force that take audio examples: not level detections (nor anomaly events, which are of
        no detection)."""
        with self._lock:
            return self._taking_examples()

    def _taking_examples(self) -> set[str]:
        return {name for name, config in self._detections.items() if config.level is None}

    def events(self) -> list[LiveEvent]:
        """The events kept, newest first."""
        with self._lock:
            return list(reversed(self._events))

    def _stream_view(self, stream: str) -> dict:
        """Under the lock."""
        scores = self._scores.get(stream)
        rows = []
        for name, config in self._detections.items():
            if config.streams is not None and stream not in config.streams:
                continue
            rows.append(
                {
                    "detection": name,
                    "score": None if scores is None else _finite(scores.values.get(name)),
                    "threshold_on": config.threshold_on if isinstance(config.threshold_on, float) else None,
                    "threshold_off": config.threshold_off,
                    "on": (stream, name) in self._on,
                }
            )
        return {
            "stream": stream,
            "window_utc": None if scores is None else scores.start_utc,
            "level_dbfs": _finite(self._levels.get(stream)),
            "anomaly": _finite(self._anomaly.get(stream)),
            "detections": rows,
        }


def _live(event: DetectionEvent) -> LiveEvent:
    return LiveEvent(
        event.event_id,
        event.stream,
        event.detection,
        event.start_utc,
        event.end_utc,
        event.peak_score,
        event.clip,
    )


def _finite(value: float | None) -> float | None:
    """JSON has no NaN or infinity: such a value is shown as missing."""
    return value if value is not None and math.isfinite(value) else None
