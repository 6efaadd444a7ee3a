"""Event clips: each event's audio, with pre-roll from before its start and post-roll after its end, as a file.

Two halves, on two threads (`clapd.daemon.output.Recorder`):

- `ClipRecorder` (the inference thread, between model calls, where the rings' single-reader contract allows
  reading them): an event's start opens a pending clip, a preallocated buffer of at most `max_seconds`; every turn
  of the inference loop copies the audio that has arrived since the last turn into it (a memory copy). The event's
  end fixes the clip's last sample (post-roll after the end, within the cap) and its file name, which goes in the
  end event (`DetectionEvent.clip`). Once the post-roll has arrived, and with privacy prompts once the windows up to
  the clip's end have been scored, the clip is handed to the writer through a bounded queue (full: dropped, counted).
- `ClipWriter` (its own thread; `clapd.daemon.clip_files`, with the clips' names, listing and retention): encodes
  with soundfile (FLAC 16-bit, or Opus), writes to a temporary name and renames, so a clip file is always whole; a
  full disk or an unwritable folder drops the clip and counts it. Then deletes clips past `max_age_days` and,
  oldest first, beyond `max_total_mb` (counted).

The ring of every stream is sized for clips (`ring_need_seconds`); a file read as fast as possible waits for the
reader, so its windows leave the audio of the pre-roll in the ring (`KeepBehind`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from clapd.daemon.clip_files import SUFFIXES, ClipJob, ClipWriter, clip_name
from clapd.daemon.config import ClapdConfig, ClipsConfig, DetectionClipsConfig, DetectionConfig
from clapd.daemon.detector import Detections
from clapd.daemon.manifest import Manifest
from clapd.daemon.matcher import Matcher
from clapd.daemon.output import Recorder
from clapd.daemon.prompts import DetectionPreparer, ReleasableTextEmbedder
from clapd.daemon.records import DetectionEvent
from clapd.daemon.ring import Overrun, RingBuffer
from clapd.daemon.windows import MAX_BATCH

logger = logging.getLogger(__name__)

CLIPS_DIR = "clips"  # in the state directory, unless clips.directory says otherwise
RING_SLACK_SECONDS = 5.0  # beyond window and pre-roll: a slow model call, a batch of windows
OPUS_RATES = (8_000, 12_000, 16_000, 24_000, 48_000)  # the rates Opus encodes


def clips_directory(config: ClapdConfig) -> Path:
    """Where the clips are: `clips.directory`, else the state directory's `CLIPS_DIR`."""
    return config.clips.directory or config.state_dir / CLIPS_DIR


def largest_pre_roll(detections: Mapping[str, DetectionConfig]) -> float | None:
    """Seconds of the longest pre-roll any detection's clips ask for; None when no detection has clips."""
    rolls = [d.clips.pre_roll_seconds for d in detections.values() if d.clips is not None]
    return max(rolls) if rolls else None


def keep_behind_samples(pre_roll_seconds: float, window: int, hop: int, sample_rate: int) -> int:
    """Samples behind a stream's next window that must stay in its ring: an event's onset may lie a window and a
    batch of hops before it, and its pre-roll before that."""
    return round(pre_roll_seconds * sample_rate) + window + MAX_BATCH * hop


def ring_need_seconds(pre_roll_seconds: float | None, window: int, hop: int, sample_rate: int) -> float:
    """What clips need of every stream's ring: the audio kept behind the next window, a window ahead, and slack."""
    if pre_roll_seconds is None:
        return 0.0
    behind = keep_behind_samples(pre_roll_seconds, window, hop, sample_rate)
    return (behind + window) / sample_rate + RING_SLACK_SECONDS


class KeepBehind:
    """A stream's ring as its windows see it when the source waits for the reader (a file read as fast as possible):
    consuming up to a sample frees the ring only up to `keep` samples before it, so the pre-roll of an event is still
    there when the event starts."""

    __slots__ = ("_ring", "_keep", "capacity")

    def __init__(self, ring: RingBuffer, keep: int) -> None:
        if keep >= ring.capacity:
            raise ValueError(f"cannot keep {keep} samples behind in a ring of {ring.capacity}")
        self._ring, self._keep, self.capacity = ring, keep, ring.capacity

    @property
    def total_written(self) -> int:
        return self._ring.total_written

    def read(self, start_sample: int, n: int) -> np.ndarray:
        return self._ring.read(start_sample, n)

    def replaced_within(self, start_sample: int, n: int) -> bool:
        return self._ring.replaced_within(start_sample, n)

    def mark_consumed(self, sample: int) -> None:
        self._ring.mark_consumed(max(0, sample - self._keep))


