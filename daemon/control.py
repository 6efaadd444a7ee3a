"""Changing detections at run time over MQTT: request and result payloads, validation, and persistence.

A request arrives on `{prefix}/control/set` (see `clapd.daemon.mqtt.payloads` for the topics and examples).
`parse_request` runs in paho's thread: it checks the payload's shape and the given detection fields, and answers
anything malformed with a `ControlResult` at once. `apply_request` runs where the detections live (the daemon's
main thread): it checks the request against the current detections and streams, as the config file is checked,
and returns the new detections. `ControlStore` keeps the changes so that they survive restarts.

Every problem is worded as the config file's are: key path, value, reason. Numbers are checked as the config
file's are (finite, within bounds: `DetectionChanges` shares `DetectionConfig`'s fields and model config), and a
`set` adding a detection beyond `mqtt.control.max_detections` is refused. Requests still queued when the daemon
stops are dropped, neither applied nor answered, and counted in the log: without a result, assume nothing changed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic.fields import FieldInfo

from clapd.daemon.config import NAME_PATTERN, DetectionConfig, Name, describe_error
from clapd.daemon.examples import MIN_EXAMPLE_SECONDS
from clapd.daemon.state_files import read_json, write_json_atomically

logger = logging.getLogger(__name__)

Action = Literal["set", "update", "remove", "enrol", "false_alarm", "forget_example", "rebaseline"]
EXAMPLE_ACTIONS = ("enrol", "false_alarm", "forget_example")  # audio examples from the live stream (clapd.daemon.enrol)
MAX_ENROL_SECONDS = 30.0  # the longest audio one enrolment takes from a stream (the ring is sized for it)
CONTROL_FILE = "control.json"  # in the state directory
MAX_REBASELINE_SECONDS = 86_400.0  # a day: the longest re-baseline (as `anomaly.learn_seconds`)
MAX_CONTROL_PAYLOAD_BYTES = 65_536  # larger requests are refused unparsed
MAX_ECHO_CHARS = 200  # a request's own strings are echoed in its result at most this long
MAX_PROBLEM_CHARS = 400  # one problem line in a result, at most


class ControlError(ValueError):
    """A request that cannot be applied, or a bad saved-changes file; shaped like `ConfigError`: `source` says
    what was read, `problems` holds one line per problem: key path, value, reason."""

    def __init__(self, problems: list[str], source: str = "control request") -> None:
        super().__init__(f"{source}: " + "; ".join(problems))
        self.source = source
        self.problems = problems


class ControlRequest(BaseModel):
    """One request from `{prefix}/control/set`. From `parse_request`, `config` has been checked for its action."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: str | None = Field(None, max_length=MAX_ECHO_CHARS, description="echoed in the result")
    action: Action = Field(
        description="set: add the detection, or replace it, with `config`; update: change the fields in `config`; "
        "remove: delete the detection; enrol: a stream's last `last_seconds` become an example (`negative`: a "
        "negative example); false_alarm: the audio of the detection's last event becomes a negative example; "
        "forget_example: an enrolled example (`file`) is removed; rebaseline: a stream's normal bank for anomaly "
        "monitoring is learnt anew from its next `seconds` of audio"
    )
    detection: str | None = Field(
        None, pattern=NAME_PATTERN, description="the detection's name, as in the config file (rebaseline: none)"
    )
    config: dict[str, Any] | None = Field(
        None, description="set: a whole detection as in the config file; update: the fields to change; others: none"
    )
    stream: str | None = Field(
        None,
        pattern=NAME_PATTERN,
        description="enrol: the stream to take the audio from; false_alarm: the stream of the event (default: the "
        "detection's last event on any stream)",
    )
    last_seconds: float | None = Field(
        None,
        ge=MIN_EXAMPLE_SECONDS,
        le=MAX_ENROL_SECONDS,
        allow_inf_nan=False,
        description="enrol: seconds of the stream's newest audio to take",
    )
    negative: bool = Field(False, description="enrol: a sound that must not fire the detection (a negative example)")
    file: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_ECHO_CHARS,
        description="forget_example: the enrolled example's file name (as the enrol result gave it) or path",
    )
    event_id: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_ECHO_CHARS,
        description="enrol (instead of last_seconds), false_alarm: take the audio of this event: the ring's for the "
        "detection's last event on the stream, else its clip file's (refused when neither holds it); the web page's "
        "per-event buttons",
    )
    seconds: float | None = Field(
        None,
        gt=0.0,
        le=MAX_REBASELINE_SECONDS,
        allow_inf_nan=False,
        description="rebaseline: seconds of the stream's coming audio (normal operation) to learn the bank from",
    )


