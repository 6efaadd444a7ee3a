"""Event clips: each event's audio, with pre-roll from before its start and post-roll after its end, as a file.

Two halves, on two threads (`clapd.daemon.output.Recorder`):

- `ClipRecorder` (the inference thread, between model calls, where the rings' single-reader contract allows
  reading them): an event's start opens a pending clip, a preallocated buffer of at most `max_seconds`; every turn
  of the inference loop copies the audio that has arrived since the last turn into it (a memory copy). The event's
  end fixes the clip's last sample (post-roll after the end, within the cap) and its file name, which goes in the
  end event (`DetectionEvent.clip`). Once the post-roll has arrived, and with privacy prompts once the windows up to
  the clip's end have been scored, the clip is handed to the writer through a bounded queue (full: dropped, counted).
- `ClipWriter` (its own thread): encodes with soundfile (FLAC 16-bit, or Opus), writes to a temporary name and
  renames, so a clip file is always whole; a full disk or an unwritable folder drops the clip and counts it. Then
  deletes clips past `max_age_days` and, oldest first, beyond `max_total_mb` (counted).

The ring of every stream is sized for clips (`ring_need_seconds`); a file read as fast as possible waits for the
reader, so its windows leave the audio of the pre-roll in the ring (`KeepBehind`).
"""

from __future__ import annotations

import logging
import os
import queue
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import soundfile

from clapd.daemon.config import ClapdConfig, ClipsConfig, DetectionClipsConfig, DetectionConfig
from clapd.daemon.detector import Detections
from clapd.daemon.logs import Throttle
from clapd.daemon.manifest import Manifest
from clapd.daemon.matcher import Matcher
from clapd.daemon.output import Recorder
from clapd.daemon.prompts import DetectionPreparer, ReleasableTextEmbedder
from clapd.daemon.records import DetectionEvent
from clapd.daemon.ring import Overrun, RingBuffer
from clapd.daemon.state_files import private_folder
from clapd.daemon.windows import MAX_BATCH

logger = logging.getLogger(__name__)

CLIPS_DIR = "clips"  # in the state directory, unless clips.directory says otherwise
RING_SLACK_SECONDS = 5.0  # beyond window and pre-roll: a slow model call, a batch of windows
SWEEP_SECONDS = 60.0  # the writer looks at the clips' ages at least this often
SUFFIXES = {"flac": ".flac", "opus": ".opus"}
OPUS_RATES = (8_000, 12_000, 16_000, 24_000, 48_000)  # the rates Opus encodes
TIME_FORMAT = "%Y%m%dT%H%M%S"
_NAME = re.compile(
    r"^(?P<stream>[A-Za-z0-9][A-Za-z0-9_-]*)\.(?P<detection>[A-Za-z0-9][A-Za-z0-9_-]*)"
    r"\.(?P<time>\d{8}T\d{6})\.(?P<ms>\d{3})Z\.(?P<event_id>[0-9a-f]+)\.(?P<format>flac|opus)$"
)


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


def clip_name(event: DetectionEvent, started: datetime, suffix: str) -> str:
    """`{stream}.{detection}.{UTC start: 20261201T031200.123Z}.{event id}{suffix}`; names hold no dots."""
    utc = started.astimezone(timezone.utc)
    stamp = f"{utc.strftime(TIME_FORMAT)}.{utc.microsecond // 1000:03d}Z"
    return f"{event.stream}.{event.detection}.{stamp}.{event.event_id}{suffix}"


@dataclass(frozen=True, slots=True)
class ClipFile:
    """A clip on disk, as its name describes it."""

    path: Path
    stream: str
    detection: str
    start_utc: datetime  # the first sample of the clip (its pre-roll's start)
    event_id: str
    size: int  # bytes
    mtime: float  # seconds since the epoch, when it was written


def parse_clip_name(path: Path) -> tuple[str, str, datetime, str] | None:
    """(stream, detection, UTC start, event id) from a clip's file name; None for any other file."""
    match = _NAME.match(path.name)
    if match is None:
        return None
    started = datetime.strptime(match["time"], TIME_FORMAT).replace(tzinfo=timezone.utc)
    return match["stream"], match["detection"], started.replace(microsecond=int(match["ms"]) * 1000), match["event_id"]


def list_clips(directory: Path) -> list[ClipFile]:
    """The clips in `directory`, oldest first (by when they were written); other files are left out."""
    clips = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        parsed = parse_clip_name(Path(entry.name))
        if parsed is None or not entry.is_file(follow_symlinks=False):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except FileNotFoundError:  # deleted meanwhile
            continue
        clips.append(ClipFile(Path(entry.path), *parsed, info.st_size, info.st_mtime))
    return sorted(clips, key=lambda c: (c.mtime, c.path.name))


def find_clip(directory: Path, event_id: str) -> ClipFile | None:
    """The clip of the event `event_id` in `directory` (found by the id its name carries); None when none is kept."""
    found = [clip for clip in list_clips(directory) if clip.event_id == event_id]
    return found[-1] if found else None


