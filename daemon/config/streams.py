"""Audio inputs: a microphone, a file, a command writing PCM."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from clapd.daemon.config.anomaly import AnomalyConfig, anomaly_field
from clapd.daemon.config.base import MAX_CHANNEL, MAX_INTERVAL_SECONDS, MIN_DBFS, MIN_RESTART_SECONDS, Section


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
    anomaly: AnomalyConfig | None = anomaly_field()


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
    anomaly: AnomalyConfig | None = anomaly_field()


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
    anomaly: AnomalyConfig | None = anomaly_field()


StreamConfig = Annotated[MicSource | FileSource | PipeSource, Field(discriminator="type")]
