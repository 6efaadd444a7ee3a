"""Detection events (and, if asked, every window's scores) as JSON lines on a text stream (default: stdout), for
pipes and for running without a broker.

An event line is one `EventPayload`, the same schema as the MQTT event topic; a scores line is one `ScoresPayload`
(`"kind": "scores"`). States are not written: a start is ON and an end is OFF, and levels are for dashboards.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Literal, TextIO

from pydantic import BaseModel, ConfigDict, Field

from clapd.daemon.config import DetectionConfig
from clapd.daemon.mqtt.payloads import AnomalyPayload, EventPayload
from clapd.daemon.output import Output, OutputStats
from clapd.daemon.records import AnomalyReading, DetectionEvent, LevelReading, Scores, StateChange

logger = logging.getLogger(__name__)


class ScoresPayload(BaseModel):
    """One window's score per detection."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["scores"] = "scores"
    stream: str = Field(description="the audio stream's name from the config")
    start_offset_seconds: float = Field(ge=0, description="seconds since the stream started, at the window's start")
    end_offset_seconds: float = Field(ge=0, description="at the end of the window's real (unpadded) audio")
    scores: dict[str, float] = Field(description="detection name -> score in [0, 1], before smoothing")

    @classmethod
    def from_scores(cls, scores: Scores, sample_rate: int) -> ScoresPayload:
        return cls(
            stream=scores.stream,
            start_offset_seconds=scores.start_sample / sample_rate,
            end_offset_seconds=scores.end_sample / sample_rate,
            scores=scores.values,
        )


class StdoutOutput(Output):
    name = "stdout"

    def __init__(self, stream: TextIO | None = None, *, scores_rate: int | None = None) -> None:
        """`scores_rate`: write every window's scores too, with offsets at this sample rate (Hz)."""
        self._stream = stream
        self._scores_rate = scores_rate
        self.wants_scores = scores_rate is not None
        self._lock = threading.Lock()
        self._written = 0
        self._dropped = 0  # lines that could not be written (a closed pipe, a full disk)

    def start(self) -> None:
        """Nothing to connect to."""

    def publish_event(self, event: DetectionEvent) -> None:
        self._write(EventPayload.from_event(event).model_dump_json())

    def publish_scores(self, scores: Scores) -> None:
        if self._scores_rate is not None:
            self._write(ScoresPayload.from_scores(scores, self._scores_rate).model_dump_json())

    def publish_anomaly(self, reading: AnomalyReading) -> None:
        self._write(AnomalyPayload.from_reading(reading).model_dump_json())

    def publish_state(self, change: StateChange) -> None:
        """Nothing to write: the state is implied by the start and end events."""

    def publish_level(self, reading: LevelReading) -> None:
        """Nothing to write: levels are for dashboards (MQTT, metrics)."""

    def announce(self, streams: Sequence[str], detections: Mapping[str, DetectionConfig]) -> None:
        """Nothing to announce: consumers of the lines read the names in them."""

    def stats(self) -> OutputStats:
        with self._lock:
            return OutputStats(sent=self._written, dropped=self._dropped)

    def stop(self, timeout: float = 2.0) -> None:
        with self._lock:
            try:
                self._target().flush()
            except (OSError, ValueError) as e:
                logger.warning("cannot flush the event stream: %s", e)

    def _target(self) -> TextIO:
        return self._stream or sys.stdout  # looked up per call, so a redirected sys.stdout is followed

    def _write(self, line: str) -> None:
        stream = self._target()
        with self._lock:
            try:
                stream.write(line + "\n")
                stream.flush()
                self._written += 1
            except (OSError, ValueError) as e:
                self._dropped += 1
                if self._dropped == 1:
                    logger.error(
                        "cannot write events to %s (%s); dropping and counting them while this lasts", stream, e
                    )
