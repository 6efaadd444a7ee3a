"""The spool: a bounded first-in-first-out store of outgoing MQTT messages on disk (SQLite).

Messages wait here while the broker is away and survive a restart of the daemon; the row id (autoincrement, never
reused) is the order of delivery. When the spool is full, or the disk is, the oldest messages give way: the newest
events matter most, and a lost old event is counted and logged rather than stopping detection. ("Spool" is this
store on disk only; the daemon's queues between threads are in memory and are something else.)

On a full disk even deleting a row needs room, for SQLite's journal. So the journal is a rollback journal whose file
is kept and reused (PERSIST), and the spool sets aside a reserve file. When dropping old messages fails for want of
space, it gives the reserve to the journal and stops the database file from growing, so that new messages reuse the
pages of dropped ones; once the file system has room again, it takes the reserve back and lifts the cap. (In WAL mode
a full disk is a dead end: the log is reused only after a checkpoint, and a checkpoint needs the database to grow.)

The spool holds event payloads: its file and journal (which takes the database's mode) are created 0600, and an
existing one is made so. A file SQLite finds is not a database, is corrupt, or holds another table layout is moved
aside (`{name}.corrupt-{UTC time}`, its journal with it), logged as an error naming both paths and counted
(`Spool.set_aside`), and an empty spool is started; any other failure to open (no permission, a locked database)
raises `SpoolError`, so a valid spool is never lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL
)
"""
_COLUMNS = ("id", "topic", "payload", "qos", "retain")
SPOOL_FILE = "event-queue.sqlite3"  # in the state directory; named before "spool" was, kept for existing installs
RESERVE_BYTES = 256 * 1024  # disk space set aside for dropping old messages when the disk is full
_REARM_FREE_FACTOR = 4  # the reserve is taken again once this many times its size is free
_FULL_DROP_BATCH = 16  # messages freed at a time when the disk is full (one row rarely frees a whole page)
_FULL_MAX_BATCHES = 4  # so at most 64 old messages give way to one new one; a larger one is dropped itself
_SQLITE_FULL_MESSAGE = "database or disk is full"  # SQLITE_FULL: the file system, or PRAGMA max_page_count
_SQLITE_CORRUPT_CODES = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB (primary result codes)
_SQLITE_CORRUPT_MESSAGES = ("file is not a database", "database disk image is malformed")  # before Python 3.11
_SIDE_FILES = ("-journal", "-wal", "-shm")  # SQLite's files next to the database (WAL: earlier versions)
PRIVATE_MODE = 0o600


class SpoolError(RuntimeError):
    """The spool cannot be opened: its folder or file cannot be used (a corrupt file is moved aside instead)."""


