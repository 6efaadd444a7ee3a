"""The one interface every output implements in full: what the daemon finds goes out through these methods only.

Threads: `start`, `stop` and `announce` are called from the main thread; the `publish_*` methods only from the
outputs' thread (`clapd.daemon.runner`), in the order the inference thread produced the records, so an output
never has to order or lock them itself. An output never blocks that thread on the network: one that talks to a
server queues (`clapd.daemon.mqtt`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from clapd.daemon.config import DetectionConfig
from clapd.daemon.detector import Detections
from clapd.daemon.records import AnomalyReading, DetectionEvent, LevelReading, OutputRecord, Scores, StateChange


@dataclass(frozen=True, slots=True)
class OutputStats:
    """An output's counters since it was created, for metrics and tests."""

    sent: int  # records delivered (MQTT: acknowledged by the broker; QoS 0: handed to the socket)
    dropped: int  # records thrown away: a full queue or disk, a closed pipe, refused by the broker
    queued: int = 0  # records waiting to be delivered (MQTT: on disk, sent or not, until acknowledged)
    connected: bool | None = None  # a session with a server is up; None: this output has no server
    connects: int = 0
    disconnects: int = 0  # sessions lost or closed
    auth_failures: int = 0  # connections refused for bad credentials or authorization
    spool_set_aside: int = 0  # unusable spool files moved aside at start (their messages are not sent)
    scores_dropped: int = 0  # scores messages not sent (MQTT: no session with the broker, or refused by paho)


class Output(ABC):
    """A sink for events, states, levels and (if it wants them) every window's scores."""

    name: str  # for logs and metrics labels
    wants_scores: bool = False  # the outputs' thread is handed every window's `Scores` only when some output wants them

    @abstractmethod
    def start(self) -> None:
        """Begin delivering; a server that is away now is retried in the background, never raised."""

    @abstractmethod
    def stop(self, timeout: float = 2.0) -> None:
        """Deliver what can be delivered within `timeout` s and release everything; a second call does nothing."""

    @abstractmethod
    def publish_event(self, event: DetectionEvent) -> None: ...

    @abstractmethod
    def publish_state(self, change: StateChange) -> None: ...

    @abstractmethod
    def publish_level(self, reading: LevelReading) -> None: ...

    @abstractmethod
    def publish_scores(self, scores: Scores) -> None: ...

    @abstractmethod
    def publish_anomaly(self, reading: AnomalyReading) -> None:
        """A stream's anomaly score, at most every `anomaly.publish_interval_seconds` of its audio."""

    @abstractmethod
    def announce(self, streams: Sequence[str], detections: Mapping[str, DetectionConfig]) -> None:
        """The streams and detections now in force (Home Assistant discovery), after start and after each change."""

    @abstractmethod
    def stats(self) -> OutputStats: ...


class Recorder(ABC):
    """A keeper of evidence (event clips, the embedding history) fed by the inference thread, writing on its own
    thread, which the Runner starts (`work`) and joins.

    Threads: `on_event`, `turn` and `record` run on the inference thread between model calls (or on the main thread
    once inference has stopped): they only copy (audio out of the rings, embeddings into a bounded queue) and never
    wait, so a slow disk never holds up inference; what cannot be queued is dropped and counted. `finish` says no
    more will come: `work` writes what is pending and returns.
    """

    name: str  # for logs, the thread's name and metrics (`clapd_{name}_{counter}_total`)

    @abstractmethod
    def on_event(self, event: DetectionEvent) -> DetectionEvent:
        """Note an event (before it goes to the outputs); returns it, annotated (an end with its clip's path)."""

    @abstractmethod
    def record(self, found: Detections) -> None:
        """What one model call found (scores, events, the windows embedded)."""

    @abstractmethod
    def turn(self) -> None:
        """Once per turn of the inference loop: copy whatever is due out of the rings."""

    @abstractmethod
    def work(self) -> None:
        """The recorder's thread: write until `finish`, then write what is pending and return."""

    @abstractmethod
    def finish(self) -> None: ...

    @abstractmethod
    def detections_changed(self, detections: Mapping[str, DetectionConfig]) -> None:
        """The detections now in force (a reload, a control request), told on the inference thread."""

    @abstractmethod
    def counters(self) -> dict[str, int]:
        """Counts since start, by name (written, dropped, deleted...), for metrics and the log at stop."""


def deliver(output: Output, record: OutputRecord) -> None:
    """Hand one record to the method for its type."""
    if isinstance(record, DetectionEvent):
        output.publish_event(record)
    elif isinstance(record, StateChange):
        output.publish_state(record)
    elif isinstance(record, LevelReading):
        output.publish_level(record)
    elif isinstance(record, Scores):
        output.publish_scores(record)
    elif isinstance(record, AnomalyReading):
        output.publish_anomaly(record)
    else:
        raise TypeError(f"not an output record: {type(record).__name__}")
