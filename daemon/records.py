"""Records that pass between the daemon's stages (capture -> windows -> encoder -> matcher -> events -> publishers).

Times come from each stream's sample counter, never from the wall clock inside a stage: a window's position is
its first sample's index since the stream started; UTC times are derived once, from the stream's start time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True, slots=True)
class Window:
    """One stretch of one stream's audio, ready for the model."""

    stream: str
    start_sample: int  # index of the first sample since the stream started (model rate)
    end_sample: int  # one past the window's last real (unpadded) sample
    samples: np.ndarray  # float32 mono [window_samples] at the model's rate, repeat-padded if the window is short


@dataclass(frozen=True, slots=True)
class Scores:
    """One window's score per detection: the model's cosine scaled by the logit scale, margin applied."""

    stream: str
    start_sample: int
    end_sample: int  # one past the window's last real (unpadded) sample
    values: dict[str, float]  # detection name -> score
    # Set by the Runner when it hands the scores to the outputs (the Detector has no stream's level or rate):
    start_utc: str | None = None  # ISO 8601 of the window's first sample, from the stream's clock
    sample_rate: int | None = None  # Hz, to turn the offsets into seconds
    level_dbfs: float | None = None  # the stream's input level (RMS of its last second); None until measured


EventKind = Literal["start", "end"]


@dataclass(frozen=True, slots=True)
class DetectionEvent:
    """A detection starting or ending on a stream."""

    event_id: str  # the same id on a detection's start and end
    kind: EventKind
    stream: str
    detection: str
    start_sample: int  # stream offset of the event's first window
    end_sample: int | None  # stream offset of the end; None on "start"
    start_utc: str  # ISO 8601, derived from the stream's start time and the sample counter
    end_utc: str | None
    peak_score: float
    mean_score: float
    sample_rate: int  # to turn the offsets into seconds
    clip: str | None = None  # on "end": the path its audio clip will be written to (`clapd.daemon.clips`); else None
    clip_url: str | None = None  # on "end", with the web page on: where the page serves that clip
    description: str | None = None  # an anomaly event's best-matching configured description (`anomaly.descriptions`)


@dataclass(frozen=True, slots=True)
class StateChange:
    """A (stream, detection) pair's state: ON from an event's start to its end (retained on MQTT)."""

    stream: str
    detection: str
    on: bool


@dataclass(frozen=True, slots=True)
class LevelReading:
    """A stream's input level: the RMS of its last second of audio."""

    stream: str
    dbfs: float  # full scale 1.0; SILENCE_DBFS for digital silence


@dataclass(frozen=True, slots=True)
class AnomalyReading:
    """A stream's anomaly score for one window (`clapd.daemon.anomaly`): its normalised distance to the stream's
    bank of normal-operation embeddings, about 1 for typical normal operation."""

    stream: str
    start_sample: int
    end_sample: int  # one past the window's last real (unpadded) sample
    score: float  # this window's: mean k-NN cosine distance / the bank's reference distance
    peak: float  # the highest score since the last due reading, this one's included (what outputs publish)
    bank_size: int  # embeddings in the bank that scored it
    due: bool  # the stream's publishing interval has passed: outputs get this one (each stream's first is due)
    end_utc: str | None = None  # ISO 8601 of the window's end, set by the Runner when it hands the reading over


@dataclass(frozen=True, slots=True)
class WindowEmbedding:
    """One window the model embedded (the Detector hands these out: the model is never run twice on a window)."""

    stream: str
    start_sample: int
    end_sample: int  # one past the window's last real (unpadded) sample
    embedding: np.ndarray  # float32 [embedding size], unit length: the audio model's output
    level_dbfs: float  # the window's level over its real samples
    hidden: dict[str, float]  # scores of hidden detections (clip privacy prompts): never published


# What the inference thread hands to the outputs' thread, in order.
OutputRecord = DetectionEvent | StateChange | LevelReading | Scores | AnomalyReading
