"""The embedding history and `clapd search` (issue 13, items 2 and 3): `clapd run` keeps every window's embedding
in SQLite, across restarts; `clapd search` finds each planted sound's time range among its top results over the
history of several streams, by text and by an audio example; a corrupt or locked file is moved aside and the daemon
runs on; retention deletes the oldest windows by age and by size."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import run_clapd, start_daemon

import clapd
from clapd.daemon.config import HistoryConfig
from clapd.daemon.demo import DEMO_DETECTIONS, DEMO_EVENT_SETTINGS, DEMO_WINDOWS
from clapd.daemon.history import HISTORY_FILE, HistoryRow, HistoryStore
from clapd.daemon.history_db import MAX_BATCH_WINDOWS, quantize
from clapd.daemon.search import parse_since
from clapd.models.demo_stream import PlannedEvent, make_demo_stream

DEMO_BUNDLE = Path(clapd.__file__).parent / "demo_bundle"
SECONDS = 30.0
PLANTED = {  # stream -> (seed, its planted sounds)
    "hall": (31, [PlannedEvent("glass_breaking", 6.0, 8.0), PlannedEvent("siren", 17.0, 23.0)]),
    "porch": (32, [PlannedEvent("smoke_alarm", 10.0, 14.0)]),
    "office": (33, [PlannedEvent("phone_ringing", 15.0, 21.0)]),
}
TOP = 5


def write_config(folder: Path, streams: dict[str, Path], state: Path, *, realtime: bool = False) -> Path:
    """One model detection (so every window is embedded), history on, stdout out."""
    config = {
        "model": {"bundle": str(DEMO_BUNDLE), "providers": ["cpu"], "threads": 1},
        "windows": DEMO_WINDOWS,
        "streams": {name: {"type": "file", "path": str(wav), "realtime": realtime} for name, wav in streams.items()},
        "detections": {"knocking": {"prompts": [DEMO_DETECTIONS["knocking"]], **DEMO_EVENT_SETTINGS}},
        "outputs": {"stdout": True},
        "history": {"enabled": True, "flush_seconds": 0.5},
        "state_dir": str(state),
    }
    path = folder / "clapd.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The config of a daemon that has run once over three planted streams, its history kept."""
    folder = tmp_path_factory.mktemp("history")
    wavs = {
        name: make_demo_stream(seed, SECONDS, events).write_wav(folder / f"{name}.wav")
        for name, (seed, events) in PLANTED.items()
    }
    config = write_config(folder, wavs, folder / "state")
    result = run_clapd("run", "-c", str(config), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return config


def stream_starts(db_path: Path) -> dict[str, float]:
    """Each stream's first window's start (its sample 0, a file read from the start), seconds since the epoch."""
    with sqlite3.connect(db_path) as db:
        return dict(db.execute("SELECT stream, min(first_utc) FROM batches GROUP BY stream").fetchall())


def search(config: Path, *args: str) -> list[dict]:
    result = run_clapd("search", *args, "--top", str(TOP), "--json", "-c", str(config), timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def overlaps(match: dict, start: float, end: float) -> bool:
    return (
        datetime.fromisoformat(match["start_utc"]).timestamp() < end
        and start < datetime.fromisoformat(match["end_utc"]).timestamp()
    )


def test_search_finds_each_planted_sound_among_the_top_results(history: Path) -> None:
    db_path = history.parent / "state" / HISTORY_FILE
    starts = stream_starts(db_path)
    assert set(starts) == set(PLANTED)
    for stream, (_, events) in PLANTED.items():
        for event in events:
            matches = search(history, DEMO_DETECTIONS[event.class_name])
            assert 0 < len(matches) <= TOP
            span = (starts[stream] + event.start_s, starts[stream] + event.end_s)
            found = [m for m in matches if m["stream"] == stream and overlaps(m, *span)]
            assert found, (event, matches)
            assert matches[0] == found[0], (event, matches)  # the planted sound ranks first
            assert [m["score"] for m in matches] == sorted((m["score"] for m in matches), reverse=True)
    only = search(history, DEMO_DETECTIONS["siren"], "--stream", "porch")
    assert {m["stream"] for m in only} == {"porch"}


def test_search_by_an_audio_example_finds_the_sound(history: Path, tmp_path: Path) -> None:
    """Another take of glass breaking (another seed), as a file: found where it was planted."""
    take = make_demo_stream(seed=500, seconds=4.0, events=[PlannedEvent("glass_breaking", 1.0, 3.0)])
    example = take.write_wav(tmp_path / "glass-example.wav")
    starts = stream_starts(history.parent / "state" / HISTORY_FILE)
    matches = search(history, "--example", str(example))
    assert matches[0]["stream"] == "hall" and overlaps(matches[0], starts["hall"] + 6.0, starts["hall"] + 8.0)
    assert search(history, "--example", str(example), "--since", "2099-01-01T00:00") == []


def test_a_corrupt_history_is_moved_aside_the_daemon_runs_on_and_the_history_survives_restarts(
    tmp_path: Path,
) -> None:
    wav = make_demo_stream(seed=34, seconds=8.0, events=[]).write_wav(tmp_path / "quiet.wav")
    state = tmp_path / "state"
    state.mkdir()
    (state / HISTORY_FILE).write_bytes(b"not a database at all" * 300)
    config = write_config(tmp_path, {"room": wav}, state)
    first = run_clapd("run", "-c", str(config), timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "moved aside" in first.stderr, first.stderr[-3000:]
    aside = list(state.glob(f"{HISTORY_FILE}.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"not a database")
    windows = count_windows(state / HISTORY_FILE)
    assert windows == (8.0 - 2.0) / 0.5 + 1  # every window of the 8 s file
    second = run_clapd("run", "-c", str(config), timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert count_windows(state / HISTORY_FILE) == 2 * windows  # kept across the restart, appended to
    assert "moved aside" not in second.stderr


def test_a_daemon_killed_mid_write_leaves_a_sound_history(tmp_path: Path) -> None:
    """SIGKILL (no stop, no flush) while batches are being written: the file opens without being set aside and
    holds at least every batch committed before the kill."""
    wav = make_demo_stream(seed=35, seconds=20.0, events=[]).write_wav(tmp_path / "live.wav")
    state = tmp_path / "state"
    daemon = start_daemon(write_config(tmp_path, {"room": wav}, state, realtime=True))
    try:
        deadline = time.monotonic() + 60
        committed = 0
        while committed < 4 and time.monotonic() < deadline:  # a few flushes in (bounded)
            time.sleep(0.2)
            if (state / HISTORY_FILE).exists():
                committed = count_windows(state / HISTORY_FILE, readonly=True) or 0
        assert committed >= 4, "no batch committed within 60 s"
    finally:
        daemon.send_signal(signal.SIGKILL)
        daemon.communicate(timeout=30)
    store = HistoryStore(state / HISTORY_FILE, HistoryConfig(enabled=True), "space")
    store.open()  # the quick check passes: nothing set aside
    store.close()
    assert store.set_aside == 0 and list(state.glob("*.corrupt-*")) == []
    assert count_windows(state / HISTORY_FILE) >= committed


def count_windows(db_path: Path, *, readonly: bool = False) -> int:
    uri = f"file:{db_path}?mode=ro" if readonly else str(db_path)
    with sqlite3.connect(uri, uri=True) as db:
        try:
            return db.execute("SELECT sum(count) FROM batches").fetchone()[0]
        except sqlite3.OperationalError:  # the daemon has not made the table yet
            return 0


def rows(stream: str, start: float, n: int, dim: int = 64) -> list[HistoryRow]:
    vectors = np.random.default_rng(int(start) % 1000).standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [HistoryRow(stream, start + i, 1.0, -40.0, v) for i, v in enumerate(vectors)]


def test_retention_deletes_the_oldest_windows_by_age_and_by_size(tmp_path: Path) -> None:
    now = datetime.now().timestamp()
    store = HistoryStore(tmp_path / HISTORY_FILE, HistoryConfig(enabled=True, max_days=2, max_mb=0.2), "space")
    store.open()
    store.write(rows("a", now - 3 * 86_400, 100), [])  # older than max_days
    for hours in range(40, 0, -1):  # ~250 KB of newer windows, oldest first
        store.write(rows("a", now - hours * 3600, 100), [])
    store.apply_retention(now)
    with sqlite3.connect(store.path) as db:
        oldest, kept = db.execute("SELECT min(first_utc), sum(count) FROM batches").fetchone()
    assert oldest > now - 40 * 3600 and kept < 40 * 100  # the old day and the oldest of the rest went first
    assert store.deleted_windows == 41 * 100 - kept
    assert store.used_bytes() <= 0.2e6
    store.compact(now + 3600)  # small batches merged per stream, nothing lost, in time order
    with sqlite3.connect(store.path) as db:
        batches = db.execute("SELECT count, times FROM batches ORDER BY first_utc").fetchall()
    times = np.concatenate([np.frombuffer(blob, np.float64) for _, blob in batches])
    assert len(batches) == -(-kept // MAX_BATCH_WINDOWS) and sum(n for n, _ in batches) == kept == times.size
    assert np.all(np.diff(times) > 0)
    store.close()


def test_a_history_locked_by_another_process_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / HISTORY_FILE
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode = WAL")
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")  # another process writing, and not letting go
    store = HistoryStore(path, HistoryConfig(enabled=True), "space")
    store.open()  # waits BUSY_TIMEOUT_SECONDS, then moves it aside
    store.write(rows("a", datetime.now().timestamp(), 3), [])
    holder.execute("ROLLBACK")
    holder.close()  # the other process goes on with its renamed file, and leaves the new one alone
    store.close()
    assert store.set_aside == 1 and len(list(tmp_path.glob(f"{HISTORY_FILE}.corrupt-*Z"))) == 1  # with its WAL
    assert count_windows(path) == 3


def test_int8_embeddings_keep_the_cosine_and_since_parses() -> None:
    vectors = np.random.default_rng(1).standard_normal((500, 512)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    q, scales = quantize(vectors)
    cosines = np.sum(q * scales[:, None] * vectors, axis=1)
    assert q.dtype == np.int8 and cosines.min() > 0.999
    now = datetime.fromisoformat("2026-12-01T12:00:00+00:00")
    assert parse_since("24h", now) == now - timedelta(hours=24)
    assert parse_since("2026-11-30T00:00", now) == datetime.fromisoformat("2026-11-30T00:00+00:00")
    with pytest.raises(ValueError, match="--since"):
        parse_since("yesterday", now)
