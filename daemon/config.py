"""The daemon's configuration: YAML (safe_load only) validated by pydantic, every problem named by key path.

Each stage is given only its own section. Names of streams and detections become MQTT topic levels, so they are
restricted to characters that can never form a wildcard (`+`, `#`) or an extra level (`/`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

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


MAX_CHANNEL = 63  # highest channel index (from 0): inputs have at most 64 channels
MAX_EVENT_SECONDS = 86_400.0  # a day: the longest minimum duration or cooldown of an event
MAX_INTERVAL_SECONDS = 3_600.0  # an hour: the longest back-off or publishing interval
MIN_RESTART_SECONDS = 0.1  # the shortest back-off: a command that dies at once restarts at most 10 times a second
MIN_LEVEL_INTERVAL_SECONDS = 1.0  # levels are measured once a second (`clapd.daemon.runner.LEVEL_SECONDS`)
MIN_DBFS = -120.0  # the quietest level a setting may name: digital silence (`clapd.daemon.streams.SILENCE_DBFS`)
EXAMPLE_MARGIN = 0.3  # cosine taken off audio examples' matches: see DetectionConfig.example_margin
MAX_EXAMPLES = 100  # example files or folders a detection may list (each folder holds at most as many files)


class Section(BaseModel):
    """A block of the configuration file: unknown keys are errors, values are frozen once loaded.

    Every number must be finite: `allow_inf_nan=False` refuses infinity and NaN (YAML's `.inf` and `.nan`, JSON's
    `Infinity`, `NaN` and `1e999`) in every float field of every section, and of every model built on a section's
    fields (the control channel's detection changes); bounds on each field keep finite values sane.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class TensorRTConfig(Section):
    """TensorRT provider settings (used only when `tensorrt` is among `model.providers` and available)."""

    fp16: bool = Field(
        False,
        description="let TensorRT pick fp16 kernels anywhere, the front end included, where the power spectrum "
        "can overflow fp16; the bundle's fp16 model already runs its encoder in fp16 with an fp32 front end",
    )
    engine_cache_dir: Path | None = Field(
        None,
        description="directory where built engines are kept and reused (a build takes minutes); "
        "default: none, build at every start",
    )
    max_batch: int = Field(
        16,
        ge=1,
        le=256,
        description="largest batch the engine is built for (one profile, 1..max_batch windows): "
        "larger batches are split, so TensorRT never rebuilds its engine while the daemon runs",
    )


class ModelConfig(Section):
    """Which model bundle to run, at which precision, on which execution providers."""

    bundle: Path | None = Field(
        None, description="bundle directory written by `clapd export`; default: the embedded demo bundle"
    )
    precision: Literal["auto", "fp32", "fp16", "int8"] = Field(
        "auto",
        description="audio model precision; auto: fp16 on a GPU provider, int8 on the CPU when the bundle has it, "
        "else fp32",
    )
    providers: list[Literal["tensorrt", "cuda", "cpu"]] = Field(
        default_factory=lambda: ["tensorrt", "cuda", "cpu"],
        min_length=1,
        description="ONNX Runtime execution providers in order of preference; unavailable ones are skipped",
    )
    tensorrt: TensorRTConfig = Field(default_factory=TensorRTConfig, description="TensorRT provider settings")
    cuda_tf32: bool = Field(
        False,
        description="let the CUDA provider use TF32 for fp32 math: faster fp32 on Ampere and newer, but it moves "
        "embeddings off the reference (cosine 0.999 on an H100); the fp16 model gains nothing from it",
    )
    threads: int = Field(2, ge=1, le=64, description="CPU threads one model call may use (intra-op threads)")


class WindowConfig(Section):
    """How each stream is cut into windows for the audio model; checked against the model's limits at load."""

    window_seconds: float = Field(
        10.0,
        ge=1.0,
        le=10.0,
        description="seconds of audio per model call; a window shorter than the model's input is repeat-padded; "
        "must lie within the bundle's window limits (its manifest's min_window_samples and window_samples)",
    )
    hop_seconds: float = Field(
        1.0, ge=0.1, le=10.0, description="seconds between the starts of two windows; at most window_seconds"
    )

    @model_validator(mode="after")
    def _hop_within_window(self) -> WindowConfig:
        if self.hop_seconds > self.window_seconds:
            raise ValueError("hop_seconds must not exceed window_seconds (audio would be skipped)")
        return self


def _min_level_dbfs() -> Any:
    """A stream's level gate, the same field in every source kind."""
    return Field(
        None,
        ge=MIN_DBFS,
        le=0.0,
        description="level gate in dBFS: a window quieter than this (RMS over the window) skips the model and scores "
        "0 for every detection of the stream, so events in progress end as on a sound gone quiet; counted as "
        '`gated` (metrics `clapd_windows_total{outcome="gated"}`, among the processed); default: none, every '
        "window goes to the model. `level` detections still measure gated windows",
    )


class MicSource(Section):
    """A PortAudio input device (`clapd devices` lists them), reopened with back-off when it goes away."""

    type: Literal["mic"] = Field(description="the source kind: `mic`")
    device: str | int | None = Field(
        None,
        description="PortAudio device name (case-insensitive substring) or index; default: the system's default input",
    )
    sample_rate: int | None = Field(
        None,
        ge=8000,
        le=384000,
        description="capture rate in Hz, resampled to the model's rate; default: the device's default rate",
    )
    channels: int | None = Field(None, ge=1, le=64, description="channels to open; default: the device's, at most 2")
    channel: int | None = Field(
        None,
        ge=0,
        le=MAX_CHANNEL,
        description="use this channel only (numbered from 0); default: average all channels (downmix)",
    )
    block_seconds: float = Field(
        0.05, ge=0.005, le=1.0, description="seconds of audio PortAudio delivers per capture callback"
    )
    min_level_dbfs: float | None = _min_level_dbfs()


class FileSource(Section):
    """A sound file (wav, flac, ogg: whatever libsndfile reads), played as if it were live or as fast as read."""

    type: Literal["file"] = Field(description="the source kind: `file`")
    path: Path = Field(description="the sound file; any sample rate and channel count, resampled to the model's")
    realtime: bool = Field(
        True, description="pace the file as if it were live; false: as fast as the model takes it, losing nothing"
    )
    loop: bool = Field(False, description="start again from the beginning at the end; false: the stream ends")
    channel: int | None = Field(
        None,
        ge=0,
        le=MAX_CHANNEL,
        description="use this channel only (numbered from 0); default: average all channels (downmix)",
    )
    min_level_dbfs: float | None = _min_level_dbfs()


class PipeSource(Section):
    """A command writing raw interleaved PCM to its stdout (e.g. ffmpeg reading an RTSP camera), restarted with
    back-off when it dies; its stderr is logged."""

    type: Literal["pipe"] = Field(description="the source kind: `pipe`")
    command: list[str] = Field(
        min_length=1, description="argv of a command writing raw PCM to stdout (run directly, not by a shell)"
    )
    sample_rate: int = Field(
        ge=8000, le=384000, description="rate of the command's PCM in Hz, resampled to the model's rate"
    )
    channels: int = Field(1, ge=1, le=64, description="interleaved channels in the command's PCM")
    sample_format: Literal["s16le", "f32le"] = Field(
        "s16le", description="sample encoding: signed 16-bit or 32-bit float, little-endian"
    )
    channel: int | None = Field(
        None,
        ge=0,
        le=MAX_CHANNEL,
        description="use this channel only (numbered from 0); default: average all channels (downmix)",
    )
    restart_max_seconds: float = Field(
        60.0,
        ge=MIN_RESTART_SECONDS,
        le=MAX_INTERVAL_SECONDS,
        description="longest wait in seconds between restarts of a dead command (back-off from 1 s, doubling); "
        "at least 0.1, so a command that dies at once is restarted at most 10 times a second",
    )
    min_level_dbfs: float | None = _min_level_dbfs()


StreamConfig = Annotated[MicSource | FileSource | PipeSource, Field(discriminator="type")]


def _checked_example(value: str) -> str:
    """An example file or folder that can be used: readable audio, long enough, not silent (reason otherwise)."""
    from clapd.daemon.examples import check_example_entry  # soundfile: read only where examples are given

    check_example_entry(Path(value))
    return value


# An audio file, or a folder of them, on the daemon's machine; checked when the config (or a control request) is read.
ExamplePath = Annotated[str, Field(min_length=1), AfterValidator(_checked_example)]


class LevelConfig(Section):
    """A level detection: any sound loud enough for long enough, measured without the model.

    Each window's new audio (its newest hop) is measured in 100 ms blocks (RMS); the score is 1 when the level has
    stayed at or above `above_dbfs`, without a break, for `min_seconds`, else 0, so the detection's thresholds do
    not matter and it is not smoothed. Its events go through the same lifecycle as a model detection's (minimum
    duration, cooldown, states, outputs), at the hop's resolution, dated from the start of the loud stretch.
    """

    above_dbfs: float = Field(
        ge=MIN_DBFS, le=0.0, description="short-time level in dBFS (RMS over 100 ms) that counts as loud"
    )
    min_seconds: float = Field(
        0.0,
        ge=0.0,
        le=MAX_INTERVAL_SECONDS,
        description="seconds the level must stay at or above above_dbfs without a break; 0: one loud 100 ms block",
    )


class DetectionConfig(Section):
    """One sound to detect, described by text prompts, by audio examples or both, or (`level`) by loudness alone;
    and the score thresholds and timing of its events.

    A window's score is the probability, at the model's logit scale, that the window sounds like this detection
    rather than like its negatives or the shared background prompts: a softmax over the detection's logit, each
    negative prompt's and negative example's, and each background prompt's. The detection's logit is the larger of
    its text logit (the logit scale times the window's cosine with the mean of its prompts' embeddings) and its
    example logit (the logit scale times the cosine with the mean of its examples' embeddings, less
    `example_margin`); a negative example's logit is its cosine, less `example_margin`, times the logit scale.

    An example file is embedded as the daemon hears audio: resampled to the model's rate, cut into windows of
    `windows.window_seconds` every `windows.hop_seconds` (a file shorter than a window is one repeat-padded window),
    and the windows within 10 dB of its loudest (those that hold the sound) averaged into one embedding, cached in
    `state_dir` by the audio model's and the file's sha256. The text model is not needed for examples.
    """

    prompts: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list,
        description="texts describing the sound, their embeddings averaged into one; a detection gives prompts, "
        "examples or both (neither with `level`)",
    )
    negative_prompts: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list,
        description="similar sounds this detection must beat, each competing on its own (in addition to "
        "background_prompts)",
    )
    examples: list[ExamplePath] = Field(
        default_factory=list,
        max_length=MAX_EXAMPLES,
        description="recordings of the sound: audio files (whatever libsndfile reads: wav, flac, ogg, mp3...) or "
        "folders of them (their audio files, not subfolders), on the daemon's machine (a relative path is from "
        "its working directory); each 0.1 to 60 s long and not silent (louder than -60 dBFS somewhere); their "
        "embeddings are averaged into one",
    )
    negative_examples: list[ExamplePath] = Field(
        default_factory=list,
        max_length=MAX_EXAMPLES,
        description="recordings of sounds that must not fire this detection (the microwave beep that sounds like "
        "the smoke alarm), each competing on its own like a negative prompt; files or folders as for examples",
    )
    example_margin: float = Field(
        EXAMPLE_MARGIN,
        ge=0.0,
        le=1.0,
        description="subtracted from a window's cosine with the examples (and each negative example) before it "
        "competes with text at the logit scale: a window matches a recording of the same sound far more closely "
        "(cosine near 1) than any text describes it; 0.3 suits the demo model, whose prompts match their sounds "
        "at a cosine near 0.7; a model whose prompts match less closely wants a larger margin",
    )
    level: LevelConfig | None = Field(
        None,
        description="make this a level detection (no model, no prompts or examples): it fires when the stream's "
        "level stays above a threshold; default: none, a model detection",
    )
    threshold_on: float = Field(0.5, gt=0.0, lt=1.0, description="smoothed score (0 to 1) that starts an event")
    threshold_off: float = Field(
        0.35, ge=0.0, lt=1.0, description="smoothed score (0 to 1) below which an event ends; at most threshold_on"
    )
    smoothing_windows: int = Field(
        3, ge=1, le=100, description="moving average of the score over this many windows (a level detection: none)"
    )
    min_duration_seconds: float = Field(
        0.0, ge=0.0, le=MAX_EVENT_SECONDS, description="events shorter than this many seconds are dropped; 0: keep all"
    )
    cooldown_seconds: float = Field(
        0.0,
        ge=0.0,
        le=MAX_EVENT_SECONDS,
        description="seconds after an event ends before a new one may start on the same stream",
    )
    streams: list[Name] | None = Field(None, description="names of the streams to watch; default: all")
    name: str | None = Field(
        None,
        max_length=100,
        pattern=r"^\S(?:.*\S)?$",
        description="the name Home Assistant shows (one line, no leading or trailing spaces); default: the "
        "detection's key made readable (`dog_barking` -> `Dog barking`)",
    )

    @model_validator(mode="after")
    def _hysteresis(self) -> DetectionConfig:
        if self.threshold_off > self.threshold_on:
            raise ValueError("threshold_off must not exceed threshold_on")
        return self

    @model_validator(mode="after")
    def _something_to_detect(self) -> DetectionConfig:
        if self.level is not None:
            given = [k for k in ("prompts", "negative_prompts", "examples", "negative_examples") if getattr(self, k)]
            if given:
                raise ValueError(f"a level detection measures loudness without the model: remove {', '.join(given)}")
        elif not self.prompts and not self.examples:
            raise ValueError("give prompts (text), examples (audio files) or both, or a level block")
        return self


