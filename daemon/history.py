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
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from clapd.daemon.config import ClapdConfig, DetectionConfig, HistoryConfig
from clapd.daemon.detector import Detections
from clapd.daemon.events import StreamClock
from clapd.daemon.logs import Throttle
from clapd.daemon.output import Recorder
from clapd.daemon.records import DetectionEvent
from clapd.daemon.state_files import private_folder

logger = logging.getLogger(__name__)

HISTORY_FILE = "history.sqlite3"  # in the state directory
SCHEMA_VERSION = 1
MAX_BATCH_WINDOWS = 1024  # windows of one stream in one row of `batches`
RETENTION_SECONDS = 60.0  # retention and compaction run at most this often
COMPACT_AFTER_SECONDS = 300.0  # batches older than this are merged per stream into rows of up to MAX_BATCH_WINDOWS
PAGE_PRAGMAS = ("page_count", "freelist_count", "page_size")
BUSY_TIMEOUT_SECONDS = 2.0  # how long to wait for another process's lock before calling the file locked
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY,
    space TEXT NOT NULL,             -- the embedding space: the bundle's text model sha256
    stream TEXT NOT NULL,
    first_utc REAL NOT NULL,         -- seconds since the epoch: the first window's start
    last_utc REAL NOT NULL,          -- the last window's start
    window_seconds REAL NOT NULL,    -- each window's length (real samples)
    count INTEGER NOT NULL,          -- windows in the batch
    dim INTEGER NOT NULL,            -- embedding size
    times BLOB NOT NULL,             -- float64 [count]: each window's start, seconds since the epoch
    levels BLOB NOT NULL,            -- float32 [count]: each window's level, dBFS
    scales BLOB NOT NULL,            -- float32 [count]: embedding = int8 row * scale
    embeddings BLOB NOT NULL         -- int8 [count, dim], row-major
);
CREATE INDEX IF NOT EXISTS batches_by_time ON batches (last_utc);
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY,
    stream TEXT NOT NULL,
    detection TEXT NOT NULL,
    start_utc REAL NOT NULL,
    end_utc REAL NOT NULL,
    peak_score REAL NOT NULL,
    clip TEXT                        -- the clip's path, if the detection has clips (the file may be gone)
);
CREATE INDEX IF NOT EXISTS events_by_time ON events (end_utc);
"""


class HistoryUnavailable(Exception):
    """The history cannot be written now (a full disk, an unwritable folder, an I/O error); the file stays as it is."""


class HistoryUnusable(HistoryUnavailable):
    """The file cannot be used as it is: corrupt, not a database, locked by another process, of a newer schema."""


# Set aside and started anew: a corrupt file, or one another process has held locked for BUSY_TIMEOUT_SECONDS (it
# goes on with the renamed file; SQLite finds a database's WAL by the open file, not by its name).
UNUSABLE_ERRORS = ("SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_BUSY", "SQLITE_LOCKED")


def quantize(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float [n, dim] -> (int8 [n, dim], float32 scales [n]) with row ~ int8 row * scale (max |error| = scale / 2)."""
    peak = np.abs(embeddings).max(axis=1)
    scales = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    rows = np.rint(embeddings / scales[:, None]).clip(-127, 127).astype(np.int8)
    return rows, scales


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection to the history file in WAL mode; `HistoryUnusable` when it is not a usable history."""
    db = None
    try:
        if readonly:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_SECONDS)
        else:
            db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
            db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # before the first table: freed pages can be returned
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")  # WAL: consistent after a power cut, the last commits may go
            db.executescript(SCHEMA)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is None or int(row[0]) > SCHEMA_VERSION:
            raise HistoryUnusable(f"{path}: schema {row and row[0]} is not one this clapd reads ({SCHEMA_VERSION})")
        if not readonly:
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise HistoryUnusable(f"{path}: SQLite's quick check failed: {check}")
    except sqlite3.Error as e:
        if db is not None:
            db.close()
        kind = HistoryUnusable if unusable(e) else HistoryUnavailable
        raise kind(f"{path}: {e}") from e
    return db


def unusable(error: sqlite3.Error) -> bool:
    """Whether the error says the file is corrupt or locked by another process (not a full disk or an I/O error)."""
    name = getattr(error, "sqlite_errorname", "") or ""
    return name.startswith(UNUSABLE_ERRORS) or (not name and not isinstance(error, sqlite3.OperationalError))


def set_aside(path: Path) -> Path:
    """Rename the file (and its WAL and shared-memory files) out of the way; returns the new name."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm", "-journal"):
        source = path.with_name(path.name + suffix)
        if source.exists():
            source.replace(aside.with_name(aside.name + suffix))
    return aside


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
        with _transaction(self._db) as db:
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
        cutoff = (time.time() if now is None else now) - self._config.max_days * 86_400
        with _transaction(self._db) as db:
            deleted = db.execute("SELECT coalesce(sum(count), 0) FROM batches WHERE last_utc < ?", (cutoff,))
            self.deleted_windows += deleted.fetchone()[0]
            db.execute("DELETE FROM batches WHERE last_utc < ?", (cutoff,))
            db.execute("DELETE FROM events WHERE end_utc < ?", (cutoff,))
        while (excess := self.used_bytes() - self._config.max_mb * 1e6) > 0:
            batches = self._db.execute("SELECT count(*) FROM batches").fetchone()[0]
            if batches == 0:
                break
            n = min(batches, int(excess / (self.used_bytes() / batches)) + 1)  # at the mean size of a batch
            with _transaction(self._db) as db:
                oldest = "SELECT id FROM batches ORDER BY first_utc LIMIT ?"
                gone = db.execute(f"SELECT sum(count) FROM batches WHERE id IN ({oldest})", (n,)).fetchone()[0]
                self.deleted_windows += gone
                db.execute(f"DELETE FROM batches WHERE id IN ({oldest})", (n,))
        self._db.executescript("PRAGMA incremental_vacuum;")  # the file shrinks by the pages freed

    def compact(self, now: float | None = None) -> None:
        """Merge each stream's small batches older than COMPACT_AFTER_SECONDS into rows of up to MAX_BATCH_WINDOWS:
        a flush every few seconds keeps little at risk, a search wants few rows."""
        assert self._db is not None
        cutoff = (time.time() if now is None else now) - COMPACT_AFTER_SECONDS
        small = self._db.execute(
            "SELECT id, space, stream, window_seconds, dim, count, first_utc, last_utc, times, levels, scales, "
            "embeddings FROM batches WHERE count < ? AND last_utc < ? "
            "ORDER BY space, stream, window_seconds, dim, first_utc",
            (MAX_BATCH_WINDOWS // 2, cutoff),
        ).fetchall()
        groups: list[list[tuple]] = []
        for row in small:
            group = groups[-1] if groups else None
            if group and group[0][1:5] == row[1:5] and sum(r[5] for r in group) + row[5] <= MAX_BATCH_WINDOWS:
                group.append(row)
            else:
                groups.append([row])
        merged = [g for g in groups if len(g) > 1]
        if not merged:
            return
        with _transaction(self._db) as db:
            for group in merged:
                space, stream, seconds, dim = group[0][1:5]
                count = sum(r[5] for r in group)
                blobs = [b"".join(r[k] for r in group) for k in range(8, 12)]  # times, levels, scales, embeddings
                db.execute(
                    "INSERT INTO batches VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (space, stream, group[0][6], group[-1][7], seconds, count, dim, *blobs),
                )
                db.executemany("DELETE FROM batches WHERE id = ?", [(r[0],) for r in group])
        self._db.executescript("PRAGMA incremental_vacuum;")  # the small batches' pages go back to the file system

    def used_bytes(self) -> int:
        assert self._db is not None
        pages, free, size = (self._db.execute(f"PRAGMA {name}").fetchone()[0] for name in PAGE_PRAGMAS)
        return (pages - free) * size

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


class _transaction:
    """BEGIN ... COMMIT on an autocommit connection, ROLLBACK on any error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None:
            self._db.execute("COMMIT")
        elif self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the error being raised says more


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
