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
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import threading
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
SPOOL_FILE = "event-queue.sqlite3"  # in the state directory; named before "spool" was, kept for existing installs
RESERVE_BYTES = 256 * 1024  # disk space set aside for dropping old messages when the disk is full
_REARM_FREE_FACTOR = 4  # the reserve is taken again once this many times its size is free
_FULL_DROP_BATCH = 16  # messages freed at a time when the disk is full (one row rarely frees a whole page)
_FULL_MAX_BATCHES = 4  # so at most 64 old messages give way to one new one; a larger one is dropped itself
_SQLITE_FULL_MESSAGE = "database or disk is full"  # SQLITE_FULL: the file system, or PRAGMA max_page_count


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
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=PERSIST")  # also turns a WAL database from earlier versions
            # FULL: a committed event survives a power cut too (events are rare, the fsync is cheap enough).
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
            (self._count,) = self._db.execute("SELECT COUNT(*) FROM messages").fetchone()
        except (OSError, sqlite3.Error) as e:
            raise RuntimeError(f"cannot open the MQTT spool {path}: {e}") from e
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
            with self.path.open("ab") as file:
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
