"""A stream's anomaly monitoring: how its normal operation is learnt, scored and followed as it drifts."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from clapd.daemon.config.base import MAX_EVENT_SECONDS, MAX_INTERVAL_SECONDS, Name, Section

MAX_LEARN_SECONDS = 86_400.0  # a day of audio: the longest learning period
MAX_BANK_SIZE = 100_000  # embeddings a bank may keep: 100k x 512 float32 is 200 MB


class DriftConfig(Section):
    """The optional slow update of the normal bank while the daemon runs: windows scored as clearly normal are added
    to the bank (replacing random members once it is full), at most `max_per_hour`, so gradual change of a healthy
    machine (wear-in, seasons) is followed while a developing fault, which scores above `admit_below`, is not learnt
    as normal. The reference distance the scores are divided by is kept; a re-baseline computes it anew."""

    enabled: bool = Field(False, description="add windows scored as normal to the bank while running")
    admit_below: float = Field(
        1.0,
        gt=0.0,
        le=100.0,
        description="only a window whose (unsmoothed) normalised score is below this is admitted; 1: at least as "
        "close to normal as a typical normal window",
    )
    max_per_hour: int = Field(
        60, ge=1, le=36_000, description="windows admitted per hour of the stream's audio at most (evenly spaced)"
    )


class AnomalyConfig(Section):
    """Anomaly monitoring of a stream against its learned normal operation (no prompts needed).

    A bank of the `feature` vectors of normal operation's windows (`clapd learn-normal`, or the first `learn_seconds` of
    audio) is kept in `state_dir` with what made them (the features' version, or the audio model's sha256). Each
    window's score is its mean distance to the `k` nearest bank members divided by the bank's own reference distance
    (the median of its members' leave-one-out distances): about 1 is typical of normal operation on any machine, 2 is
    twice as far from normal as normal is from itself. Scores become events like a detection's (smoothing, hysteresis,
    minimum duration, cooldown) under the name `event`: `start`/`end` on `PREFIX/STREAM/EVENT/event`, its state, its
    Home Assistant binary sensor; the score itself goes to `PREFIX/STREAM/anomaly` every `publish_interval_seconds`.
    Windows below the stream's level gate (`min_level_dbfs`) are not scored.
    """

    enabled: bool = Field(True, description="score this stream's windows against its normal bank")
    event: Name = Field(
        "anomaly",
        description="the name of the stream's anomaly events and state (like a detection's key; must not be one)",
    )
    feature: Literal["sound", "embedding"] = Field(
        "sound",
        description="what a window is compared by: `sound`, statistics of its log-mel spectrogram (each band's level "
        "percentiles and its rhythms of 1-50 Hz, whitened by the bank's own spread: far better on the project's "
        "machine-fault benchmark than the demo model's embedding, and independent of the model), or `embedding`, "
        "the audio model's embedding by cosine distance (for a model trained on machine sounds)",
    )
    k: int = Field(1, ge=1, le=50, description="nearest bank members whose mean distance is the raw score")
    max_bank_size: int = Field(
        2000,
        ge=10,
        le=MAX_BANK_SIZE,
        description="windows kept in the bank (a random subsample of what was learnt), bounding memory "
        "(max_bank_size x feature size x 4 bytes: 448 for sound features) and time per window",
    )
    threshold: float = Field(
        2.0,
        gt=0.0,
        le=1000.0,
        description="smoothed normalised score that starts an anomaly event (1: typical normal; with sound features, "
        "normal windows of the project's generated pump scored 1.0-1.25 against a bank of 40 s of it, its bearing, "
        "leak and whine faults 2.4-25; with the demo model's embeddings normal windows reach 2.5-4.5)",
    )
    threshold_off: float = Field(
        1.5,
        gt=0.0,
        le=1000.0,
        description="smoothed normalised score below which an anomaly event ends; at most `threshold`",
    )
    smoothing_windows: int = Field(3, ge=1, le=100, description="moving average of the score over this many windows")
    min_duration_seconds: float = Field(
        0.0, ge=0.0, le=MAX_EVENT_SECONDS, description="anomalies shorter than this many seconds are dropped"
    )
    cooldown_seconds: float = Field(
        0.0, ge=0.0, le=MAX_EVENT_SECONDS, description="seconds after an anomaly ends before a new one may start"
    )
    learn_seconds: float | None = Field(
        None,
        gt=0.0,
        le=MAX_LEARN_SECONDS,
        description="when no bank is stored for this stream (and model), learn one from the stream's first this many "
        "seconds of audio, which must be normal operation, then save it and start scoring; default: none, the "
        "daemon refuses to start without a bank (`clapd learn-normal`)",
    )
    descriptions: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list,
        max_length=50,
        description='texts of faults this machine may have ("grinding", "a squealing belt", "a hissing leak"): an '
        "anomaly event carries the one whose text embedding is closest to its highest-scoring window's embedding "
        "(`description` in its payload; the text model is loaded at start to embed them); default: none",
    )
    publish_interval_seconds: float = Field(
        5.0,
        ge=0.0,
        le=MAX_INTERVAL_SECONDS,
        description="seconds of audio between published scores on `PREFIX/STREAM/anomaly` (each the highest score "
        "since the last); 0: every window",
    )
    drift: DriftConfig = Field(default_factory=DriftConfig, description="the slow update of the bank (off by default)")

    @model_validator(mode="after")
    def _hysteresis(self) -> AnomalyConfig:
        if self.threshold_off > self.threshold:
            raise ValueError("threshold_off must not exceed threshold")
        return self


def anomaly_field() -> Any:
    """The same `anomaly` field in every source kind (see `AnomalyConfig`)."""
    return Field(None, description="anomaly monitoring against learned normal operation; default: none")
