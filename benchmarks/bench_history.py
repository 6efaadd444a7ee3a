"""The embedding history's cost and `clapd search`'s speed.

Cost: one stream's windows (1 s hop) through the daemon's own `HistoryRecorder` (the inference thread's side:
dating and queueing) and `HistoryStore` (the history thread's: int8 quantisation, one transaction per flush, then
compaction into rows of up to 1024 windows), for a simulated hour, scaled to a stream-day: bytes on disk and CPU
seconds. Search: 7 days of 1 s windows for 4 streams (2.4 M windows) synthesised straight into the database as
compaction leaves it, with embeddings clustered as audio embeddings are (a few hundred sound types, each window
near its type), and `search_history` timed end to end (SQLite reads, int8 scoring, merging) with the page cache warm.

    .venv/bin/python benchmarks/bench_history.py [--dim 512] [--write]
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from common import REPO, arg_parser, header_lines, publish

from clapd.daemon.config import HistoryConfig
from clapd.daemon.detector import Detections
from clapd.daemon.events import StreamClock
from clapd.daemon.history import (
    HISTORY_FILE,
    MAX_BATCH_WINDOWS,
    HistoryRecorder,
    HistoryRow,
    HistoryStore,
    connect,
    quantize,
)
from clapd.daemon.records import WindowEmbedding
from clapd.daemon.search import search_history

RATE = 48_000
DAY = 86_400
STREAMS = 4
DAYS = 7
TYPES = 300  # sound types the synthetic embeddings cluster around
TYPE_COSINE = 0.8  # a window's typical cosine with its type's centre
PLANTED_WINDOWS = 6  # consecutive windows of one rare sound, once per stream-week, that the query looks for
SEARCHES = 5


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def clustered(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    """n unit embeddings, each near one of the centres (cosine about TYPE_COSINE)."""
    dim = centres.shape[1]
    noise = rng.standard_normal((n, dim), dtype=np.float32) / np.sqrt(dim)
    spread = np.sqrt(1 / TYPE_COSINE**2 - 1)
    return unit(centres[rng.integers(0, len(centres), n)] + spread * noise)


def measure_cost(folder: Path, dim: int, minutes: int, flush_seconds: float) -> dict[str, float]:
    """One stream, a window a second for `minutes`, through the recorder's queue side and the store."""
    rng = np.random.default_rng(0)
    centres = unit(rng.standard_normal((TYPES, dim)))
    embeddings = clustered(rng, centres, minutes * 60)
    started = datetime(2026, 1, 1, tzinfo=timezone.utc)
    config = HistoryConfig(enabled=True, flush_seconds=flush_seconds)
    recorder = HistoryRecorder(config, folder / "unused.sqlite3", "space", {"s": StreamClock(started, RATE)})
    found = [
        Detections([], [], [WindowEmbedding("s", i * RATE, (i + 1) * RATE, e, -40.0, {})])
        for i, e in enumerate(embeddings)
    ]
    cpu = time.process_time()
    for detections in found:
        recorder.record(detections)  # the inference thread's share: date it, queue it
    queue_cpu = time.process_time() - cpu
    store = HistoryStore(folder / HISTORY_FILE, config, "space")
    store.open()
    now = started.timestamp()
    per_flush = int(flush_seconds)
    cpu = time.process_time()
    for i in range(0, len(embeddings), per_flush):
        rows = [
            HistoryRow("s", now + j, 1.0, -40.0, embeddings[j]) for j in range(i, min(i + per_flush, len(embeddings)))
        ]
        store.write(rows, [])
    store.compact(now + minutes * 60 + 3600)
    write_cpu = time.process_time() - cpu
    store.close()
    with sqlite3.connect(folder / HISTORY_FILE) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        rows_left = db.execute("SELECT count(*) FROM batches").fetchone()[0]
    size = (folder / HISTORY_FILE).stat().st_size
    scale = DAY / (minutes * 60)
    return {
        "bytes_per_window": size / len(embeddings),
        "mb_per_day": size * scale / 1e6,
        "queue_cpu_s_per_day": queue_cpu * scale,
        "write_cpu_s_per_day": write_cpu * scale,
        "rows": rows_left,
    }


def synthesise(path: Path, dim: int) -> tuple[np.ndarray, dict[str, tuple[float, float]], float]:
    """7 days x 4 streams of 1 s windows in rows of MAX_BATCH_WINDOWS; one planted rare sound per stream. Returns
    the rare sound's centre (the query), each stream's planted span, and the last window's time."""
    rng = np.random.default_rng(1)
    centres = unit(rng.standard_normal((TYPES, dim)))
    rare = unit(rng.standard_normal(dim))
    end = datetime(2026, 11, 30, tzinfo=timezone.utc).timestamp()
    start = end - DAYS * DAY
    db = connect(path)
    planted = {}
    for s in range(STREAMS):
        stream = f"stream{s}"
        at = int(rng.integers(DAY, (DAYS - 1) * DAY))
        planted[stream] = (start + at, start + at + PLANTED_WINDOWS)
        db.execute("BEGIN")
        for first in range(0, DAYS * DAY, MAX_BATCH_WINDOWS):
            n = min(MAX_BATCH_WINDOWS, DAYS * DAY - first)
            vectors = clustered(rng, centres, n)
            inside = np.arange(first, first + n)
            mask = (inside >= at) & (inside < at + PLANTED_WINDOWS)
            if mask.any():
                vectors[mask] = clustered(rng, rare[None, :], int(mask.sum()))
            q, scales = quantize(vectors)
            times = start + inside.astype(np.float64)
            levels = np.full(n, -40.0, np.float32)
            db.execute(
                "INSERT INTO batches VALUES (NULL, 'space', ?, ?, ?, 1.0, ?, ?, ?, ?, ?, ?)",
                (stream, times[0], times[-1], n, dim, times.tobytes(), levels.tobytes(), scales.tobytes(), q.tobytes()),
            )
        db.execute("COMMIT")
    db.close()
    return rare, planted, end


