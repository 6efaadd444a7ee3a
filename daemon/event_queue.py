"""A bounded first-in-first-out queue of outgoing MQTT messages on disk (SQLite, WAL mode).

Messages wait here while the broker is away and survive a restart of the daemon; the row id (autoincrement, never
reused) is the order of delivery. When the queue is full, or the disk is, the oldest messages give way: the newest
events matter most, and a lost old event is counted and logged rather than stopping detection.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

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
_FULL_DROP_BATCH = 16  # messages freed at a time when the disk is full (one row rarely frees a whole page)


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One MQTT message to publish."""

    topic: str
    payload: bytes
    qos: int  # 0, 1 or 2
    retain: bool


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """A message waiting on disk; `id` grows with every push and gives the order of delivery."""

    id: int
    message: OutgoingMessage


class DiskQueue:
    """Thread-safe; every push is committed before it returns, so a crash loses nothing already pushed."""

    def __init__(self, path: Path, max_messages: int) -> None:
        if max_messages < 1:
            raise ValueError(f"max_messages must be at least 1, got {max_messages}")
        self.path = path
        self.max_messages = max_messages
        self._lock = threading.Lock()
        self._dropped = 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed event survives a power cut too (events are rare, the fsync is cheap enough).
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
            (self._count,) = self._db.execute("SELECT COUNT(*) FROM messages").fetchone()
        except (OSError, sqlite3.Error) as e:
            raise RuntimeError(f"cannot open the event queue {path}: {e}") from e
        if self._count > max_messages:
            with self._lock:
                self._drop_oldest(self._count - max_messages, "the queue holds more than max_messages")

    @property
    def dropped(self) -> int:
        """Messages thrown away since this queue was opened (queue full, disk full, or unwritable)."""
        return self._dropped

    def __len__(self) -> int:
        return self._count

    def push(self, message: OutgoingMessage) -> int:
        """Append a message; return its id, or 0 when not even an empty queue could take it (it is counted)."""
        with self._lock:
            if self._count >= self.max_messages:
                self._drop_oldest(self._count - self.max_messages + 1, "the queue is full")
            while True:
                try:
                    return self._insert(message)
                except sqlite3.Error as e:
                    disk_full = isinstance(e, sqlite3.OperationalError) and "is full" in str(e)
                    if not disk_full or not self._drop_oldest(_FULL_DROP_BATCH, f"the disk is full ({e})"):
                        return self._give_up(message, e)

    def peek(self, limit: int, *, after: int = 0) -> list[QueuedMessage]:
        """The oldest `limit` messages whose id is greater than `after`, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, qos, retain FROM messages WHERE id > ? ORDER BY id LIMIT ?",
                (after, limit),
            ).fetchall()
        return [QueuedMessage(row[0], OutgoingMessage(row[1], bytes(row[2]), row[3], bool(row[4]))) for row in rows]

    def remove(self, ids: Iterable[int]) -> None:
        """Forget delivered messages; ids no longer queued (dropped meanwhile) are ignored."""
        with self._lock:
            cursor = self._db.executemany("DELETE FROM messages WHERE id = ?", ((i,) for i in ids))
            self._count -= max(cursor.rowcount, 0)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _insert(self, message: OutgoingMessage) -> int:
        cursor = self._db.execute(
            "INSERT INTO messages (topic, payload, qos, retain) VALUES (?, ?, ?, ?)",
            (message.topic, message.payload, message.qos, int(message.retain)),
        )
        self._count += 1
        return int(cursor.lastrowid or 0)

    def _drop_oldest(self, n: int, reason: str) -> bool:
        """Delete the `n` oldest messages; False when there was nothing to delete or SQLite refused."""
        try:
            cursor = self._db.execute(
                "DELETE FROM messages WHERE id IN (SELECT id FROM messages ORDER BY id LIMIT ?)", (n,)
            )
        except sqlite3.Error as e:
            logger.error("%s, and dropping old messages from %s failed too: %s", reason, self.path, e)
            return False
        dropped = max(cursor.rowcount, 0)
        self._count -= dropped
        self._dropped += dropped
        if dropped:
            logger.warning("%s: dropped the %d oldest queued message(s) (%d in all)", reason, dropped, self._dropped)
        return dropped > 0

    def _give_up(self, message: OutgoingMessage, error: sqlite3.Error) -> int:
        self._dropped += 1
        logger.error("cannot queue a message for %s in %s, dropped it: %s", message.topic, self.path, error)
        return 0
