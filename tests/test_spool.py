"""The MQTT spool (messages on disk until the broker has them): order, bounds and threads, and what it does when
the disk is full or refuses writes: SQLite's own SQLITE_FULL (a page limit), a real full file system (a tiny tmpfs
in an unprivileged user namespace, where the kernel allows one), a read-only database, and a database written by
the WAL-mode spool of earlier versions. No mocks: every error is SQLite's."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from clapd.daemon.mqtt.spool import OutgoingMessage, Spool

EVENT_BYTES = 350  # about the size of an event's JSON payload
PAGE_ROOM = 8  # pages the database may grow by in the page-limit tests: room for a few dozen events
TINY_FS_BYTES = 1024 * 1024
TINY_RESERVE_BYTES = 64 * 1024  # taken back once 4 x 64 KiB are free again, which a 1 MiB file system can give
SUBPROCESS_TIMEOUT = 60.0  # seconds


def event(n: int, size: int = EVENT_BYTES) -> OutgoingMessage:
    """A message of `size` bytes that starts with its number `n`."""
    return OutgoingMessage("clapd/kitchen/clap/event", f"{n:<{size}}".encode(), qos=1, retain=False)


def numbers(spool: Spool) -> list[int]:
    """The number of every spooled message, in the spool's order."""
    return [int(q.message.payload) for q in spool.peek(1_000_000)]


def cap_pages(spool: Spool, room: int) -> None:
    """Let the database grow by `room` pages at most: beyond, SQLite itself answers SQLITE_FULL, "database or disk
    is full", as for a full disk (PRAGMA max_page_count holds for this connection only, so it is the spool's)."""
    (pages,) = spool._db.execute("PRAGMA page_count").fetchone()
    spool._db.execute(f"PRAGMA max_page_count = {pages + room}")


def test_at_sqlites_page_limit_the_oldest_give_way_and_it_keeps_going(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING)
    spool = Spool(tmp_path / "q.db", max_messages=10_000)
    cap_pages(spool, PAGE_ROOM)
    ids = [spool.push(event(n)) for n in range(200)]  # far more than 8 pages hold
    assert 0 not in ids and ids == sorted(ids)  # every new event was taken
    kept = numbers(spool)
    assert kept == list(range(200 - len(kept), 200))  # the newest, in order, no gap
    assert 0 < len(kept) < 100 and spool.dropped == 200 - len(kept) and len(spool) == len(kept)
    assert "the disk is full (database or disk is full): dropped the 16 oldest" in caplog.text
    assert spool.reserve_held  # the file system itself has room: the reserve is for a full file system only

    spool._db.execute("PRAGMA max_page_count = 1000000")  # room again
    dropped = spool.dropped
    for n in range(200, 300):
        assert spool.push(event(n)) > 0
    assert spool.dropped == dropped and numbers(spool) == kept + list(range(200, 300))
    spool.close()


def test_a_message_larger_than_the_page_limit_costs_at_most_64_old_ones(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "q.db", max_messages=10_000)
    cap_pages(spool, PAGE_ROOM)
    for n in range(150):
        spool.push(event(n))
    before = numbers(spool)
    assert len(before) > 64 and spool.dropped > 0  # full
    assert spool.push(event(999, size=200_000)) == 0  # 49 pages of its own: it cannot fit, and is dropped
    assert numbers(spool) == before[64:]
    assert spool.push(event(150)) > 0 and numbers(spool)[-1] == 150
    spool.close()


def test_a_read_only_database_never_raises(tmp_path: Path, caplog) -> None:
    spool = Spool(tmp_path / "q.db", max_messages=10)
    first = spool.push(event(0))
    spool._db.execute("PRAGMA query_only = 1")  # every write now fails with "attempt to write a readonly database"
    assert spool.push(event(1)) == 0 and spool.dropped == 1
    spool.remove([first])  # stays spooled, to be sent again (at least once)
    assert numbers(spool) == [0] and len(spool) == 1
    assert "readonly" in caplog.text
    spool.close()