class ControlResult(BaseModel):
    """The answer on `{prefix}/control/result` to one request."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: str | None = Field(description="the request's, when it had a usable one")
    ok: bool = Field(description="true: applied (and persisted); false: nothing changed")
    action: str | None = Field(description="the request's action, when it had a usable one")
    detection: str | None = Field(description="the request's detection, when it had a usable one")
    errors: list[str] = Field(description="one line per problem: key path, value and reason; empty when ok")
    example: str | None = Field(
        None, description="enrol, false_alarm: the example file added; forget_example: the one removed; else absent"
    )

    @classmethod
    def success(cls, request: ControlRequest, example: str | None = None) -> ControlResult:
        return cls(
            request_id=request.request_id,
            ok=True,
            action=request.action,
            detection=request.detection,
            errors=[],
            example=example,
        )

    @classmethod
    def failure(cls, request: ControlRequest, problems: list[str]) -> ControlResult:
        errors = [_shorten(p, MAX_PROBLEM_CHARS) for p in problems] or ["refused (no reason given)"]
        return cls(
            request_id=request.request_id, ok=False, action=request.action, detection=request.detection, errors=errors
        )

    def to_json(self) -> bytes:
        """`example` only when there is one: the other actions' results are as they always were."""
        return self.model_dump_json(exclude={"example"} if self.example is None else None).encode()


class ControlChannel(Protocol):
    """Where control requests come from and their results go (MQTT today: `clapd.daemon.mqtt.control`).

    The channel parses and refuses malformed requests itself; valid ones reach `handler`, which runs in the
    channel's own thread and must only enqueue: the daemon's main thread applies them, one at a time.
    """

    def listen(self, handler: Callable[[ControlRequest], None]) -> None: ...

    def answer(self, result: ControlResult) -> None: ...


# The fields of a detection, each optional: an update names only those it changes (read with `exclude_unset`).
# Its config is DetectionConfig's own, so it refuses what the config file refuses (unknown keys, infinity, NaN).
DetectionChanges = create_model(
    "DetectionChanges",
    __config__=ConfigDict(**DetectionConfig.model_config),
    **{
        name: (info.annotation, FieldInfo.merge_field_infos(info, default=None, default_factory=None))
        for name, info in DetectionConfig.model_fields.items()
    },
)


def parse_request(payload: bytes, *, retained: bool = False) -> ControlRequest | ControlResult:
    """The request in an MQTT payload, or a refusal listing every problem; never raises.

    `retained`: the broker replayed a retained message on (re)subscription; refused, so it is never applied twice.
    """
    if len(payload) > MAX_CONTROL_PAYLOAD_BYTES:
        return _refusal(None, [f"(payload): {len(payload)} bytes, more than {MAX_CONTROL_PAYLOAD_BYTES}"])
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return _refusal(None, [f"(payload): not a JSON document: {_shorten(str(e), MAX_ECHO_CHARS)}"])
    if not isinstance(data, dict):
        return _refusal(None, [f"(payload): must be a JSON object, not {type(data).__name__}"])
    if retained:
        return _refusal(data, ["(message): a retained request is refused when replayed; publish with retain off"])
    try:
        request = ControlRequest.model_validate(data)
    except ValidationError as e:
        return _refusal(data, [describe_error(error) for error in e.errors()])
    problems = _config_problems(request)
    return ControlResult.failure(request, problems) if problems else request


