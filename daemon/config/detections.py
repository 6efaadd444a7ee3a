"""What to detect: text prompts, audio examples or loudness, and the timing of events."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, PlainValidator, model_validator
from pydantic_core import PydanticCustomError

from clapd.daemon.config.base import (
    EXAMPLE_MARGIN,
    MAX_EVENT_SECONDS,
    MAX_EXAMPLES,
    MAX_INTERVAL_SECONDS,
    MIN_DBFS,
    NEGATIVE_EXAMPLE_MARGIN,
    Name,
    Section,
)
from clapd.daemon.config.clips import DetectionClipsConfig


def _checked_example(value: str) -> str:
    """An example file or folder that can be used: readable audio, long enough, not silent (reason otherwise)."""
    from clapd.daemon.examples import check_example_entry  # soundfile: read only where examples are given

    check_example_entry(Path(value))
    return value


# An audio file, or a folder of them, on the daemon's machine; checked when the config (or a control request) is read.
ExamplePath = Annotated[str, Field(min_length=1), AfterValidator(_checked_example)]


def _threshold_or_auto(value: object) -> float | Literal["auto"]:
    """A score strictly between 0 and 1, or `auto`; one check, so an error names the key itself, not a union member."""
    if value == "auto":
        return "auto"
    if isinstance(value, float) and not math.isfinite(value):  # worded as every other number's refusal
        raise PydanticCustomError("finite_number", "Input should be a finite number")
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value < 1.0:
        raise PydanticCustomError("threshold", "Input should be a number greater than 0 and less than 1, or auto")
    return float(value)


ThresholdOn = Annotated[float | Literal["auto"], PlainValidator(_threshold_or_auto)]


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
    `example_margin`); a negative example's logit is its cosine, less `negative_example_margin`, times the logit
    scale.

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
    example_margin: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="subtracted from a window's cosine with the examples before it competes with text at the "
        "logit scale: a window matches a recording of the same sound far more closely (cosine near 1) than any "
        "text describes it; the larger, the fewer other sounds the examples fire on and the more of their own "
        "they miss; default: the bundle's own margin (its manifest's `example_margin`, measured when it was "
        f"built: how much closer its recordings come to each other than to their captions), else {EXAMPLE_MARGIN}",
    )
    negative_example_margin: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="subtracted from a window's cosine with each negative example before it competes: the smaller, "
        "the more a negative example takes away, its own sound first, then sounds like it (and, when they sound "
        "alike to the model, this detection's own); default: the bundle's own margin, as for example_margin, "
        f"else {NEGATIVE_EXAMPLE_MARGIN}",
    )
    level: LevelConfig | None = Field(
        None,
        description="make this a level detection (no model, no prompts or examples): it fires when the stream's "
        "level stays above a threshold; default: none, a model detection",
    )
    threshold_on: ThresholdOn = Field(
        0.5,
        description="smoothed score (0 to 1) that starts an event; `auto`: the threshold `clapd calibrate` chose for "
        "this detection from the room's ambient sound (stored in `state_dir`), so that it would start at most "
        "false_alarms_per_day events on audio like that; a detection changed since its calibration must be "
        "calibrated again. With auto, threshold_off is lowered to 0.7 x the chosen threshold when above it",
    )
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
    clips: DetectionClipsConfig | None = Field(
        None,
        description="write each event's audio, with pre- and post-roll, to a file (top-level `clips`); default: none",
    )
    name: str | None = Field(
        None,
        max_length=100,
        pattern=r"^\S(?:.*\S)?$",
        description="the name Home Assistant shows (one line, no leading or trailing spaces); default: the "
        "detection's key made readable (`dog_barking` -> `Dog barking`)",
    )

    false_alarms_per_day: float = Field(
        1.0,
        gt=0.0,
        le=10_000.0,
        description="events a day that `clapd calibrate` lets this detection start on the room's ambient sound when it "
        "chooses threshold_on (used with `threshold_on: auto`)",
    )

    @model_validator(mode="after")
    def _hysteresis(self) -> DetectionConfig:
        if self.threshold_on != "auto" and self.threshold_off > self.threshold_on:
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
