"""The history's SQLite file: its schema, opening it (WAL), the errors that say whether it can be used, setting an
unusable one aside, int8 quantisation of embeddings, transactions, and the upkeep that keeps the file bounded:
retention (by age, then by size) and compaction of small batches (`clapd.daemon.history.HistoryStore` runs them).
"""

from __future__ import annotations

import sqlite3
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

SCHEMA_VERSION = 1
MAX_BATCH_WINDOWS = 1024  # windows of one stream in one row of `batches`
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


class transaction:
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


def retain(db: sqlite3.Connection, max_days: float, max_mb: float, now: float | None = None) -> int:
    """Delete windows older than `max_days`, then the oldest batches while the used pages exceed `max_mb`; the
    number of windows deleted."""
    deleted = 0
    cutoff = (time.time() if now is None else now) - max_days * 86_400
    with transaction(db):
        deleted += db.execute("SELECT coalesce(sum(count), 0) FROM batches WHERE last_utc < ?", (cutoff,)).fetchone()[0]
        db.execute("DELETE FROM batches WHERE last_utc < ?", (cutoff,))
        db.execute("DELETE FROM events WHERE end_utc < ?", (cutoff,))
    while (excess := used_bytes(db) - max_mb * 1e6) > 0:
        batches = db.execute("SELECT count(*) FROM batches").fetchone()[0]
        if batches == 0:
            break
        n = min(batches, int(excess / (used_bytes(db) / batches)) + 1)  # at the mean size of a batch
        with transaction(db):
            oldest = "SELECT id FROM batches ORDER BY first_utc LIMIT ?"
            deleted += db.execute(f"SELECT sum(count) FROM batches WHERE id IN ({oldest})", (n,)).fetchone()[0]
            db.execute(f"DELETE FROM batches WHERE id IN ({oldest})", (n,))
    db.executescript("PRAGMA incremental_vacuum;")  # the file shrinks by the pages freed
    return deleted


def compact(db: sqlite3.Connection, now: float | None = None) -> None:
    """Merge each stream's small batches older than COMPACT_AFTER_SECONDS into rows of up to MAX_BATCH_WINDOWS:
    a flush every few seconds keeps little at risk, a search wants few rows."""
    cutoff = (time.time() if now is None else now) - COMPACT_AFTER_SECONDS
    small = db.execute(
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
    with transaction(db):
        for group in merged:
            space, stream, seconds, dim = group[0][1:5]
            count = sum(r[5] for r in group)
            blobs = [b"".join(r[k] for r in group) for k in range(8, 12)]  # times, levels, scales, embeddings
            db.execute(
                "INSERT INTO batches VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (space, stream, group[0][6], group[-1][7], seconds, count, dim, *blobs),
            )
            db.executemany("DELETE FROM batches WHERE id = ?", [(r[0],) for r in group])
    db.executescript("PRAGMA incremental_vacuum;")  # the small batches' pages go back to the file system


def used_bytes(db: sqlite3.Connection) -> int:
    """The bytes of the file's pages in use (the free ones left out)."""
    pages, free, size = (db.execute(f"PRAGMA {name}").fetchone()[0] for name in PAGE_PRAGMAS)
    return (pages - free) * size
