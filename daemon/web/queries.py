"""What the web page asks of the daemon's files, answered on the web server's threads: the events to list (those
kept in memory and the history's), their clips, and searches over the history.

A search embeds its text with the bundle's text model as `clapd search` does (`LazyTextModel`, loaded for the query
and released after it: the full-size model is ~500 MB the daemon has no use for between searches), never on the
inference thread; one search runs at a time, and recent query embeddings are remembered.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import numpy as np

from clapd.daemon.clip_files import parse_clip_name
from clapd.daemon.history_db import HistoryUnavailable
from clapd.daemon.inference import LazyTextModel
from clapd.daemon.search import Match, parse_since, recent_events, search_history
from clapd.daemon.web.live import LiveEvent

logger = logging.getLogger(__name__)

QUERY_CACHE = 32  # query texts whose embeddings are remembered
MAX_QUERY_CHARS = 500
MAX_TOP = 100
CLIP_MEDIA_TYPES = {".flac": "audio/flac", ".opus": "audio/ogg"}  # clapd writes Opus in an Ogg container


class QueryError(ValueError):
    """A search the page cannot run: the message says why (shown to the user)."""


@dataclass(frozen=True, slots=True)
class Clips:
    """The clips folder: only files named as clapd names clips, directly inside it, are ever served."""

    directory: Path

    def file(self, name: str) -> Path | None:
        """The clip called `name` if it is one of ours and on disk; None for anything else (another file, a path,
        `..`, a link)."""
        if "/" in name or "\\" in name or parse_clip_name(Path(name)) is None:
            return None
        path = self.directory / name
        if path.is_symlink() or not path.is_file():
            return None
        return path

    def url(self, clip: str | None) -> str | None:
        """The page's URL of an event's clip (a path as the events carry it), once its file exists."""
        if clip is None:
            return None
        name = Path(clip).name
        return f"clips/{quote(name)}" if self.file(name) is not None else None


class Searcher:
    """Text searches over the history file, one at a time."""

    def __init__(self, history: Path | None, text: LazyTextModel, space: str) -> None:
        self._history = history  # None: the history is off
        self._text = text
        self._space = space
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def search(self, text: str, since: str | None, stream: str | None, top: int) -> list[Match]:
        """Ranked time ranges; `QueryError` says why there are none to give (no history, a bad argument, busy)."""
        if self._history is None:
            raise QueryError("the history is off: set history.enabled in the config to search the past")
        text = text.strip()
        if not text or len(text) > MAX_QUERY_CHARS:
            raise QueryError(f"give a text of 1 to {MAX_QUERY_CHARS} characters")
        try:
            start = parse_since(since, datetime.now(timezone.utc)) if since else None
        except ValueError as e:
            raise QueryError(str(e).replace("--since", "since")) from e
        if not self._lock.acquire(blocking=False):
            raise QueryError("a search is running; try again when it has finished")
        try:
            query = self._embedding(text)
            if not self._history.exists():
                return []
            return search_history(self._history, query, self._space, since=start, stream=stream, top=top)
        except HistoryUnavailable as e:
            raise QueryError(f"the history cannot be read now: {e}") from e
        finally:
            self._lock.release()

    def _embedding(self, text: str) -> np.ndarray:
        cached = self._cache.get(text)
        if cached is not None:
            self._cache.move_to_end(text)
            return cached
        try:
            embedding = np.asarray(self._text.embed([text])[0], dtype=np.float32)
        finally:
            self._text.release()
        embedding /= np.linalg.norm(embedding)
        self._cache[text] = embedding
        if len(self._cache) > QUERY_CACHE:
            self._cache.popitem(last=False)
        return embedding


def listed_events(live: list[LiveEvent], history: Path | None, limit: int) -> list[LiveEvent]:
    """The events in memory (newest first) and, before them, the history's ended ones (those of earlier runs too),
    newest first, at most `limit`."""
    events = {event.event_id: event for event in live}
    if history is not None and history.exists():
        try:
            for record in recent_events(history, limit=limit):
                if record.event_id not in events:
                    events[record.event_id] = LiveEvent(
                        record.event_id,
                        record.stream,
                        record.detection,
                        record.start.isoformat(timespec="milliseconds"),
                        record.end.isoformat(timespec="milliseconds"),
                        record.peak_score,
                        record.clip,
                    )
        except HistoryUnavailable as e:
            logger.warning("web: the history's events cannot be read now: %s", e)
    return sorted(events.values(), key=lambda e: (e.end_utc or "~", e.start_utc), reverse=True)[:limit]
