"""The daemon's configuration: YAML (safe_load only) validated by pydantic, every problem named by key path.

Each stage is given only its own section. Names of streams and detections become MQTT topic levels, so they are
restricted to characters that can never form a wildcard (`+`, `#`) or an extra level (`/`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
# A topic prefix may have levels, but no wildcards, no empty levels, no leading '$' (broker-reserved topics).
TOPIC_PREFIX_PATTERN = r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$"


class ConfigError(Exception):
    """A configuration that cannot run; `problems` holds one line per problem: key path, value, reason."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}: " + "; ".join(problems))
        self.source = source
        self.problems = problems


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorRTConfig(Section):
    fp16: bool = Field(
        False,
        description="let TensorRT pick fp16 kernels anywhere, the front end included, where the power spectrum "
        "can overflow fp16; the bundle's fp16 model already runs its encoder in fp16 with an fp32 front end",
    )
    engine_cache_dir: Path | None = Field(None, description="where built engines are kept (minutes to build)")
    max_batch: int = Field(
        16,
        ge=1,
        le=256,
        description="largest batch the engine is built for (one profile, 1..max_batch windows): "
        "larger batches are split, so TensorRT never rebuilds its engine while the daemon runs",
    )


class ModelConfig(Section):
    bundle: Path | None = Field(None, description="bundle directory; default: the embedded demo bundle")
    precision: Literal["auto", "fp32", "fp16", "int8"] = Field(
        "auto", description="auto: fp16 on a GPU provider, int8 on the CPU when the bundle has it, else fp32"
    )
    providers: list[Literal["tensorrt", "cuda", "cpu"]] = Field(
        default_factory=lambda: ["tensorrt", "cuda", "cpu"], min_length=1, description="in order of preference"
    )
    tensorrt: TensorRTConfig = Field(default_factory=TensorRTConfig)
    cuda_tf32: bool = Field(
        False,
        description="let the CUDA provider use TF32 for fp32 math: faster fp32 on Ampere and newer, but it moves "
        "embeddings off the reference (cosine 0.999 on an H100); the fp16 model gains nothing from it",
    )
    threads: int = Field(2, ge=1, le=64, description="CPU threads for one model call")


class WindowConfig(Section):
    window_seconds: float = Field(10.0, ge=1.0, le=10.0, description="audio per model call; shorter repeat-pads")
    hop_seconds: float = Field(1.0, ge=0.1, le=10.0, description="time between the starts of two windows")

    @model_validator(mode="after")
    def _hop_within_window(self) -> WindowConfig:
        if self.hop_seconds > self.window_seconds:
            raise ValueError("hop_seconds must not exceed window_seconds (audio would be skipped)")
        return self


class MicSource(Section):
    type: Literal["mic"]
    device: str | int | None = Field(None, description="PortAudio device name (substring) or index; default input")
    sample_rate: int | None = Field(None, ge=8000, le=384000, description="capture rate; default: the device's")
    channels: int | None = Field(None, ge=1, le=64, description="channels to open; default: the device's, max 2")
    channel: int | None = Field(None, ge=0, description="use this channel only; default: average all (downmix)")
    block_seconds: float = Field(0.05, ge=0.005, le=1.0, description="capture block length")


class FileSource(Section):
    type: Literal["file"]
    path: Path
    realtime: bool = Field(True, description="pace the file as if it were live; false: as fast as possible")
    loop: bool = False
    channel: int | None = Field(None, ge=0)


class PipeSource(Section):
    type: Literal["pipe"]
    command: list[str] = Field(min_length=1, description="argv of a command writing raw PCM to stdout")
    sample_rate: int = Field(ge=8000, le=384000)
    channels: int = Field(1, ge=1, le=64)
    sample_format: Literal["s16le", "f32le"] = "s16le"
    channel: int | None = Field(None, ge=0)
    restart_max_seconds: float = Field(60.0, gt=0, description="back-off cap between restarts of a dead command")


StreamConfig = Annotated[MicSource | FileSource | PipeSource, Field(discriminator="type")]