def take_request(
    payload: bytes,
    retained: bool,
    handler: Callable[[ControlRequest], None] | None,
    answer: Callable[[ControlResult], None],
) -> None:
    """Hand a valid request to `handler`; `answer` anything else at once, and a request the handler refuses."""
    outcome = parse_request(payload, retained=retained)
    if isinstance(outcome, ControlRequest) and handler is not None:
        logger.info("MQTT control: %s %s (request %r)", outcome.action, outcome.detection, outcome.request_id)
        try:
            handler(outcome)
            return
        except Exception as e:
            logger.exception("MQTT control: the daemon did not take the request")
            outcome = ControlResult.failure(outcome, [f"(daemon): cannot take the request: {e}"])
    if isinstance(outcome, ControlRequest):
        outcome = ControlResult.failure(outcome, ["(daemon): not accepting control requests yet"])
    logger.warning("MQTT control: refused a request: %s", "; ".join(outcome.errors))
    answer(outcome)


# The fields beyond request_id, action, detection and config that each action takes, and those it needs.
_ACTION_FIELDS = {
    "enrol": ("stream", "last_seconds", "negative", "event_id"),
    "false_alarm": ("stream", "event_id"),
    "forget_example": ("file",),
    "rebaseline": ("stream", "seconds"),
}
_NEEDED_FIELDS = {
    "enrol": ("stream", "last_seconds"),
    "forget_example": ("file",),
    "rebaseline": ("stream", "seconds"),
}


def _field_problems(request: ControlRequest) -> list[str]:
    """Fields given to an action that takes none of them, and fields an action needs but was not given."""
    takes = _ACTION_FIELDS.get(request.action, ())
    given = request.model_fields_set & {*ControlRequest.model_fields} - {"request_id", "action", "config"}
    takes = (*takes, "detection") if request.action != "rebaseline" else takes
    problems = [f"{name}: {request.action} takes no {name}" for name in sorted(given - set(takes))]
    if request.action == "rebaseline" and request.config is not None:
        problems.append("config: rebaseline takes no config")
    needed = (*_NEEDED_FIELDS.get(request.action, ()), *(("detection",) if request.action != "rebaseline" else ()))
    if request.action == "enrol" and request.event_id is not None:  # an event's audio instead of the newest
        needed = tuple(name for name in needed if name != "last_seconds")
        if request.last_seconds is not None:
            problems.append("last_seconds: enrol takes last_seconds or event_id, not both")
    if request.action in EXAMPLE_ACTIONS and request.config is not None:
        problems.append(f"config: {request.action} takes no config")
    return problems + [f"{name}: {request.action} needs {name}" for name in needed if getattr(request, name) is None]


def _config_problems(request: ControlRequest) -> list[str]:
    """The problems of `config` (and of the other fields) for the request's action, each under its key path."""
    problems = _field_problems(request)
    if problems or request.action in (*EXAMPLE_ACTIONS, "rebaseline"):
        return problems
    if request.action == "remove":
        return [] if request.config is None else ["config: remove takes no config"]
    if request.config is None:
        return [f"config: {request.action} needs a config (the detection's fields)"]
    if request.action == "update" and not request.config:
        return ["config = {}: update needs at least one field to change"]
    model = DetectionConfig if request.action == "set" else DetectionChanges
    try:
        model.model_validate(request.config)
    except ValidationError as e:
        return [_describe_under("config", error) for error in e.errors()]
    return []


def apply_request(
    detections: Mapping[str, DetectionConfig],
    request: ControlRequest,
    stream_names: Collection[str],
    max_detections: int | None = None,
) -> dict[str, DetectionConfig]:
    """The detections after `request`, validated as the config file's are; raises `ControlError` with every problem.

    `detections` is not changed. Removing an unknown detection, or the last one, is refused; so is an update of a
    detection that does not exist (use set to add one), and a set that would add one beyond `max_detections`
    (`mqtt.control.max_detections`; None: no limit). The example actions are `clapd.daemon.enrol`'s.
    """
    if request.action in EXAMPLE_ACTIONS:
        raise ControlError([f"action = {request.action!r}: applied by clapd.daemon.enrol.Enroller, not here"])
    name = request.detection
    if request.action == "remove":
        if name not in detections:
            raise ControlError([f"detection = {name!r}: no such detection (there are: {_names(detections)})"])
        if len(detections) == 1:
            raise ControlError([f"detection = {name!r}: the last detection cannot be removed"])
        return {n: d for n, d in detections.items() if n != name}
    if request.action == "update" and name not in detections:
        raise ControlError(
            [f"detection = {name!r}: no such detection to update (there are: {_names(detections)}); use set to add"]
        )
    if name not in detections and max_detections is not None and len(detections) >= max_detections:
        raise ControlError(
            [
                f"detection = {name!r}: {len(detections)} detections in force, the limit "
                f"(mqtt.control.max_detections = {max_detections}); remove one first, or raise the limit"
            ]
        )
    changed = _validated_detection(detections.get(name), request)
    unknown = sorted(set(changed.streams or []) - set(stream_names))
    if unknown:
        raise ControlError(
            [f"config.streams = {changed.streams!r}: detection {name!r} watches unknown streams {unknown}"]
        )
    return {**detections, name: changed}


