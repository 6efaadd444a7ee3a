"""Searching the embedding history (`clapd.daemon.history`): past moments ranked by cosine with a query embedding
(a text through the bundle's text model, or an audio example), adjacent windows merged into time ranges.

A reader thread streams the stored batches out of SQLite (memory-mapped) while the caller scores them: each batch's
int8 rows cast to float32 into one reused buffer, one matrix-vector product, times each row's scale; only the best
`CANDIDATES_PER_RESULT` windows per result asked for are kept every `CHUNK_WINDOWS`, so memory stays bounded
whatever the history's size. Around each best window left, the touching windows of its stream that score within
`RANGE_DROP` of it are merged into one time range; ranges are ranked by their best window.
This module is also the API a local web page would use (`search_history`, `recent_events`).
"""

from __future__ import annotations

import json
import queue
import re
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from clapd.daemon.config import ClapdConfig
from clapd.daemon.history import MAX_BATCH_WINDOWS, HistoryUnavailable, connect

CHUNK_WINDOWS = 65_536  # windows scored between two cuts of the candidates to the best ones
PREFETCH_ROWS = 8  # batches read ahead of the scoring
MMAP_BYTES = 1 << 31  # SQLite's default build caps memory-mapped reads at about 2 GB
CANDIDATES_PER_RESULT = 25  # best windows kept per result asked for: a long sound spans many windows
RANGE_DROP = 0.1  # cosine: a range takes the touching windows within this of its best one
TOUCHING_SECONDS = 1e-3  # windows this close are adjacent (times are float seconds)
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


@dataclass(frozen=True, slots=True)
class Match:
    """A stretch of one stream that sounded like the query."""

    stream: str
    start: datetime  # UTC: the first window's start
    end: datetime  # UTC: the last window's end
    score: float  # the best window's cosine with the query (-1 to 1)
    windows: int  # windows merged into it
    clip: str | None  # the path of an event's clip overlapping it, if one exists on disk


@dataclass(frozen=True, slots=True)
class EventRecord:
    """An ended event, as the history keeps it."""

    event_id: str
    stream: str
    detection: str
    start: datetime
    end: datetime
    peak_score: float
    clip: str | None  # the clip's path as published; the file may not exist (dropped, withheld, deleted)


def parse_since(text: str, now: datetime) -> datetime:
    """`90s`, `30m`, `24h`, `7d`, `2w` before `now`, or an ISO 8601 time (UTC if it names no zone)."""
    match = _DURATION.match(text.strip())
    if match:
        return now - timedelta(seconds=float(match[1]) * _UNIT_SECONDS[match[2]])
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError as e:
        raise ValueError(f"--since {text!r}: give a duration (30m, 24h, 7d) or an ISO 8601 time") from e
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


@dataclass(frozen=True, slots=True)
class _Candidates:
    """The best windows so far (parallel arrays)."""

    scores: np.ndarray  # float32
    times: np.ndarray  # float64 epoch seconds
    seconds: np.ndarray  # float64 window length
    streams: np.ndarray  # object: stream names

    @classmethod
    def empty(cls) -> _Candidates:
        return cls(np.zeros(0, np.float32), np.zeros(0), np.zeros(0), np.zeros(0, object))

    def best(self, keep: int) -> _Candidates:
        if self.scores.size <= keep:
            return self
        index = np.argpartition(-self.scores, keep - 1)[:keep]
        return _Candidates(self.scores[index], self.times[index], self.seconds[index], self.streams[index])


def search_history(
    path: Path,
    query: np.ndarray,
    space: str,
    *,
    since: datetime | None = None,
    stream: str | None = None,
    top: int = 20,
) -> list[Match]:
    """The `top` time ranges most like `query` (a unit embedding of the history's size) in the history at `path`;
    `HistoryUnavailable` when the file cannot be read."""
    query = np.ascontiguousarray(query, dtype=np.float32)
    sql = "SELECT stream, window_seconds, count, times, scales, embeddings FROM batches WHERE space = ? AND dim = ?"
    args: list[object] = [space, query.size]
    if since is not None:
        sql += " AND last_utc >= ?"
        args.append(since.timestamp())
    if stream is not None:
        sql += " AND stream = ?"
        args.append(stream)
    found = _best_windows(_prefetched(path, sql, args), query, top * CANDIDATES_PER_RESULT)
    db = connect(path, readonly=True)
    try:
        return [_with_clip(db, match) for match in _merge(found)[:top]]
    except sqlite3.Error as e:
        raise HistoryUnavailable(f"{path}: {e}") from e
    finally:
        db.close()