class TlsConfig(Section):
    """TLS to the broker; an empty mapping (`tls: {}`) turns it on with the system's CA bundle."""

    ca_file: Path | None = Field(None, description="PEM file of CA certificates to trust; default: the system's")
    cert_file: Path | None = Field(
        None, description="PEM client certificate, for brokers that authenticate clients by certificate"
    )
    key_file: Path | None = Field(None, description="PEM private key of cert_file; default: inside cert_file")
    insecure: bool = Field(False, description="skip verifying the broker's hostname (testing only)")


class HomeAssistantConfig(Section):
    """Home Assistant MQTT discovery: an event and a binary sensor per stream and detection, created for you."""

    enabled: bool = Field(False, description="publish MQTT discovery so Home Assistant creates the entities")
    discovery_prefix: str = Field(
        "homeassistant",
        pattern=TOPIC_PREFIX_PATTERN,
        description="Home Assistant's discovery topic prefix (its MQTT integration setting of the same name)",
    )
    status_topic: str = Field(
        "homeassistant/status",
        pattern=TOPIC_PREFIX_PATTERN,
        description="Home Assistant's birth topic: the entities are announced again when it says 'online'",
    )
    node_id: Name | None = Field(
        None,
        description="the device's id in Home Assistant, in its discovery topics and its entities' unique ids (a new "
        "id makes new entities), and its name (`clapd ID`); default: the MQTT client id, and the name from the node id",
    )