def _validated_detection(current: DetectionConfig | None, request: ControlRequest) -> DetectionConfig:
    fields = dict(request.config or {})
    try:
        if request.action == "update" and current is not None:
            given = DetectionChanges.model_validate(fields).model_dump(exclude_unset=True)
            fields = {**current.model_dump(), **given}
        return DetectionConfig.model_validate(fields)
    except ValidationError as e:
        raise ControlError([_describe_under("config", error) for error in e.errors()]) from e


class ControlStore:
    """The detection changes made over MQTT, kept in the state directory (`CONTROL_FILE`) across restarts.

    It holds the difference from the config file: detections added or replaced (whole), and names removed. At
    start-up `merge` lays it over the config file's detections; a detection changed over MQTT therefore keeps its
    MQTT version even if the config file's entry is edited later (remove the file to go back to the config file).
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def save(self, detections: Mapping[str, DetectionConfig], base: Mapping[str, DetectionConfig]) -> None:
        """Remember how `detections` (now live) differ from `base` (the config file's); raises OSError."""
        changed = {n: d.model_dump(mode="json") for n, d in detections.items() if base.get(n) != d}
        removed = sorted(set(base) - set(detections))
        write_json_atomically(self.path, {"version": 1, "detections": changed, "removed": removed})

    def merge(
        self, config_detections: Mapping[str, DetectionConfig], stream_names: Collection[str] | None = None
    ) -> dict[str, DetectionConfig]:
        """The config file's detections with the saved changes laid over them; raises `ControlError` for a bad file.

        With `stream_names`, a saved detection watching a stream no longer configured is skipped (and logged); a
        removal that would leave no detection at all is ignored (and logged).
        """
        changed, removed = self._load()
        merged = {n: d for n, d in config_detections.items() if n not in removed}
        for name, detection in changed.items():
            unknown = [] if stream_names is None else sorted(set(detection.streams or []) - set(stream_names))
            if unknown:
                logger.warning("%s: %s watches streams no longer configured %s; skipped", self.path, name, unknown)
                continue
            merged[name] = detection
        if not merged:
            logger.warning("%s removes every detection; keeping the config file's", self.path)
            return dict(config_detections)
        return merged

    def _load(self) -> tuple[dict[str, DetectionConfig], set[str]]:
        try:
            value = read_json(self.path)
        except (OSError, ValueError) as e:
            raise ControlError([f"cannot read the saved MQTT changes ({e}); fix or remove it"], str(self.path)) from e
        if value is None:
            return {}, set()
        try:
            saved = _SavedChanges.model_validate(value)
        except ValidationError as e:
            problems = [describe_error(error) for error in e.errors()]
            raise ControlError([*problems, "fix or remove the file of saved MQTT changes"], str(self.path)) from e
        return saved.detections, set(saved.removed)


class _SavedChanges(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1]
    detections: dict[Name, DetectionConfig]
    removed: list[Name]


def _refusal(data: dict | None, problems: list[str]) -> ControlResult:
    """A refusal of a request too malformed to be a `ControlRequest`; echoes what it can of the request."""
    data = data or {}
    return ControlResult(
        request_id=_echo(data.get("request_id")),
        ok=False,
        action=_echo(data.get("action")),
        detection=_echo(data.get("detection")),
        errors=[_shorten(p, MAX_PROBLEM_CHARS) for p in problems],
    )


def _describe_under(prefix: str, error: Any) -> str:
    return describe_error({**error, "loc": (prefix, *error["loc"])})


def _echo(value: object) -> str | None:
    return _shorten(value, MAX_ECHO_CHARS) if isinstance(value, str) else None


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _names(detections: Mapping[str, object]) -> str:
    return ", ".join(sorted(detections)) or "none"