class DetectionConfig(Section):
    prompts: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1, description="averaged embeddings")
    negative_prompts: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    threshold_on: float = Field(0.5, gt=0.0, lt=1.0, description="smoothed score that starts an event")
    threshold_off: float = Field(0.35, ge=0.0, lt=1.0, description="smoothed score below which it ends")
    smoothing_windows: int = Field(3, ge=1, le=100, description="moving average over this many windows")
    min_duration_seconds: float = Field(0.0, ge=0.0, description="shorter events are dropped")
    cooldown_seconds: float = Field(0.0, ge=0.0, description="quiet time after an end before a new start")
    streams: list[Name] | None = Field(None, description="streams to watch; default: all")

    @model_validator(mode="after")
    def _hysteresis(self) -> DetectionConfig:
        if self.threshold_off > self.threshold_on:
            raise ValueError("threshold_off must not exceed threshold_on")
        return self


class TlsConfig(Section):
    ca_file: Path | None = Field(None, description="CA bundle; default: the system's")
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = Field(False, description="skip hostname verification (testing only)")


class HomeAssistantConfig(Section):
    enabled: bool = Field(False, description="publish MQTT discovery so Home Assistant creates the entities")
    discovery_prefix: str = Field("homeassistant", pattern=TOPIC_PREFIX_PATTERN)
    status_topic: str = Field(
        "homeassistant/status", pattern=TOPIC_PREFIX_PATTERN, description="re-announce when it says 'online'"
    )
    node_id: Name | None = Field(None, description="the device's id in Home Assistant; default: the MQTT client id")


class ControlConfig(Section):
    enabled: bool = Field(
        False, description="accept detection changes on {prefix}/control/set (needs an authenticated broker)"
    )


class MqttConfig(Section):
    host: str = Field(min_length=1)
    port: int = Field(1883, ge=1, le=65535)
    protocol: Literal["3.1.1", "5"] = "5"
    qos: Literal[0, 1, 2] = 1
    topic_prefix: str = Field("clapd", pattern=TOPIC_PREFIX_PATTERN)
    client_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    username: str | None = None
    password_file: Path | None = Field(None, description="file holding the password (e.g. a systemd credential)")
    password_env: str | None = Field(None, description="environment variable holding the password")
    tls: TlsConfig | None = None
    keepalive_seconds: int = Field(60, ge=5, le=3600)
    queue_max_events: int = Field(10000, ge=1, description="events kept on disk while the broker is away")
    level_interval_seconds: float = Field(
        5.0, ge=0.0, description="publish each stream's input level (dBFS) this often; 0: never"
    )
    home_assistant: HomeAssistantConfig = Field(default_factory=HomeAssistantConfig)
    control: ControlConfig = Field(default_factory=ControlConfig)

    @model_validator(mode="after")
    def _one_password_source(self) -> MqttConfig:
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("give password_file or password_env, not both")
        if self.control.enabled and (self.username is None or (self.password_file or self.password_env) is None):
            raise ValueError("control.enabled needs an authenticated broker: set username and a password source")
        return self


class OutputsConfig(Section):
    mqtt: MqttConfig | None = None
    stdout: bool | None = Field(None, description="JSON lines on stdout; default: on when no broker is configured")


class MetricsConfig(Section):
    enabled: bool = Field(False, description="serve Prometheus metrics over HTTP")
    host: str = Field("127.0.0.1", min_length=1, description="address to listen on; 0.0.0.0 for every interface")
    port: int = Field(9847, ge=0, le=65535, description="0: any free port (logged)")


class LoggingConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = Field("text", description="json: one object per line, for log collectors")


class ClapdConfig(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    windows: WindowConfig = Field(default_factory=WindowConfig)
    streams: dict[Name, StreamConfig] = Field(min_length=1)
    detections: dict[Name, DetectionConfig] = Field(min_length=1)
    background_prompts: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=lambda: ["silence", "background noise", "an ordinary quiet room"],
        description="ordinary sounds every detection must beat, so a closed set never forces a label",
    )
    outputs: OutputsConfig = Field(default_factory=OutputsConfig)
    state_dir: Path = Field(Path("/var/lib/clapd"), description="event queue and prompt cache")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

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
        raise ConfigError(source, [_describe(error) for error in e.errors()]) from e


def _describe(error: dict) -> str:
    path = ".".join(str(part) for part in error["loc"]) or "(top level)"
    value = error.get("input")
    shown = "" if isinstance(value, dict) else f" = {_shown(value)}"
    return f"{path}{shown}: {error['msg']}"


def _shown(value: object) -> str:
    try:
        return repr(value)
    except (ValueError, RecursionError):  # an integer of more than 4300 digits, a list nested thousands deep
        return f"<{type(value).__name__} too long to show>"