class _Unusable(Exception):
    """The spool file is not a database, is corrupt, or holds another table layout."""


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One MQTT message to publish."""

    topic: str
    payload: bytes
    qos: int  # 0, 1 or 2
    retain: bool


@dataclass(frozen=True, slots=True)
class SpooledMessage:
    """A message waiting on disk; `id` grows with every push and gives the order of delivery."""

    id: int
    message: OutgoingMessage


class Spool:
    """Thread-safe; every push is committed and synced before it returns, so a crash or power cut loses nothing
    already pushed. push() and remove() never raise for a full or failing disk: they log and count."""

    def __init__(self, path: Path, max_messages: int, *, reserve_bytes: int = RESERVE_BYTES) -> None:
        """`reserve_bytes`: the size of the reserve file `{path}-reserve`; 0 for none."""
        if max_messages < 1:
            raise ValueError(f"max_messages must be at least 1, got {max_messages}")
        self.path = path
        self.max_messages = max_messages
        self._reserve = _Reserve(path.with_name(path.name + "-reserve"), reserve_bytes)
        self._page_limit: int | None = None  # PRAGMA max_page_count before a full file system capped it
        self._lock = threading.Lock()
        self._dropped = 0
        self.set_aside = 0  # unusable spool files moved aside when opening (0 or 1)
        try:
            self._db, self._count = self._open()
        except _Unusable as e:
            aside = self._move_aside()
            logger.error("the MQTT spool %s is unusable (%s): moved it to %s; starting an empty spool", path, e, aside)
            self.set_aside += 1
            try:
                self._db, self._count = self._open()
            except _Unusable as again:
                raise SpoolError(f"cannot start a new MQTT spool {path}: {again}") from again
        self._reserve.hold()
        if self._count > max_messages:
            with self._lock:
                self._drop_oldest(self._count - max_messages, "the spool holds more than max_messages")

    @property
    def dropped(self) -> int:
        """Messages thrown away since this spool was opened (spool full, disk full, or unwritable)."""
        return self._dropped

    @property
    def reserve_held(self) -> bool:
        """Whether the reserve file is set aside now (False after a full file system, until there is room again)."""
        return self._reserve.held

    def __len__(self) -> int:
        return self._count

    def push(self, message: OutgoingMessage) -> int:
        """Append a message; return its id, or 0 when the disk could not take it even after dropping old ones (it
        is counted as dropped)."""
        with self._lock:
            if not self._reserve.held:
                self._recover_from_full()
            if self._count >= self.max_messages:
                self._drop_oldest(self._count - self.max_messages + 1, "the spool is full")
            batches = 0
            while True:
                try:
                    return self._insert(message)
                except sqlite3.Error as e:
                    if not _is_full(e) or batches == _FULL_MAX_BATCHES or not self._make_room(e):
                        return self._give_up(message, e)
                    batches += 1

    def peek(self, limit: int, *, after: int = 0) -> list[SpooledMessage]:
        """The oldest `limit` messages whose id is greater than `after`, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, qos, retain FROM messages WHERE id > ? ORDER BY id LIMIT ?",
                (after, limit),
            ).fetchall()
        return [SpooledMessage(row[0], OutgoingMessage(row[1], bytes(row[2]), row[3], bool(row[4]))) for row in rows]

    def remove(self, ids: Iterable[int]) -> None:
        """Forget delivered messages, in one transaction; ids no longer spooled (dropped meanwhile) are ignored.

        When the disk refuses, the messages stay spooled and are sent again after a restart (QoS 1 allows it)."""
        with self._lock:
            try:
                self._count -= self._delete_ids(ids)
            except sqlite3.Error as e:
                logger.error("cannot forget delivered messages in %s, they stay spooled: %s", self.path, e)

    def close(self) -> None:
        """Close the database; the reserve file stays for the next open."""
        with self._lock:
            self._db.close()

    def _open(self) -> tuple[sqlite3.Connection, int]:
        """Open (or create) the database, private; raise `_Unusable` for a file that is not a spool."""
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _create_private(self.path)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except (OSError, sqlite3.Error) as e:
            raise SpoolError(f"cannot open the MQTT spool {self.path}: {e}") from e
        try:
            db.execute("PRAGMA journal_mode=PERSIST")  # also turns a WAL database from earlier versions
            # FULL: a committed event survives a power cut too (events are rare, the fsync is cheap enough).
            db.execute("PRAGMA synchronous=FULL")
            db.execute(_SCHEMA)
            _check_spool(db)
            (count,) = db.execute("SELECT COUNT(*) FROM messages").fetchone()
        except (sqlite3.Error, _Unusable) as e:
            db.close()
            if isinstance(e, _Unusable):
                raise
            if _is_corrupt(e):
                raise _Unusable(str(e)) from e
            raise SpoolError(f"cannot open the MQTT spool {self.path}: {e}") from e
        _make_private(self.path.with_name(self.path.name + "-journal"))  # kept (PERSIST) from an earlier run
        return db, count

    def _move_aside(self) -> Path:
        """Rename the spool file (and SQLite's files next to it) to `{name}.corrupt-{UTC time}`; return the new path."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while aside.exists():
            aside, n = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}"), n + 1
        try:
            self.path.rename(aside)
            for suffix in _SIDE_FILES:
                side = self.path.with_name(self.path.name + suffix)
                if side.exists():
                    side.rename(aside.with_name(aside.name + suffix))
        except OSError as e:
            raise SpoolError(f"the MQTT spool {self.path} is unusable and cannot be moved aside: {e}") from e
        return aside

    def _insert(self, message: OutgoingMessage) -> int:
        cursor = self._db.execute(
            "INSERT INTO messages (topic, payload, qos, retain) VALUES (?, ?, ?, ?)",
            (message.topic, message.payload, message.qos, int(message.retain)),
        )
        self._count += 1
        return int(cursor.lastrowid or 0)

    def _delete_ids(self, ids: Iterable[int]) -> int:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            cursor = self._db.executemany("DELETE FROM messages WHERE id = ?", ((i,) for i in ids))
            self._db.execute("COMMIT")
        except sqlite3.Error:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        return max(cursor.rowcount, 0)

    def _delete_oldest(self, n: int, reason: str) -> bool:
        """Delete the `n` oldest messages; False when there were none. Raises what SQLite raises."""
        cursor = self._db.execute(
            "DELETE FROM messages WHERE id IN (SELECT id FROM messages ORDER BY id LIMIT ?)", (n,)
        )
        dropped = max(cursor.rowcount, 0)
        self._count -= dropped
        self._dropped += dropped
        if dropped:
            logger.warning("%s: dropped the %d oldest spooled message(s) (%d in all)", reason, dropped, self._dropped)
        return dropped > 0

    def _drop_oldest(self, n: int, reason: str) -> None:
        try:
            self._delete_oldest(n, reason)
        except sqlite3.Error as e:
            logger.error("%s, and dropping old messages from %s failed: %s", reason, self.path, e)

    def _make_room(self, error: sqlite3.Error) -> bool:
        """After SQLite said the disk is full: drop a batch of the oldest messages. False when nothing could go."""
        reason = f"the disk is full ({error})"
        try:
            return self._delete_oldest(_FULL_DROP_BATCH, reason)
        except sqlite3.Error as e:
            if self._on_file_system_full():
                return self._make_room(error)  # once: the reserve is gone now
            logger.error("%s, and dropping old messages from %s failed too: %s", reason, self.path, e)
            return False

    def _give_up(self, message: OutgoingMessage, error: sqlite3.Error) -> int:
        self._dropped += 1
        logger.error("cannot spool a message for %s in %s, dropped it: %s", message.topic, self.path, error)
        return 0

    def _on_file_system_full(self) -> bool:
        """Dropping old messages needs more room than the file system has: give the reserve to SQLite's journal and
        keep the database file at its size (new messages reuse the pages of dropped ones) until there is room again.
        False when there was no reserve to give."""
        if not self._reserve.release():
            return False
        # Without the cap the database may grow into the reserve and fill the disk again: worse, not fatal.
        with contextlib.suppress(sqlite3.Error):
            (self._page_limit,) = self._db.execute("PRAGMA max_page_count").fetchone()
            (pages,) = self._db.execute("PRAGMA page_count").fetchone()
            self._db.execute(f"PRAGMA max_page_count = {int(pages)}")
        logger.warning(
            "the file system of %s is full: gave back the %d KiB set aside, and the spool keeps its present size",
            self.path,
            self._reserve.size >> 10,
        )
        return True

    def _recover_from_full(self) -> None:
        """Once the file system has room again: set the reserve aside again and let the database grow."""
        if not self._reserve.has_room() or not self._reserve.hold():
            return
        if self._page_limit is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute(f"PRAGMA max_page_count = {int(self._page_limit)}")
            self._page_limit = None
        logger.info("the file system of %s has room again: set aside %d KiB", self.path, self._reserve.size >> 10)


class _Reserve:
    """A file of allocated (not sparse) disk space, set aside to be given back when the file system is full."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self.held = False

    def hold(self) -> bool:
        """Allocate the file (kept from an earlier run if there); False, logged, when there is no room for it."""
        if self.size == 0:
            return False
        try:
            with os.fdopen(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_MODE), "ab") as file:
                _allocate(file, self.size)
        except OSError as e:
            with contextlib.suppress(OSError):
                self.path.unlink(missing_ok=True)
            logger.warning("cannot set aside %d KiB in %s for a full disk: %s", self.size >> 10, self.path, e)
            return False
        self.held = True
        return True

    def release(self) -> bool:
        """Delete the file; False when it was not held or could not be deleted."""
        if not self.held:
            return False
        self.held = False
        try:
            self.path.unlink(missing_ok=True)
        except OSError as e:
            logger.error("cannot delete %s to make room: %s", self.path, e)
            return False
        return True

    def has_room(self) -> bool:
        """Whether the file system has room to set the reserve aside again, with plenty to spare."""
        try:
            return self.size > 0 and shutil.disk_usage(self.path.parent).free >= _REARM_FREE_FACTOR * self.size
        except OSError:
            return False