class ControlConfig(Section):
    """Changing detections at run time over MQTT (add, update, remove); changes survive restarts."""

    enabled: bool = Field(
        False, description="accept detection changes on `{prefix}/control/set` (needs an authenticated broker)"
    )
    max_detections: int = Field(
        200,
        ge=1,
        le=10_000,
        description="most detections in force that a control request may lead to: a `set` adding a detection "
        "beyond it is refused (updates and removals are always taken); the config file itself is not limited",
    )


class MqttConfig(Section):
    """Events, states, levels and availability to an MQTT broker; events wait on disk while it is away."""

    host: str = Field(min_length=1, description="the broker's host name or IP address")
    port: int = Field(1883, ge=1, le=65535, description="the broker's TCP port (usually 8883 with TLS)")
    protocol: Literal["3.1.1", "5"] = Field("5", description="MQTT protocol version")
    qos: Literal[0, 1, 2] = Field(1, description="MQTT quality of service of events, states and discovery")
    topic_prefix: str | None = Field(
        None,
        pattern=TOPIC_PREFIX_PATTERN,
        description="first level(s) of every topic clapd publishes, used as given; default: `clapd/` and the node "
        "id (client_id if set, else the host name with characters other than letters, digits, `_` and `-` made "
        "`_`), so that daemons sharing a broker never share a topic",
    )
    client_id: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_-]{1,64}$", description="MQTT client id; default: `clapd-` and the host name"
    )
    username: str | None = Field(None, description="user name to log in with; default: connect anonymously")
    password_file: Path | None = Field(None, description="file holding the password (e.g. a systemd credential)")
    password_env: str | None = Field(None, description="environment variable holding the password")
    tls: TlsConfig | None = Field(None, description="TLS settings; default: none, a plain TCP connection")
    keepalive_seconds: int = Field(
        60, ge=5, le=3600, description="seconds between keep-alive pings; the broker drops a silent client after 1.5x"
    )
    queue_max_events: int = Field(10000, ge=1, le=1_000_000, description="events kept on disk while the broker is away")
    level_interval_seconds: float = Field(
        5.0,
        ge=0.0,
        le=MAX_INTERVAL_SECONDS,
        description="publish each stream's input level (dBFS) this often; 0: never; else at least 1 (levels are "
        "measured once a second)",
    )
    home_assistant: HomeAssistantConfig = Field(
        default_factory=HomeAssistantConfig, description="Home Assistant MQTT discovery"
    )
    control: ControlConfig = Field(default_factory=ControlConfig, description="detection changes over MQTT")

    @field_validator("level_interval_seconds")
    @classmethod
    def _level_interval_never_or_measured(cls, value: float) -> float:
        if 0 < value < MIN_LEVEL_INTERVAL_SECONDS:
            raise ValueError(
                f"must be 0 (never) or at least {MIN_LEVEL_INTERVAL_SECONDS} (levels are measured once a second)"
            )
        return value

    @model_validator(mode="after")
    def _one_password_source(self) -> MqttConfig:
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("give password_file or password_env, not both")
        if self.control.enabled and (self.username is None or (self.password_file or self.password_env) is None):
            raise ValueError("control.enabled needs an authenticated broker: set username and a password source")
        return self


class OutputsConfig(Section):
    """Where events go."""

    mqtt: MqttConfig | None = Field(None, description="MQTT broker settings; default: none, no MQTT")
    stdout: bool | None = Field(None, description="JSON lines on stdout; default: on when no broker is configured")
    stdout_scores: bool = Field(
        False,
        description="with the stdout output on, also write every window's score per detection as a JSON line "
        '(`"kind": "scores"`), as `clapd classify --json` gives them for a recording',
    )


class MetricsConfig(Section):
    """A Prometheus metrics endpoint over HTTP."""

    enabled: bool = Field(False, description="serve Prometheus metrics over HTTP")
    host: str = Field("127.0.0.1", min_length=1, description="address to listen on; 0.0.0.0 for every interface")
    port: int = Field(9847, ge=0, le=65535, description="TCP port to listen on; 0: any free port (logged)")


class LoggingConfig(Section):
    """The daemon's log (stderr, or the journal under systemd)."""

    level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="least severe messages logged (`-v` on the command line lowers it to info)"
    )
    format: Literal["text", "json"] = Field("text", description="json: one object per line, for log collectors")


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
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="log level and format")

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