def recent_events(path: Path, *, limit: int = 50, since: datetime | None = None) -> list[EventRecord]:
    """The latest ended events, newest first, with their clips' paths."""
    db = connect(path, readonly=True)
    try:
        rows = db.execute(
            "SELECT event_id, stream, detection, start_utc, end_utc, peak_score, clip FROM events "
            "WHERE end_utc >= ? ORDER BY end_utc DESC LIMIT ?",
            (since.timestamp() if since is not None else 0.0, limit),
        ).fetchall()
    except sqlite3.Error as e:
        raise HistoryUnavailable(f"{path}: {e}") from e
    finally:
        db.close()
    return [EventRecord(r[0], r[1], r[2], _utc(r[3]), _utc(r[4]), r[5], r[6]) for r in rows]


def _prefetched(path: Path, sql: str, args: list[object]) -> Iterator[tuple]:
    """The query's rows, read by a thread of its own while the caller scores the previous ones (SQLite lets go of
    the GIL while it reads, numpy while it scores: the two share two cores). The thread ends with the iteration."""
    rows: queue.Queue[tuple | BaseException | None] = queue.Queue(PREFETCH_ROWS)
    stop = threading.Event()

    def put(item: tuple | BaseException | None) -> bool:
        while not stop.is_set():
            try:
                rows.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            db = connect(path, readonly=True)
            try:
                db.execute(f"PRAGMA mmap_size = {MMAP_BYTES}")  # blobs read from the page cache without a copy
                for row in db.execute(sql, args):
                    if not put(row):
                        return
            finally:
                db.close()
        except (sqlite3.Error, HistoryUnavailable) as e:
            put(e)
        put(None)

    reader = threading.Thread(target=read, name="history-reader", daemon=True)
    reader.start()
    try:
        while (item := rows.get()) is not None:
            if isinstance(item, BaseException):
                raise HistoryUnavailable(f"{path}: {item}") from item
            yield item
    finally:
        stop.set()
        reader.join()


def _best_windows(rows: Iterator[tuple], query: np.ndarray, keep: int) -> _Candidates:
    """The `keep` best-scoring windows of all the rows, scored a batch at a time into one reused buffer.

    BLAS on one thread: a matrix-vector product this size gains nothing from a second thread (measured: the same wall
    time for twice the CPU), and in the daemon (the web page's search) it would take a core from the model."""
    buffer = np.empty((MAX_BATCH_WINDOWS, query.size), dtype=np.float32)
    found, pending, waiting = _Candidates.empty(), [], 0
    with threadpool_limits(limits=1, user_api="blas"):
        for row in rows:
            pending.append(_score(row, query, buffer))
            waiting += row[2]
            if waiting >= CHUNK_WINDOWS:
                found, pending, waiting = _joined([found, *pending]).best(keep), [], 0
    return _joined([found, *pending]).best(keep)


def _score(row: tuple, query: np.ndarray, buffer: np.ndarray) -> _Candidates:
    """Cosine of each window of one batch with the query: (int8 row . query) * scale (rows are ~unit vectors)."""
    stream, seconds, count, times, scales, embeddings = row
    if count > buffer.shape[0]:
        buffer = np.empty((count, query.size), dtype=np.float32)
    block = buffer[:count]
    np.copyto(block, np.frombuffer(embeddings, np.int8).reshape(count, query.size), casting="unsafe")
    scores = (block @ query) * np.frombuffer(scales, np.float32)
    return _Candidates(
        scores, np.frombuffer(times, np.float64), np.full(count, seconds), np.full(count, stream, object)
    )


def _joined(parts: list[_Candidates]) -> _Candidates:
    return _Candidates(*(np.concatenate([getattr(p, name) for p in parts]) for name in _Candidates.__slots__))


