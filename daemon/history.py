"""The embedding history: every embedded window's embedding (int8 with its scale), stream, UTC time and level, and
every ended event (with its clip's path), in a SQLite file in `state_dir`, for `clapd search`.

The inference thread only puts rows on a bounded queue (`HistoryRecorder.record`; full: dropped, counted); the
history thread writes them in batches, one transaction a batch, every `flush_seconds`. A batch is one row per stream
(`batches`): its windows' times, levels and scales as float arrays and their embeddings as one int8 matrix, so a
search reads a few thousand blobs instead of millions of rows. The file is in WAL mode with `synchronous=NORMAL`:
a power cut loses at most the last transactions, never the file's consistency. A file that cannot be opened, is
locked by another process or fails SQLite's quick check is reported, moved aside (`history.sqlite3.corrupt-{UTC}`)
and started anew; a full disk drops the batch and counts it. Retention: windows older than `max_days`, then the
oldest while the file's used pages exceed `max_mb`, deleted at most every `RETENTION_SECONDS`.

Embeddings of different models cannot be compared: each batch carries its embedding space (the bundle's text model
hash: every precision of one bundle shares it), and a search looks only at its own.

The file itself (schema, connecting, errors, quantisation, retention and compaction) is `clapd.daemon.history_db`'s.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from clapd.daemon.config import ClapdConfig, DetectionConfig, HistoryConfig
from clapd.daemon.detector import Detections
from clapd.daemon.events import StreamClock
from clapd.daemon.history_db import (
    MAX_BATCH_WINDOWS,
    HistoryUnavailable,
    HistoryUnusable,
    compact,
    connect,
    quantize,
    retain,
    set_aside,
    transaction,
    unusable,
    used_bytes,
)
from clapd.daemon.logs import Throttle
from clapd.daemon.output import Recorder
from clapd.daemon.records import DetectionEvent
from clapd.daemon.state_files import private_folder

logger = logging.getLogger(__name__)

HISTORY_FILE = "history.sqlite3"  # in the state directory
RETENTION_SECONDS = 60.0  # retention and compaction run at most this often


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """One embedded window, as queued for the history thread."""

    stream: str
    utc: float  # the window's start, seconds since the epoch
    window_seconds: float
    level_dbfs: float
    embedding: np.ndarray  # float32 [dim], unit length


class HistoryStore:
    """The history file, used by one thread: batches in, retention, and a fresh file when it turns out unusable."""

    def __init__(self, path: Path, config: HistoryConfig, space: str) -> None:
        self.path = path
        self._config = config
        self._space = space
        self._db: sqlite3.Connection | None = None
        self._next_retention = 0.0
        self.set_aside = 0  # unusable files moved aside
        self.deleted_windows = 0  # by retention

    def open(self) -> None:
        """Open the file, or set it aside and start anew when it cannot be used."""
        private_folder(self.path.parent)
        try:
            self._db = connect(self.path)
        except HistoryUnusable as e:
            self._start_anew(str(e))

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def write(self, rows: list[HistoryRow], events: list[DetectionEvent]) -> None:
        """One transaction for all of them; raises sqlite3.Error (the caller counts what it lost)."""
        if self._db is None:
            self.open()
        assert self._db is not None
        with transaction(self._db) as db:
            db.executemany("INSERT INTO batches VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", self._batches(rows))
            db.executemany("INSERT OR REPLACE INTO events VALUES (?, ?, ?, ?, ?, ?, ?)", map(_event_row, events))
        if time.monotonic() >= self._next_retention:
            self._next_retention = time.monotonic() + RETENTION_SECONDS
            try:  # the batch is committed: a failure here must not count it as lost
                self.apply_retention()
                self.compact()
            except sqlite3.Error as e:
                logger.warning(
                    "history: retention or compaction failed, tried again in %.0f s: %s", RETENTION_SECONDS, e
                )

    def recover(self, error: sqlite3.Error) -> bool:
        """After a failed write: a corrupt file is set aside and started anew (True); a full disk is not (False)."""
        if not unusable(error):  # a full disk, an I/O error: the file itself is sound
            return False
        self.close()
        self._start_anew(f"{self.path}: {error}")
        return True

    def apply_retention(self, now: float | None = None) -> None:
        """Delete windows older than max_days, then the oldest batches while the used pages exceed max_mb."""
        assert self._db is not None
        self.deleted_windows += retain(self._db, self._config.max_days, self._config.max_mb, now)

    def compact(self, now: float | None = None) -> None:
        """Merge each stream's small batches into larger ones (`clapd.daemon.history_db.compact`)."""
        assert self._db is not None
        compact(self._db, now)

    def used_bytes(self) -> int:
        assert self._db is not None
        return used_bytes(self._db)

    def _start_anew(self, reason: str) -> None:
        self.set_aside += 1
        try:
            aside = set_aside(self.path)
        except OSError as e:
            raise HistoryUnusable(f"{reason}; and it cannot be moved aside: {e}") from e
        logger.error("history: %s; moved aside to %s, starting a new history", reason, aside.name)
        self._db = connect(self.path)

    def _batches(self, rows: list[HistoryRow]) -> list[tuple]:
        """Each stream's rows (in time order) as batches of at most MAX_BATCH_WINDOWS."""
        by_stream: dict[tuple[str, float], list[HistoryRow]] = {}
        for row in rows:
            by_stream.setdefault((row.stream, row.window_seconds), []).append(row)
        batches = []
        for (stream, seconds), stream_rows in by_stream.items():
            for i in range(0, len(stream_rows), MAX_BATCH_WINDOWS):
                part = stream_rows[i : i + MAX_BATCH_WINDOWS]
                embeddings, scales = quantize(np.stack([r.embedding for r in part]))
                times = np.array([r.utc for r in part], dtype=np.float64)
                levels = np.array([r.level_dbfs for r in part], dtype=np.float32)
                head = (self._space, stream, times[0], times[-1], seconds, len(part), embeddings.shape[1])
                batches.append((*head, times.tobytes(), levels.tobytes(), scales.tobytes(), embeddings.tobytes()))
        return batches


