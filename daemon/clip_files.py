"""Clip files on disk: their names (which carry stream, detection, UTC start and event id), listing and finding
them, and the clip writer: encoding, and retention by age and total size.

`ClipWriter` runs on its own thread (`clapd.daemon.clips.ClipRecorder.work`): it encodes each `ClipJob` with
soundfile (FLAC 16-bit, or Opus), writes to a temporary name and renames, so a clip file is always whole; a full disk
or an unwritable folder drops the clip and counts it. Then it deletes clips past `max_age_days` and, oldest first,
beyond `max_total_mb` (counted), and looks at the ages at least every `SWEEP_SECONDS`.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import soundfile

from clapd.daemon.config import ClipsConfig
from clapd.daemon.logs import Throttle
from clapd.daemon.records import DetectionEvent
from clapd.daemon.state_files import private_folder

logger = logging.getLogger(__name__)

SWEEP_SECONDS = 60.0  # the writer looks at the clips' ages at least this often
SUFFIXES = {"flac": ".flac", "opus": ".opus"}
TIME_FORMAT = "%Y%m%dT%H%M%S"
_NAME = re.compile(
    r"^(?P<stream>[A-Za-z0-9][A-Za-z0-9_-]*)\.(?P<detection>[A-Za-z0-9][A-Za-z0-9_-]*)"
    r"\.(?P<time>\d{8}T\d{6})\.(?P<ms>\d{3})Z\.(?P<event_id>[0-9a-f]+)\.(?P<format>flac|opus)$"
)


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