def _check_spool(db: sqlite3.Connection) -> None:
    """Raise `_Unusable` unless the messages table has the spool's columns and SQLite finds the file sound."""
    columns = tuple(row[1] for row in db.execute("PRAGMA table_info(messages)"))
    if columns != _COLUMNS:
        raise _Unusable(f"its messages table has the columns {columns}, not {_COLUMNS}")
    problems = [row[0] for row in db.execute("PRAGMA quick_check")]
    if problems != ["ok"]:
        raise _Unusable(f"SQLite's quick_check: {'; '.join(problems[:3])}")


def _is_corrupt(error: sqlite3.Error) -> bool:
    code = getattr(error, "sqlite_errorcode", None)  # Python 3.11 on
    if code is not None:
        return code & 0xFF in _SQLITE_CORRUPT_CODES
    return any(message in str(error) for message in _SQLITE_CORRUPT_MESSAGES)


def _create_private(path: Path) -> None:
    """Create the file 0600 if it is missing (SQLite would create it 0644), or make an existing one 0600."""
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, PRIVATE_MODE)
    try:
        if os.fstat(fd).st_mode & 0o077:
            with contextlib.suppress(OSError):  # not ours to change: it is used as it is
                os.fchmod(fd, PRIVATE_MODE)
    finally:
        os.close(fd)


def _make_private(path: Path) -> None:
    """Make an existing file 0600; nothing when it is missing or not ours."""
    with contextlib.suppress(OSError):
        if path.stat().st_mode & 0o077:
            path.chmod(PRIVATE_MODE)


def _is_full(error: sqlite3.Error) -> bool:
    return isinstance(error, sqlite3.OperationalError) and _SQLITE_FULL_MESSAGE in str(error)


def _allocate(file: BinaryIO, size: int) -> None:
    """Make the first `size` bytes of the file take disk space (posix_fallocate; zeros where it is missing)."""
    if hasattr(os, "posix_fallocate"):
        os.posix_fallocate(file.fileno(), 0, size)
        return
    missing = size - file.seek(0, os.SEEK_END)
    if missing > 0:
        file.write(bytes(missing))
        file.flush()
        os.fsync(file.fileno())
