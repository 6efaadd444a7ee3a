"""The MQTT topics and payloads clapd publishes and accepts: the documented schema users build on.

Topics, under the prefix: `mqtt.topic_prefix` as given, else `clapd/{node}` (`topic_prefix_for`), where the node id
is `mqtt.client_id` if set, else the host name made topic-safe (`node_id_for`); so daemons sharing a broker on the
default never share a topic (earlier versions defaulted to `clapd` alone, which every daemon shared):

- `{prefix}/status`: "online" / "offline", retained; "offline" is also the last will, so it appears when the
  daemon dies without saying goodbye.
- `{prefix}/{stream}/{detection}/event`: one `EventPayload` as JSON per start and per end, not retained. It
  carries `event_type` (the same value as `kind`) because Home Assistant's MQTT event entity requires that key.
  A subscriber that is away when it is published (Home Assistant restarting) never sees it, unless it keeps a
  persistent session (clean session off, QoS 1) for the broker to queue it in.
- `{prefix}/{stream}/{detection}/state`: "ON" / "OFF", retained: what is going on now, which a subscriber gets on
  (re)subscribing, so the state, not the event, is what an automation that must not miss a change should follow.
  Published again, unchanged, every `mqtt.state_refresh_seconds` (`clapd.daemon.mqtt.states`).
- `{prefix}/{stream}/level`: the stream's input level in dBFS as a decimal number (e.g. `-31.5`, never below
  `LEVEL_FLOOR_DBFS`), every `mqtt.level_interval_seconds`; QoS 0, not retained, not spooled while the broker is
  away (a stale level is worthless).
- `{prefix}/{stream}/scores` (only with `mqtt.scores_interval_seconds` above 0): what the model hears, one
  `ScoresTopicPayload` as JSON for a window at most every `scores_interval_seconds` of the stream's audio (the first
  window at least that far past the last one published): its `mqtt.scores_top_k` highest scores, highest first;
  QoS 0, not retained, never spooled (dropped and counted while the broker is away):
  `{"stream": "kitchen", "start_utc": "2026-12-01T11:00:00.500+00:00", "start_offset_seconds": 0.5,
  "end_offset_seconds": 2.5, "scores": [{"detection": "smoke_alarm", "score": 0.91}, ...], "level_dbfs": -31.5}`.
- `{prefix}/{stream}/anomaly` (only for a stream with `anomaly:` monitoring and a bank): one `AnomalyPayload` as
  JSON every `anomaly.publish_interval_seconds` of the stream's audio, the highest normalised anomaly score since the
  last (about 1: typical of normal operation); QoS 0, not retained, not spooled while the broker is away:
  `{"kind": "anomaly", "stream": "pump", "score": 1.07, "utc": "2026-12-01T11:00:02.500+00:00", "bank_size": 1200}`.
  Anomaly events and states are a detection's, under the stream's `anomaly.event` name (`{prefix}/pump/anomaly_event`
  ... see `clapd.daemon.config.AnomalyConfig`), their scores the normalised anomaly scores.
- `{prefix}/control/set` (only with `mqtt.control.enabled`, which needs an authenticated broker; restrict who
  may publish here with the broker's ACL): one JSON `ControlRequest` (`clapd.daemon.control`) per message, not
  retained (a retained request the broker replays on (re)subscription is refused, never applied again), at most
  `clapd.daemon.control.MAX_CONTROL_PAYLOAD_BYTES`:
  `{"request_id": "r1", "action": "set", "detection": "smoke", "config": {"prompts": ["a smoke alarm"]}}`
  (add, or replace with a whole detection as written in the config file),
  `{"action": "update", "detection": "smoke", "config": {"threshold_on": 0.6}}` (change the fields given),
  `{"action": "remove", "detection": "smoke"}`; audio examples from the live stream (`clapd.daemon.enrol`):
  `{"action": "enrol", "detection": "doorbell", "stream": "hall", "last_seconds": 4, "negative": false}` (the
  stream's newest 4 s, at most `clapd.daemon.control.MAX_ENROL_SECONDS`, become an example, or a negative one),
  `{"action": "false_alarm", "detection": "smoke", "stream": "kitchen"}` (the audio of its last event there, or
  on any stream without `stream`, becomes a negative example),
  `{"action": "forget_example", "detection": "doorbell", "file": "hall-20261201T101500123Z-positive.flac"}`
  (an enrolled example's entry and file removed). Changes are validated like the config file and survive restarts.
- `{prefix}/control/result`: one JSON `ControlResult` per request, QoS 1, not retained:
  `{"request_id": "r1", "ok": false, "action": "set", "detection": "smoke",
  "errors": ["config.threshold_on = 1.5: Input should be less than 1"]}`; every error names its key path, value
  and reason, as the config file's errors do. The result of an accepted enrol or false_alarm also names the
  example file it added (`"example": "kitchen-20261201T101502250Z-negative.flac"`), a forget_example the one it
  removed; other results carry no `example` key.

Home Assistant (with `mqtt.home_assistant.enabled`): retained discovery configs under
`{discovery_prefix}/{component}/{node_id}/{object_id}/config`, described in `clapd.daemon.mqtt.discovery`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from clapd import __version__
from clapd.daemon.records import AnomalyReading, DetectionEvent, Scores

StatusPayload = Literal["online", "offline"]
StatePayload = Literal["ON", "OFF"]
STATUS_ONLINE: StatusPayload = "online"
STATUS_OFFLINE: StatusPayload = "offline"
STATE_ON: StatePayload = "ON"
STATE_OFF: StatePayload = "OFF"
LEVEL_FLOOR_DBFS = -120.0  # digital silence is -inf dBFS; published as this floor instead
SCORE_DECIMALS = 4  # of a score on the scores topic: finer than any threshold, a third of the digits of a float
DEFAULT_TOPIC_ROOT = "clapd"  # the default prefix is `clapd/{node id}`
MAX_NODE_ID = 64  # characters: as many as a client id has
_NOT_IN_NODE_ID = re.compile(r"[^A-Za-z0-9_-]")  # a topic level that is also a Home Assistant id

_FORBIDDEN_IN_LEVEL = ("+", "#", "/", "\0")


class EventPayload(BaseModel):
    """A detection starting or ending on a stream; the start and the end of one detection share `event_id`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: str = Field(description="the same id on a detection's start and end")
    kind: Literal["start", "end"] = Field(description="start: the detection began; end: it stopped")
    event_type: Literal["start", "end"] = Field(
        description="the same as `kind`: the key Home Assistant's MQTT event entity reads the event's type from"
    )
    stream: str = Field(description="the audio stream's name from the config")
    detection: str = Field(description="the detection's name from the config")
    start_utc: str = Field(description="ISO 8601 time of the event's first window")
    end_utc: str | None = Field(description="ISO 8601 time of the end; null on start")
    start_offset_seconds: float = Field(ge=0, description="seconds since the stream started, at the event's start")
    end_offset_seconds: float | None = Field(ge=0, description="seconds since the stream started, at the end")
    peak_score: float = Field(description="highest smoothed score so far")
    mean_score: float = Field(description="mean smoothed score so far")
    clip: str | None = Field(
        None,
        description="on end, with the detection's `clips` on: the path of the event's audio clip on the daemon's "
        "machine, written once the post-roll has been heard (post_roll_seconds after this message); the file never "
        "appears if the clip was dropped (full queue or disk) or withheld (privacy prompts); null otherwise",
    )
    clip_url: str | None = Field(
        None,
        description="on end, with the detection's `clips` and the local web page (`web`) on: the clip's address on "
        "the page (the page's host, or this machine's name when it listens on every address); null otherwise",
    )
    description: str | None = Field(
        None,
        description="an anomaly event's (`anomaly.event`) best-matching text of the stream's `anomaly.descriptions`, "
        "by its highest-scoring window so far; null otherwise",
    )
    clapd_version: str = Field(__version__, description="the version of clapd that published the event")

    @classmethod
    def from_event(cls, event: DetectionEvent) -> EventPayload:
        end_offset = None if event.end_sample is None else event.end_sample / event.sample_rate
        return cls(
            event_id=event.event_id,
            kind=event.kind,
            event_type=event.kind,
            stream=event.stream,
            detection=event.detection,
            start_utc=event.start_utc,
            end_utc=event.end_utc,
            start_offset_seconds=event.start_sample / event.sample_rate,
            end_offset_seconds=end_offset,
            peak_score=event.peak_score,
            mean_score=event.mean_score,
            clip=event.clip,
            clip_url=event.clip_url,
            description=event.description,
        )

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


