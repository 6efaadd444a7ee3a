"""The daemon's configuration: YAML (safe_load only) validated by pydantic, every problem named by key path.

Each stage is given only its own section. Names of streams and detections become MQTT topic levels, so they are
restricted to characters that can never form a wildcard (`+`, `#`) or an extra level (`/`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from clapd.daemon.config.anomaly import AnomalyConfig, DriftConfig
from clapd.daemon.config.base import (
    EXAMPLE_MARGIN,
    MAX_EXAMPLES,
    MIN_DBFS,
    NAME_PATTERN,
    NEGATIVE_EXAMPLE_MARGIN,
    TOPIC_PREFIX_PATTERN,
    ConfigError,
    Name,
    Section,
)
from clapd.daemon.config.clips import ClipsConfig, DetectionClipsConfig
from clapd.daemon.config.detections import DetectionConfig, ExamplePath, LevelConfig
from clapd.daemon.config.history import HistoryConfig
from clapd.daemon.config.model import ModelConfig, TensorRTConfig, WindowConfig
from clapd.daemon.config.outputs import (
    ControlConfig,
    HomeAssistantConfig,
    LoggingConfig,
    MetricsConfig,
    MqttConfig,
    OutputsConfig,
    TlsConfig,
)
from clapd.daemon.config.streams import FileSource, MicSource, PipeSource, StreamConfig
from clapd.daemon.config.web import WebConfig

__all__ = [
    "EXAMPLE_MARGIN",
    "MAX_EXAMPLES",
    "MIN_DBFS",
    "NAME_PATTERN",
    "NEGATIVE_EXAMPLE_MARGIN",
    "TOPIC_PREFIX_PATTERN",
    "AnomalyConfig",
    "ClapdConfig",
    "ClipsConfig",
    "ConfigError",
    "ControlConfig",
    "DetectionClipsConfig",
    "DetectionConfig",
    "DriftConfig",
    "ExamplePath",
    "FileSource",
    "HistoryConfig",
    "HomeAssistantConfig",
    "LevelConfig",
    "LoggingConfig",
    "MetricsConfig",
    "MicSource",
    "ModelConfig",
    "MqttConfig",
    "Name",
    "OutputsConfig",
    "PipeSource",
    "Section",
    "StreamConfig",
    "TensorRTConfig",
    "TlsConfig",
    "WebConfig",
    "WindowConfig",
    "describe_error",
    "load_config",
    "parse_config",
]


class ClapdConfig(Section):
    """The whole file. Names of streams and detections become MQTT topic levels: letters, digits, `_` and `-`.
    Every number must be finite (`.inf` and `.nan` are refused) and within its bounds."""

    model: ModelConfig = Field(default_factory=ModelConfig, description="the model bundle and how to run it")
    windows: WindowConfig = Field(default_factory=WindowConfig, description="window length and hop, every stream")
    streams: dict[Name, StreamConfig] = Field(
        min_length=1, description="audio inputs by name; each has a `type`: mic, file or pipe"
    )
    detections: dict[Name, DetectionConfig] = Field(min_length=1, description="sounds to detect, by name")
    background_prompts: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=lambda: ["silence", "background noise", "an ordinary quiet room"],
        description="ordinary sounds every detection must beat, so a closed set never forces a label",
    )
    outputs: OutputsConfig = Field(default_factory=OutputsConfig, description="where events go")
    state_dir: Path = Field(
        Path("/var/lib/clapd"),
        description="directory for what survives restarts: the queue of unsent events, the prompt embedding cache, "
        "detection changes made over MQTT, the Home Assistant entities announced",
    )
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Prometheus metrics endpoint")
    clips: ClipsConfig = Field(
        default_factory=ClipsConfig, description="where event clips go (detections with a `clips` block get them)"
    )
    history: HistoryConfig = Field(
        default_factory=HistoryConfig, description="every window's embedding kept for `clapd search` (off by default)"
    )
    web: WebConfig = Field(
        default_factory=WebConfig, description="a local web page: live scores, events, clips, search (off by default)"
    )
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="log level and format")

    @property
    def takes_control_requests(self) -> bool:
        """A control channel is on (MQTT control, or the web page's buttons): detections may change at run time
        and enrolment may ask for a stream's recent audio."""
        mqtt = self.outputs.mqtt
        return (mqtt is not None and mqtt.control.enabled) or self.web.enabled

    @field_validator("streams", "detections", mode="before")
    @classmethod
    def _names_are_strings(cls, value: object) -> object:
        if isinstance(value, dict):
            return {str(k) if isinstance(k, int) else k: v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _detections_watch_known_streams(self) -> ClapdConfig:
        for name, detection in self.detections.items():
            unknown = sorted(set(detection.streams or []) - set(self.streams))
            if unknown:
                raise ValueError(f"detection {name!r} watches unknown streams {unknown}")
        return self

    @model_validator(mode="after")
    def _anomaly_events_are_not_detections(self) -> ClapdConfig:
        for name, stream in self.streams.items():
            if stream.anomaly is not None and stream.anomaly.event in self.detections:
                raise ValueError(f"streams.{name}.anomaly.event {stream.anomaly.event!r} is also a detection's name")
        return self


def load_config(path: Path) -> ClapdConfig:
    """Read and validate; raise `ConfigError` listing every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(str(path), [f"cannot read the file: {e.strerror or e}"]) from e
    except UnicodeDecodeError as e:
        raise ConfigError(str(path), [f"not UTF-8 text: {e}"]) from e
    try:
        data = yaml.safe_load(text)
    # ValueError: an integer of more than 4300 digits; RecursionError: nesting deeper than Python's stack.
    except (yaml.YAMLError, ValueError, RecursionError) as e:
        raise ConfigError(str(path), [f"not valid YAML: {e}"]) from e
    return parse_config(data, str(path))


def parse_config(data: object, source: str = "<config>") -> ClapdConfig:
    if not isinstance(data, dict):
        raise ConfigError(source, ["the top level must be a mapping"])
    try:
        return ClapdConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(source, [describe_error(error) for error in e.errors()]) from e


def describe_error(error: dict) -> str:
    """One pydantic error as a line: key path, the value given, the reason."""
    path = ".".join(str(part) for part in error["loc"]) or "(top level)"
    value = error.get("input")
    shown = "" if isinstance(value, dict) else f" = {_shown(value)}"
    return f"{path}{shown}: {error['msg']}"


def _shown(value: object) -> str:
    try:
        return repr(value)
    except (ValueError, RecursionError):  # an integer of more than 4300 digits, a list nested thousands deep
        return f"<{type(value).__name__} too long to show>"