@dataclass(frozen=True, slots=True)
class ClipJob:
    """A clip whose audio is complete, for the writer."""

    path: Path
    samples: np.ndarray  # float32 mono at sample_rate
    sample_rate: int


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


class ClipWriter:
    """The clip-writer thread's side: a bounded queue of `ClipJob`s, written and then pruned by age and size."""

    def __init__(self, config: ClipsConfig, directory: Path) -> None:
        self.directory = directory
        self._config = config
        self._queue: queue.Queue[ClipJob | None] = queue.Queue(config.queue_size)
        self._known: dict[Path, tuple[float, int]] = {}  # clip -> (mtime, size), the writer thread's index
        self._log = Throttle()
        self.written = 0
        self.dropped_queue = 0  # the writer was behind: the queue was full
        self.dropped_write = 0  # the disk was full, or the folder unwritable
        self.deleted_age = 0
        self.deleted_size = 0

    def put(self, job: ClipJob) -> None:
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self.dropped_queue += 1
            if reported := self._log.add():
                logger.error("clip queue full (the disk is slow): %d clips dropped", reported)

    def finish(self) -> None:
        try:
            self._queue.put(None, timeout=1.0)
        except queue.Full:  # the writer is stuck: it is a daemon thread, the process exits without it
            logger.error("clip writer stuck: %d clips not written", self._queue.qsize())

    def counters(self) -> dict[str, int]:
        return {
            "written": self.written,
            "dropped_queue_full": self.dropped_queue,
            "dropped_write_failed": self.dropped_write,
            "deleted_age": self.deleted_age,
            "deleted_size": self.deleted_size,
        }

    def work(self) -> None:
        self._index()
        next_sweep = time.monotonic() + SWEEP_SECONDS
        while True:
            try:
                job = self._queue.get(timeout=max(0.0, next_sweep - time.monotonic()))
            except queue.Empty:
                job = False  # time to look at the ages
            if job is None:
                return
            if isinstance(job, ClipJob):
                try:
                    self._write(job)
                except Exception:  # a bug must not end the thread: later clips may still be written
                    self.dropped_write += 1
                    logger.exception("clip %s not written", job.path.name)
            if job or time.monotonic() >= next_sweep:
                self._prune()
                next_sweep = time.monotonic() + SWEEP_SECONDS

    def _index(self) -> None:
        try:
            private_folder(self.directory)
        except OSError as e:
            logger.error("clip folder %s cannot be made: %s", self.directory, e)
        self._known = {c.path: (c.mtime, c.size) for c in list_clips(self.directory)}
        self._prune()

    def _write(self, job: ClipJob) -> None:
        """Encode to a temporary name and rename: a clip is whole or absent."""
        temporary = job.path.with_name(f".{job.path.name}.partial")
        fmt, subtype = ("OGG", "OPUS") if job.path.suffix == ".opus" else ("FLAC", "PCM_16")
        try:
            soundfile.write(temporary, np.clip(job.samples, -1.0, 1.0), job.sample_rate, subtype, format=fmt)
            os.replace(temporary, job.path)
            info = job.path.stat()
        except (OSError, RuntimeError, soundfile.LibsndfileError) as e:  # a full disk, an unwritable folder
            self.dropped_write += 1
            temporary.unlink(missing_ok=True)
            if self._log.add():
                logger.error("clip %s not written (%d dropped so far): %s", job.path.name, self.dropped_write, e)
            return
        self._known[job.path] = (info.st_mtime, info.st_size)
        self.written += 1
        logger.debug("clip written: %s (%d bytes)", job.path, info.st_size)

    def _prune(self) -> None:
        """Delete clips past their age, then the oldest while the rest exceed the size limit."""
        oldest_first = sorted(self._known.items(), key=lambda item: item[1][0])
        if self._config.max_age_days is not None:
            cutoff = time.time() - self._config.max_age_days * 86_400
            while oldest_first and oldest_first[0][1][0] < cutoff:
                self._delete(oldest_first.pop(0)[0], "age")
        if self._config.max_total_mb is not None:
            total = sum(size for _, (_, size) in oldest_first)
            while oldest_first and total > self._config.max_total_mb * 1e6:
                path, (_, size) = oldest_first.pop(0)
                self._delete(path, "size")
                total -= size

    def _delete(self, path: Path, why: str) -> None:
        try:
            path.unlink(missing_ok=True)
        except OSError as e:
            logger.warning("clip %s could not be deleted: %s", path, e)
            return
        del self._known[path]
        if why == "age":
            self.deleted_age += 1
        else:
            self.deleted_size += 1
        logger.debug("clip deleted (%s): %s", why, path.name)


PRIVACY_DETECTION = "~privacy"  # the hidden detection of the privacy prompts: no configured name can be this


def privacy_matcher(
    config: ClapdConfig, text: ReleasableTextEmbedder, manifest: Manifest, cache: Path
) -> Matcher | None:
    """The privacy prompts as one hidden detection against the background prompts, when clips are on and have them."""
    if not config.clips.privacy_prompts or largest_pre_roll(config.detections) is None:
        return None
    preparer = DetectionPreparer(text, cache, manifest.text.sha256, manifest.logit_scale, manifest.embedding_size)
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