class AnomalyPayload(BaseModel):
    """A stream's anomaly score: its distance to learned normal operation (`clapd.daemon.anomaly`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["anomaly"] = "anomaly"
    stream: str = Field(description="the audio stream's name from the config")
    score: float = Field(
        ge=0, description="the highest normalised anomaly score since the last message; about 1 is typical of normal"
    )
    utc: str | None = Field(description="ISO 8601 time of the end of the window that gave this message")
    bank_size: int = Field(ge=0, description="embeddings of normal operation in the stream's bank")

    @classmethod
    def from_reading(cls, reading: AnomalyReading) -> AnomalyPayload:
        return cls(stream=reading.stream, score=reading.peak, utc=reading.end_utc, bank_size=reading.bank_size)

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


class DetectionScore(BaseModel):
    """One detection's score in one window."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    detection: str = Field(description="the detection's name from the config")
    score: float = Field(ge=0, le=1, description="the window's score, before smoothing")


class ScoresTopicPayload(BaseModel):
    """A window's highest scores on one stream: what the model hears."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stream: str = Field(description="the audio stream's name from the config")
    start_utc: str = Field(description="ISO 8601 time of the window's first sample")
    start_offset_seconds: float = Field(ge=0, description="seconds since the stream started, at the window's start")
    end_offset_seconds: float = Field(ge=0, description="at the end of the window's real (unpadded) audio")
    scores: list[DetectionScore] = Field(
        description="the highest scores (to SCORE_DECIMALS places), highest first (ties: by name)"
    )
    level_dbfs: float | None = Field(
        description="the stream's input level (RMS of its last second) in dBFS to one decimal, at least "
        "LEVEL_FLOOR_DBFS; null before it was first measured"
    )

    @classmethod
    def from_scores(cls, scores: Scores, top_k: int) -> ScoresTopicPayload:
        """From scores the Runner dated (ValueError for undated ones: they carry no UTC or rate)."""
        if scores.start_utc is None or scores.sample_rate is None:
            raise ValueError("scores without a UTC time or sample rate (not handed over by the Runner)")
        top = sorted(scores.values.items(), key=lambda item: (-item[1], item[0]))[:top_k]
        level = None if scores.level_dbfs is None else round(max(scores.level_dbfs, LEVEL_FLOOR_DBFS), 1)
        return cls(
            stream=scores.stream,
            start_utc=scores.start_utc,
            start_offset_seconds=scores.start_sample / scores.sample_rate,
            end_offset_seconds=scores.end_sample / scores.sample_rate,
            scores=[DetectionScore(detection=name, score=round(score, SCORE_DECIMALS)) for name, score in top],
            level_dbfs=level,
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


def node_id_for(client_id: str | None, hostname: str) -> str:
    """The daemon's id on the broker: `client_id` if configured, else the host name with every character other than
    a letter, digit, `_` or `-` made `_` (`edge-1.lan` -> `edge-1_lan`), at most `MAX_NODE_ID` characters."""
    if client_id:
        return client_id
    return _NOT_IN_NODE_ID.sub("_", hostname)[:MAX_NODE_ID] or DEFAULT_TOPIC_ROOT


def topic_prefix_for(topic_prefix: str | None, node_id: str) -> str:
    """The configured prefix as given, else `clapd/{node_id}`."""
    return topic_prefix if topic_prefix is not None else build_topic(DEFAULT_TOPIC_ROOT, node_id)


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

    def level(self, stream: str) -> str:
        return build_topic(self.prefix, stream, "level")

    def scores(self, stream: str) -> str:
        return build_topic(self.prefix, stream, "scores")

    def anomaly(self, stream: str) -> str:
        return build_topic(self.prefix, stream, "anomaly")

    @property
    def control_set(self) -> str:
        return build_topic(self.prefix, "control", "set")

    @property
    def control_result(self) -> str:
        return build_topic(self.prefix, "control", "result")


def level_payload(dbfs: float) -> bytes | None:
    """The level as published: one decimal, at least `LEVEL_FLOOR_DBFS`; None for NaN (nothing to say)."""
    if math.isnan(dbfs):
        return None
    return f"{max(dbfs, LEVEL_FLOOR_DBFS):.1f}".encode()
