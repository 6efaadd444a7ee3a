"""The MQTT topics and payloads clapd publishes: the documented schema users build on.

Topics, under the configured prefix (default `clapd`):

- `{prefix}/status`: "online" / "offline", retained; "offline" is also the last will, so it appears when the
  daemon dies without saying goodbye.
- `{prefix}/{stream}/{detection}/event`: one `EventPayload` as JSON per start and per end, not retained.
- `{prefix}/{stream}/{detection}/state`: "ON" / "OFF", retained, for dashboards that show the current state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from clapd import __version__
from clapd.daemon.records import DetectionEvent

StatusPayload = Literal["online", "offline"]
StatePayload = Literal["ON", "OFF"]
STATUS_ONLINE: StatusPayload = "online"
STATUS_OFFLINE: StatusPayload = "offline"
STATE_ON: StatePayload = "ON"
STATE_OFF: StatePayload = "OFF"

_FORBIDDEN_IN_LEVEL = ("+", "#", "/", "\0")


class EventPayload(BaseModel):
    """A detection starting or ending on a stream; the start and the end of one detection share `event_id`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: str = Field(description="the same id on a detection's start and end")
    kind: Literal["start", "end"] = Field(description="start: the detection began; end: it stopped")
    stream: str = Field(description="the audio stream's name from the config")
    detection: str = Field(description="the detection's name from the config")
    start_utc: str = Field(description="ISO 8601 time of the event's first window")
    end_utc: str | None = Field(description="ISO 8601 time of the end; null on start")
    start_offset_seconds: float = Field(ge=0, description="seconds since the stream started, at the event's start")
    end_offset_seconds: float | None = Field(ge=0, description="seconds since the stream started, at the end")
    peak_score: float = Field(description="highest smoothed score so far")
    mean_score: float = Field(description="mean smoothed score so far")
    clapd_version: str = Field(__version__, description="the version of clapd that published the event")

    @classmethod
    def from_event(cls, event: DetectionEvent) -> EventPayload:
        end_offset = None if event.end_sample is None else event.end_sample / event.sample_rate
        return cls(
            event_id=event.event_id,
            kind=event.kind,
            stream=event.stream,
            detection=event.detection,
            start_utc=event.start_utc,
            end_utc=event.end_utc,
            start_offset_seconds=event.start_sample / event.sample_rate,
            end_offset_seconds=end_offset,
            peak_score=event.peak_score,
            mean_score=event.mean_score,
        )

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


def build_topic(prefix: str, *levels: str) -> str:
    """Join the prefix (which may have levels of its own) and the given levels into one topic.

    Refuses (ValueError) any level that is empty or holds a wildcard, a separator or NUL: names are already
    validated by the config, this keeps a bad name from ever subscribing others to, or publishing on, a wildcard.
    """
    if prefix.startswith("$"):
        raise ValueError(f"topic prefix {prefix!r} starts with '$' (reserved by brokers)")
    for level in prefix.split("/"):
        _check_level(level, f"topic prefix {prefix!r}")
    for level in levels:
        _check_level(level, "topic level")
    return "/".join((prefix, *levels))


def _check_level(level: str, what: str) -> None:
    if not level:
        raise ValueError(f"{what} has an empty level")
    bad = [c for c in _FORBIDDEN_IN_LEVEL if c in level]
    if bad:
        raise ValueError(f"{what} {level!r} contains {', '.join(repr(c) for c in bad)}")


@dataclass(frozen=True, slots=True)
class Topics:
    """The topics under one prefix."""

    prefix: str

    def __post_init__(self) -> None:
        build_topic(self.prefix)

    @property
    def status(self) -> str:
        return build_topic(self.prefix, "status")

    def event(self, stream: str, detection: str) -> str:
        return build_topic(self.prefix, stream, detection, "event")

    def state(self, stream: str, detection: str) -> str:
        return build_topic(self.prefix, stream, detection, "state")