def windows_view(ring: RingBuffer, pre_roll: float | None, window: int, hop: int, rate: int) -> RingBuffer | KeepBehind:
    """The ring as the windows of a source that waits for the reader see it: with clips, one that keeps the
    pre-roll (`KeepBehind`)."""
    return ring if pre_roll is None else KeepBehind(ring, keep_behind_samples(pre_roll, window, hop, rate))


@dataclass(slots=True)
class _Pending:
    """A clip being gathered (inference thread only)."""

    event: DetectionEvent
    ring: RingBuffer
    first: int  # the clip's first sample in the stream
    limit: int  # one past the last sample the cap allows
    buffer: np.ndarray  # float32 [limit - first]
    post_roll: int  # samples after the event's end
    copied: int = 0  # samples of the buffer filled
    last: int | None = None  # one past the clip's last sample, fixed at the event's end
    path: Path | None = None
    privacy: float = 0.0  # the highest privacy score of its windows scored so far
    lost: int = 0  # samples overwritten before they were copied (written as silence)

    @property
    def end(self) -> int:
        return self.limit if self.last is None else self.last


class ClipRecorder(Recorder):
    """Pending clips, filled from the rings on the inference thread and handed to a `ClipWriter`."""

    name = "clips"

    def __init__(
        self,
        config: ClipsConfig,
        directory: Path,
        rings: Mapping[str, RingBuffer],
        detections: Mapping[str, DetectionConfig],
        sample_rate: int,
        privacy_detection: str | None = None,
    ) -> None:
        self._config = config
        self._writer = ClipWriter(config, directory)
        self._rings = dict(rings)
        self._detections = dict(detections)
        self._rate = sample_rate
        self._privacy = privacy_detection  # the hidden detection scoring the privacy prompts
        self.link: Callable[[str], str | None] | None = None  # a clip's file name -> its URL on the web page, if on
        self._pending: dict[str, _Pending] = {}  # event id -> its clip
        self._scored_until: dict[str, int] = {}  # stream -> one past the newest window scored
        self.withheld = 0  # clips not kept: a window scored above the privacy threshold
        self._suffix = SUFFIXES[config.format]

    def detections_changed(self, detections: Mapping[str, DetectionConfig]) -> None:
        """The detections in force (after a reload): their `clips` blocks apply to events starting from now on."""
        self._detections = dict(detections)

    def on_event(self, event: DetectionEvent) -> DetectionEvent:
        if event.kind == "start":
            self._open(event)
            return event
        pending = self._pending.get(event.event_id)
        if pending is None or event.end_sample is None:
            return event
        pending.last = min(event.end_sample + pending.post_roll, pending.limit)
        started = datetime.fromisoformat(event.start_utc) - timedelta(
            seconds=(event.start_sample - pending.first) / self._rate
        )
        pending.path = self._writer.directory / clip_name(event, started, self._suffix)
        url = self.link(pending.path.name) if self.link is not None else None
        return replace(event, clip=str(pending.path), clip_url=url)

    def record(self, found: Detections) -> None:
        for scores in found.scores:
            self._scored_until[scores.stream] = max(self._scored_until.get(scores.stream, 0), scores.end_sample)
        if self._privacy is None:
            return
        for window in found.embedded:
            score = window.hidden.get(self._privacy)
            if score is None:
                continue
            for pending in self._pending.values():
                if pending.event.stream == window.stream and window.end_sample > pending.first:
                    if window.start_sample < pending.end:
                        pending.privacy = max(pending.privacy, score)

    def turn(self) -> None:
        for event_id, pending in list(self._pending.items()):
            self._copy(pending)
            if pending.last is not None and pending.copied >= pending.last - pending.first and self._scored(pending):
                del self._pending[event_id]
                self._hand_over(pending)

    def work(self) -> None:
        self._writer.work()

    def finish(self) -> None:
        """The streams have stopped: every pending clip whose event has ended is written with the audio it has."""
        for pending in self._pending.values():
            if pending.last is not None:
                pending.last = pending.first + pending.copied
                self._hand_over(pending)
        self._pending.clear()
        self._writer.finish()

    def counters(self) -> dict[str, int]:
        return {**self._writer.counters(), "withheld_privacy": self.withheld}

    def _open(self, event: DetectionEvent) -> None:
        config = self._clips_of(event.detection)
        ring = self._rings.get(event.stream)
        if config is None or ring is None:
            return
        first = max(0, event.start_sample - round(config.pre_roll_seconds * self._rate), ring.oldest_available)
        limit = first + round(config.max_seconds * self._rate)
        buffer = np.empty(limit - first, dtype=np.float32)
        self._pending[event.event_id] = _Pending(
            event, ring, first, limit, buffer, round(config.post_roll_seconds * self._rate)
        )
        self._copy(self._pending[event.event_id])  # the pre-roll now, before the ring moves on

    def _clips_of(self, detection: str) -> DetectionClipsConfig | None:
        config = self._detections.get(detection)
        return config.clips if config is not None else None

    def _copy(self, pending: _Pending) -> None:
        """Copy what has arrived of the clip's audio since the last copy; overwritten audio becomes silence."""
        ring = pending.ring
        start = pending.first + pending.copied
        n = min(ring.total_written, pending.end) - start
        while n > 0:
            take = min(n, ring.capacity)
            at = pending.copied
            try:
                ring.read(start, take, out=pending.buffer[at : at + take])
            except Overrun as e:  # inference stalled longer than the ring holds
                take = e.lost
                pending.buffer[at : at + take] = 0.0
                pending.lost += take
            pending.copied += take
            start += take
            n -= take

    def _scored(self, pending: _Pending) -> bool:
        """Privacy prompts decide only once every window up to the clip's end has been scored."""
        return self._privacy is None or self._scored_until.get(pending.event.stream, 0) >= pending.end

    def _hand_over(self, pending: _Pending) -> None:
        assert pending.path is not None, "a clip is handed over once its event has ended"
        if pending.privacy > self._config.privacy_threshold:
            self.withheld += 1
            logger.info(
                "%s: clip of %s withheld: privacy score %.2f",
                pending.event.stream,
                pending.event.detection,
                pending.privacy,
            )
            return
        if pending.lost:
            logger.warning(
                "%s: %d samples of a clip were overwritten before copied", pending.event.stream, pending.lost
            )
        length = min(pending.copied, pending.end - pending.first)  # copying may have run past the end
        self._writer.put(ClipJob(pending.path, pending.buffer[:length], self._rate))