def test_a_wal_database_of_earlier_versions_keeps_its_messages(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    spool = Spool(path, max_messages=100)
    spool.close()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("INSERT INTO messages (topic, payload, qos, retain) VALUES ('t', CAST('old' AS BLOB), 1, 0)")
    db.close()

    spool = Spool(path, max_messages=100)
    assert spool._db.execute("PRAGMA journal_mode").fetchone() == ("persist",)
    assert [q.message.topic for q in spool.peek(10)] == ["t"]
    assert spool.push(event(1)) > 0 and len(spool) == 2
    spool.close()


# --- order, bounds, threads ---


def message(n: int, size: int = 10) -> OutgoingMessage:
    return OutgoingMessage(f"t/{n}", bytes([n % 256]) * size, qos=1, retain=n % 2 == 0)


def test_spool_keeps_order_across_reopen(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "q.db", max_messages=100)
    ids = [spool.push(message(n)) for n in range(6)]
    assert ids == sorted(ids) and len(spool) == 6
    spool.remove(ids[:2])
    spool.close()

    spool = Spool(tmp_path / "q.db", max_messages=100)
    assert len(spool) == 4
    assert [q.message for q in spool.peek(10)] == [message(n) for n in range(2, 6)]
    assert [q.id for q in spool.peek(2, after=ids[3])] == ids[4:6]
    spool.remove(ids)
    assert spool.push(message(9)) > ids[-1]  # ids are never reused, so order holds after the spool empties
    spool.close()


def test_spool_drops_the_oldest_when_full(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "q.db", max_messages=3)
    for n in range(5):
        spool.push(message(n))
    assert len(spool) == 3 and spool.dropped == 2
    assert [q.message.topic for q in spool.peek(10)] == ["t/2", "t/3", "t/4"]
    spool.close()
    smaller = Spool(tmp_path / "q.db", max_messages=2)
    assert [q.message.topic for q in smaller.peek(10)] == ["t/3", "t/4"] and smaller.dropped == 1
    smaller.close()


def test_spool_survives_a_full_disk(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "q.db", max_messages=10_000)
    # SQLite's page limit raises the same SQLITE_FULL "database or disk is full" as a full disk.
    (pages,) = spool._db.execute("PRAGMA page_count").fetchone()
    spool._db.execute(f"PRAGMA max_page_count = {pages + 8}")  # 8 pages of 4 KiB: a few messages of 3 kB
    for n in range(100):
        assert spool.push(message(n, size=3000)) > 0
    assert spool.dropped > 0 and len(spool) + spool.dropped == 100
    assert spool.peek(1000)[-1].message == message(99, size=3000)
    assert spool.push(message(0, size=200_000)) == 0  # larger than the whole database may grow: dropped itself
    spool.close()


def test_spool_is_thread_safe(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "q.db", max_messages=10_000)
    pushed: list[int] = []

    def push_many() -> None:
        pushed.extend(spool.push(message(n)) for n in range(50))

    threads = [threading.Thread(target=push_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(set(pushed)) == 200 and len(spool) == 200
    spool.close()


# --- a real full file system ---

FULL_FILE_SYSTEM_SCRIPT = """
import json, logging, os, sys
from pathlib import Path
from clapd.daemon.mqtt.spool import Spool
from test_spool import event, numbers, TINY_RESERVE_BYTES

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
directory = Path(sys.argv[1])
spool = Spool(directory / "q.db", max_messages=100_000, reserve_bytes=TINY_RESERVE_BYTES)
report = {"reserve_at_start": spool.reserve_held}
for n in range(50):  # the broker is away: events wait on disk
    spool.push(event(n))
with open(directory / "ballast", "wb", buffering=0) as ballast:  # then something else fills the file system
    try:
        while True:
            ballast.write(bytes(4096))
    except OSError:
        pass
report["free_when_full"] = os.statvfs(directory).f_bavail
ids = [spool.push(event(n)) for n in range(50, 1050)]
report.update(refused=ids.count(0), dropped=spool.dropped, kept=numbers(spool), reserve_when_full=spool.reserve_held)
os.remove(directory / "ballast")  # room again
ids = [spool.push(event(n)) for n in range(1050, 1100)]
report.update(refused_later=ids.count(0), kept_later=numbers(spool), reserve_later=spool.reserve_held)
print(json.dumps(report))
"""


def run_in_a_tiny_file_system(script: str, directory: Path) -> subprocess.CompletedProcess[str]:
    """Run `script` with a tmpfs of TINY_FS_BYTES mounted on `directory` (sys.argv[1]), in a user and mount
    namespace of its own (no root needed, where the kernel allows unprivileged user namespaces); else skip."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no unshare (util-linux) for a private mount namespace")
    mount_and_run = 'mount -t tmpfs -o size="$1" clapd-test "$2" && exec "$3" -c "$4" "$2"'
    command = [unshare, "--user", "--map-root-user", "--mount", "sh", "-c", mount_and_run, "sh"]
    command += [str(TINY_FS_BYTES), str(directory), sys.executable, script]
    tests = str(Path(__file__).parent)
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, env={**os.environ, "PYTHONPATH": tests}
    )
    if result.returncode != 0 and not result.stdout and "Traceback" not in result.stderr:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {result.stderr.strip()}")
    return result


def test_a_full_file_system_drops_the_oldest_and_recovers(tmp_path: Path) -> None:
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    result = run_in_a_tiny_file_system(FULL_FILE_SYSTEM_SCRIPT, mount_point)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["reserve_at_start"] and report["free_when_full"] == 0  # the file system really was full

    kept = report["kept"]
    assert report["refused"] == 0  # every new event was taken...
    assert kept == list(range(1050 - len(kept), 1050)) and len(kept) >= 16  # ...the newest kept, in order
    assert report["dropped"] == 1050 - len(kept)  # ...and the oldest counted as dropped
    assert not report["reserve_when_full"]  # given to the journal
    assert "the file system of" in result.stderr and "is full" in result.stderr

    assert report["refused_later"] == 0 and report["kept_later"] == kept + list(range(1050, 1100))
    assert report["reserve_later"]  # set aside again, and the database may grow again
