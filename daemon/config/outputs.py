"""Where events go (MQTT, stdout), the metrics endpoint and the log."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from clapd.daemon.config.base import (
    MAX_INTERVAL_SECONDS,
    MIN_LEVEL_INTERVAL_SECONDS,
    TOPIC_PREFIX_PATTERN,
    Name,
    Section,
)


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
    scores_interval_seconds: float = Field(
        0.0,
        ge=0.0,
        le=MAX_INTERVAL_SECONDS,
        description="publish a window's top scores per stream on `{prefix}/{stream}/scores` at most this often (by "
        "the stream's audio time), QoS 0, not retained, dropped while the broker is away; 0: never. Off by default: "
        "it is for tuning and dashboards, and at 1 s it is ~28 MB a day per stream (top 3) that every subscriber to "
        "`{prefix}/#` receives, a cost on metered links; 1 suits a dashboard, the hop shows every window",
    )
    state_refresh_seconds: float = Field(
        60.0,
        ge=0.0,
        le=MAX_INTERVAL_SECONDS,
        description="publish each detection's retained state again this often while connected, so a broker "
        "downstream that was left with an older copy (a bridge reconnecting, a broker restarted without "
        "persistence) has the current one again within this time; 0: never",
    )
    scores_top_k: int = Field(
        3, ge=1, le=100, description="detections in each scores message: the window's highest scores, highest first"
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