PRIVACY_DETECTION = "~privacy"  # the hidden detection of the privacy prompts: no configured name can be this


def privacy_matcher(
    config: ClapdConfig, text: ReleasableTextEmbedder, manifest: Manifest, cache: Path
) -> Matcher | None:
    """The privacy prompts as one hidden detection against the background prompts, when clips are on and have them."""
    if not config.clips.privacy_prompts or largest_pre_roll(config.detections) is None:
        return None
    preparer = DetectionPreparer(
        text, cache, manifest.text_side_sha256(), manifest.logit_scale, manifest.embedding_size
    )
    privacy = {PRIVACY_DETECTION: DetectionConfig(prompts=list(config.clips.privacy_prompts))}
    return preparer.prepare(privacy, list(config.background_prompts)).matcher


def build_clip_recorder(
    config: ClapdConfig, rings: Mapping[str, RingBuffer], sample_rate: int, privacy: bool
) -> ClipRecorder | None:
    """The clips' recorder when any detection has clips; ValueError for Opus at a rate it cannot encode."""
    if largest_pre_roll(config.detections) is None:
        return None
    if config.clips.format == "opus" and sample_rate not in OPUS_RATES:
        raise ValueError(f"clips.format: opus cannot encode the model's {sample_rate} Hz; use flac")
    hidden = PRIVACY_DETECTION if privacy else None
    return ClipRecorder(config.clips, clips_directory(config), rings, config.detections, sample_rate, hidden)
