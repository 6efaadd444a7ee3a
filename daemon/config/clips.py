"""Audio clips of events: per detection, which events get a clip and how long; top level, where clips go, their
format, how long they are kept, and the privacy prompts that keep a clip from being kept."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from clapd.daemon.config.base import Section

MAX_PRE_ROLL_SECONDS = 30.0  # the ring of every stream holds this much more audio when a detection asks for it
MAX_POST_ROLL_SECONDS = 60.0
MAX_CLIP_SECONDS = 600.0  # ten minutes: a clip's buffer is allocated when its event starts (~110 MB at 48 kHz)


class DetectionClipsConfig(Section):
    """A detection's clips: each of its events is written as audio, from `pre_roll_seconds` before its start to
    `post_roll_seconds` after its end, at most `max_seconds` long. `clips: {}` turns them on with the defaults."""

    pre_roll_seconds: float = Field(
        5.0,
        ge=0.0,
        le=MAX_PRE_ROLL_SECONDS,
        description="seconds of audio before the event's start, taken from the stream's ring buffer (sized for the "
        "largest pre-roll at start; a reload that raises it gets at most what the ring holds until a restart)",
    )
    post_roll_seconds: float = Field(
        5.0,
        ge=0.0,
        le=MAX_POST_ROLL_SECONDS,
        description="seconds of audio after the event's end; the clip's file appears this long after the end event",
    )
    max_seconds: float = Field(
        60.0,
        ge=1.0,
        le=MAX_CLIP_SECONDS,
        description="the longest clip: a longer event's clip is its first max_seconds from the pre-roll on",
    )


class ClipsConfig(Section):
    """Where clips go and how long they are kept (only detections with a `clips` block get clips).

    A clip is copied out of the stream's ring buffer by the inference thread (a memory copy) and encoded and written
    by a clip-writer thread through a bounded queue: writing never holds up inference. A full queue, a full disk or
    an unwritable folder drops the clip and counts it; the event is published all the same. Its file is named
    `{stream}_{detection}_{UTC start, 20260101T031200.000Z}_{event id}.{flac|opus}` and its path is in the event's
    `end` payload (`clip`); the file appears once the post-roll has been heard, `post_roll_seconds` after the end.
    """

    directory: Path | None = Field(
        None, description="folder for clips (made private if created); default: `clips` in state_dir"
    )
    format: Literal["flac", "opus"] = Field(
        "flac", description="flac: lossless, ~50-60% of 16-bit PCM; opus: lossy, ~10x smaller (48 kHz models only)"
    )
    max_age_days: float | None = Field(
        30.0, gt=0.0, le=3650.0, description="clips older than this are deleted, oldest first; null: kept whatever age"
    )
    max_total_mb: float | None = Field(
        1000.0,
        gt=0.0,
        le=10_000_000.0,
        description="when the clips together exceed this many MB (10^6 bytes) the oldest are deleted; null: no limit",
    )
    queue_size: int = Field(
        16, ge=1, le=1000, description="clips waiting to be written; a clip beyond this is dropped and counted"
    )
    privacy_prompts: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list,
        description="texts describing sounds no clip may hold (`people talking`): scored on every window like a "
        "hidden detection, never published; a clip any of whose windows scores above privacy_threshold is not kept "
        "(counted), its event is published without a clip",
    )
    privacy_threshold: float = Field(
        0.5,
        gt=0.0,
        lt=1.0,
        description="a window's privacy score (0 to 1, against the background prompts as a detection's is) above "
        "which its clip is not kept",
    )