def _merge(found: _Candidates) -> list[Match]:
    """Ranges around peaks, best first: the best window left, grown over the touching windows of its stream that
    score within RANGE_DROP of it; those windows are then taken, and the next best left starts the next range."""
    order = np.lexsort((found.times, found.streams.astype(str)))
    matches: list[Match] = []
    for run in _touching_runs(found, [int(i) for i in order]):
        left = dict.fromkeys(range(len(run)))  # positions in the run not yet in a range
        while left:
            peak = max(left, key=lambda k: found.scores[run[k]])
            floor = found.scores[run[peak]] - RANGE_DROP
            lo = hi = peak
            while lo - 1 in left and found.scores[run[lo - 1]] >= floor:
                lo -= 1
            while hi + 1 in left and found.scores[run[hi + 1]] >= floor:
                hi += 1
            for k in range(lo, hi + 1):
                del left[k]
            matches.append(_range(found, run[lo : hi + 1]))
    return sorted(matches, key=lambda m: (-m.score, m.start))


def _touching_runs(found: _Candidates, order: list[int]) -> list[list[int]]:
    """The candidates (sorted by stream and time) cut into runs of one stream's overlapping or touching windows."""
    runs: list[list[int]] = []
    for i in order:
        last = runs[-1][-1] if runs else None
        if last is not None and found.streams[i] == found.streams[last]:
            if found.times[i] <= found.times[last] + found.seconds[last] + TOUCHING_SECONDS:
                runs[-1].append(i)
                continue
        runs.append([i])
    return runs


def _range(found: _Candidates, members: list[int]) -> Match:
    ends = found.times[members] + found.seconds[members]
    best = min(1.0, float(found.scores[members].max()))  # int8 rounding can lift a perfect match a little above 1
    return Match(
        str(found.streams[members[0]]), _utc(found.times[members[0]]), _utc(ends.max()), best, len(members), None
    )


def _with_clip(db: sqlite3.Connection, match: Match) -> Match:
    """The match with the clip of an event of its stream that overlaps it, if the file is there."""
    rows = db.execute(
        "SELECT clip FROM events WHERE stream = ? AND clip IS NOT NULL AND start_utc < ? AND end_utc > ? "
        "ORDER BY start_utc",
        (match.stream, match.end.timestamp(), match.start.timestamp()),
    ).fetchall()
    for (clip,) in rows:
        if Path(clip).is_file():
            return Match(match.stream, match.start, match.end, match.score, match.windows, clip)
    return match


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(float(seconds), timezone.utc)


def query_embedding(config: ClapdConfig, text: str | None, example: Path | None) -> tuple[np.ndarray, str]:
    """(unit query embedding, embedding space) for a text (the bundle's text model), an audio example (embedded as
    a detection's examples are) or both (their mean); BundleError, ExampleError (a ValueError) say why not."""
    from clapd.daemon.assembly import resolve_bundle
    from clapd.daemon.examples import ExampleEmbedder
    from clapd.daemon.inference import AudioModel, LazyTextModel, open_bundle
    from clapd.daemon.manifest import window_samples_for

    bundle = resolve_bundle(config)
    manifest = open_bundle(bundle)
    parts = []
    if text is not None:
        parts.append(LazyTextModel(bundle, manifest, config.model).embed([text])[0])
    if example is not None:
        window, hop = window_samples_for(config.windows, manifest, bundle=bundle)
        audio = AudioModel(bundle, manifest, config.model)
        embedder = ExampleEmbedder.for_model(audio, manifest, window, hop)
        parts.append(embedder.embed([str(example)])[0])
    units = [np.asarray(p, dtype=np.float32) / np.linalg.norm(p) for p in parts]
    query = np.mean(units, axis=0)
    return (query / np.linalg.norm(query)).astype(np.float32), manifest.text_side_sha256()


def format_table(matches: list[Match]) -> str:
    """One line per range: UTC start and end, stream, score, clip."""
    if not matches:
        return "no matches"
    lines = [f"{'start (UTC)':<23} {'end (UTC)':<23} {'stream':<16} {'score':>6}  clip"]
    for m in matches:
        start, end = _shown(m.start), _shown(m.end)
        lines.append(f"{start:<23} {end:<23} {m.stream:<16} {m.score:>6.3f}  {m.clip or '-'}")
    return "\n".join(lines)


def format_json(matches: list[Match]) -> str:
    return json.dumps(
        [
            {
                "stream": m.stream,
                "start_utc": m.start.isoformat(timespec="milliseconds"),
                "end_utc": m.end.isoformat(timespec="milliseconds"),
                "score": round(m.score, 6),
                "windows": m.windows,
                "clip": m.clip,
            }
            for m in matches
        ],
        indent=2,
    )


def _shown(when: datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S.") + f"{when.microsecond // 1000:03d}"