def _event_row(event: DetectionEvent) -> tuple:
    return (
        event.event_id,
        event.stream,
        event.detection,
        datetime.fromisoformat(event.start_utc).timestamp(),
        datetime.fromisoformat(event.end_utc or event.start_utc).timestamp(),
        event.peak_score,
        event.clip,
    )


class HistoryRecorder(Recorder):
    """The inference thread queues each embedded window and each ended event; the history thread writes them."""

    name = "history"

    def __init__(self, config: HistoryConfig, path: Path, space: str, clocks: Mapping[str, StreamClock]) -> None:
        self._config = config
        self._store = HistoryStore(path, config, space)
        self._clocks = dict(clocks)
        self._queue: queue.Queue[HistoryRow | DetectionEvent | None] = queue.Queue(config.queue_size)
        self._log = Throttle()
        self.dropped_queue = 0  # the history thread was behind
        self.written = 0  # windows committed
        self.dropped_write = 0  # windows in batches that failed (a full disk)

    @property
    def path(self) -> Path:
        return self._store.path

    def on_event(self, event: DetectionEvent) -> DetectionEvent:
        if event.kind == "end":
            self._put(event)
        return event

    def record(self, found: Detections) -> None:
        for window in found.embedded:
            clock = self._clocks[window.stream]
            utc = clock.datetime_at(window.start_sample).timestamp()
            seconds = (window.end_sample - window.start_sample) / clock.sample_rate
            self._put(HistoryRow(window.stream, utc, seconds, window.level_dbfs, window.embedding))

    def turn(self) -> None:
        pass  # nothing to copy out of the rings

    def detections_changed(self, detections: Mapping[str, DetectionConfig]) -> None:
        pass  # every embedded window is kept, whatever the detections

    def finish(self) -> None:
        try:
            self._queue.put(None, timeout=1.0)
        except queue.Full:
            logger.error("history writer stuck: %d windows not written", self._queue.qsize())

    def counters(self) -> dict[str, int]:
        return {
            "windows_written": self.written,
            "windows_dropped_queue_full": self.dropped_queue,
            "windows_dropped_write_failed": self.dropped_write,
            "windows_deleted": self._store.deleted_windows,
            "files_set_aside": self._store.set_aside,
        }

    def work(self) -> None:
        try:
            self._store.open()
        except (HistoryUnavailable, OSError) as e:
            logger.error("history: cannot be kept: %s", e)
        rows: list[HistoryRow] = []
        events: list[DetectionEvent] = []
        flush_at = time.monotonic() + self._config.flush_seconds
        done = False
        while not done:
            try:
                item = self._queue.get(timeout=max(0.0, flush_at - time.monotonic()))
            except queue.Empty:
                item = False
            if item is None:
                done = True
            elif isinstance(item, HistoryRow):
                rows.append(item)
            elif isinstance(item, DetectionEvent):
                events.append(item)
            if done or time.monotonic() >= flush_at:
                self._flush(rows, events)
                rows, events = [], []
                flush_at = time.monotonic() + self._config.flush_seconds
        self._store.close()

    def _put(self, item: HistoryRow | DetectionEvent) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped_queue += 1
            if reported := self._log.add():
                logger.error("history queue full (the disk is slow): %d windows dropped", reported)

    def _flush(self, rows: list[HistoryRow], events: list[DetectionEvent]) -> None:
        if not rows and not events:
            return
        try:
            self._store.write(rows, events)
            self.written += len(rows)
        except (sqlite3.Error, HistoryUnavailable, OSError) as e:
            self.dropped_write += len(rows)
            if isinstance(e, sqlite3.Error):
                try:
                    self._store.recover(e)
                except HistoryUnavailable as again:
                    logger.error("history: %s", again)
            if self._log.add():
                logger.error("history: %d windows not written (%d so far): %s", len(rows), self.dropped_write, e)
        except Exception:  # a bug must not end the thread: later batches may still be written
            self.dropped_write += len(rows)
            logger.exception("history: %d windows not written", len(rows))


def build_history_recorder(
    config: ClapdConfig, clocks: Mapping[str, StreamClock], space: str
) -> HistoryRecorder | None:
    """The history's recorder when `history.enabled`; `space`: the bundle's text model sha256."""
    if not config.history.enabled:
        return None
    return HistoryRecorder(config.history, config.state_dir / HISTORY_FILE, space, clocks)