def time_search(path: Path, query: np.ndarray, since: datetime | None) -> tuple[list[float], list[float], list]:
    """Wall seconds and CPU seconds (this process, both threads) of each search, after one that warms the cache."""
    seconds, cpu, matches = [], [], []
    for _ in range(SEARCHES + 1):
        started, cpu_started = time.perf_counter(), time.process_time()
        matches = search_history(path, query, "space", since=since, top=20)
        seconds.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
    return seconds[1:], cpu[1:], matches


def measure(dim: int, minutes: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="clapd-bench-history-") as tmp:
        folder = Path(tmp)
        costs = {}
        for size in sorted({dim, 64}):
            (folder / f"cost{size}").mkdir()
            costs[size] = measure_cost(folder / f"cost{size}", size, minutes, 10.0)
        path = folder / HISTORY_FILE
        built = time.perf_counter()
        query, planted, end = synthesise(path, dim)
        build_seconds = time.perf_counter() - built
        size_bytes = path.stat().st_size
        all_times, all_cpu, matches = time_search(path, query, None)
        day = datetime.fromtimestamp(end, timezone.utc) - timedelta(days=1)
        day_times, day_cpu, _ = time_search(path, query, day)
    found = sum(
        any(m.stream == s and m.start.timestamp() < b and a < m.end.timestamp() for m in matches[: len(planted)])
        for s, (a, b) in planted.items()
    )
    return {
        "costs": costs,
        "build_seconds": build_seconds,
        "size": size_bytes,
        "all": (all_times, all_cpu),
        "day": (day_times, day_cpu),
        "found": found,
        "planted": len(planted),
    }


def render(dim: int, r: dict) -> str:
    lines = [
        "<!-- bench_history:start -->",
        "## Embedding history and `clapd search`",
        "",
        "Written by `benchmarks/bench_history.py`. Cost: one stream's windows (1 s hop) through the daemon's own "
        "`HistoryRecorder` (the inference thread's share: dating and queueing each window) and `HistoryStore` (the "
        "history thread's: int8 quantisation, a transaction per 10 s flush, compaction into rows of "
        f"{MAX_BATCH_WINDOWS} windows), over a simulated hour scaled to a stream-day; bytes are the file's size. "
        f"Search: {STREAMS} streams x {DAYS} days of 1 s windows synthesised straight into the database as "
        f"compaction leaves it, embeddings clustered around {TYPES} sound types (cosine ~{TYPE_COSINE} with their "
        "type), `search_history` timed end to end (reads, int8 scoring, merging, top 20) with the page cache warm.",
        "",
        *header_lines(["numpy"]),
        f"- SQLite {sqlite3.sqlite_version}; 1-min load average at the end: {os.getloadavg()[0]:.2f} (the 2 cores "
        "were shared with other work)",
        "",
        "| embedding size | bytes per window | MB per stream-day | CPU s per stream-day: inference thread | "
        "history thread |",
        "|---:|---:|---:|---:|---:|",
    ]
    for size, c in r["costs"].items():
        lines.append(
            f"| {size} | {c['bytes_per_window']:.0f} | {c['mb_per_day']:.1f} | {c['queue_cpu_s_per_day']:.2f} | "
            f"{c['write_cpu_s_per_day']:.1f} |"
        )
    lines += [
        "",
        f"Search over {STREAMS * DAYS * DAY:,} windows of {dim} dims (file {r['size'] / 1e9:.2f} GB, built in "
        f"{r['build_seconds']:.0f} s), {SEARCHES} runs each:",
        "",
        "| query | median s | min s | max s | CPU s (median, both threads) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, (times, cpu) in (("all 7 days", r["all"]), ("`--since 24h`", r["day"])):
        lines.append(
            f"| {name} | {statistics.median(times):.2f} | {min(times):.2f} | {max(times):.2f} | "
            f"{statistics.median(cpu):.2f} |"
        )
    lines += [
        "",
        f"- a rare sound planted once per stream ({PLANTED_WINDOWS} windows) was among the top {r['planted']} ranges "
        f"for {r['found']} of {r['planted']} streams",
        "<!-- bench_history:end -->",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = arg_parser(__doc__)
    parser.add_argument("--dim", type=int, default=512, help="embedding size (512: LAION CLAP; the demo's is 64)")
    parser.add_argument("--minutes", type=int, default=60, help="simulated minutes for the cost figures")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    text = render(args.dim, measure(args.dim, args.minutes))
    doc = REPO / "docs" / "benchmarks.md" if args.write else None
    publish(text, doc, "<!-- bench_history:start -->", "<!-- bench_history:end -->")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
