"""Log set-up for `clapd run`: plain text for a terminal or journald, or one JSON object per line for collectors;
and `Throttle`, which keeps a problem that recurs at run time from flooding the log."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # stdlib only at run time: the windows (numpy only) use the Throttle
    from clapd.daemon.config import LoggingConfig

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REPEAT_SECONDS = 30.0  # a recurring run-time problem is logged at most this often, with a count


class Throttle:
    """Lets a recurring message through at most once per `interval` seconds (`clock`: monotonic), counting what
    happened meanwhile so the next message can say how often."""

    __slots__ = ("interval", "_clock", "_next", "_pending")

    def __init__(self, interval: float = REPEAT_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._next = -math.inf
        self._pending = 0

    def add(self, count: int = 1) -> int:
        """Count `count` more occurrences; how many to report now (all since the last report), or 0 to stay quiet."""
        self._pending += count
        now = self._clock()
        if now < self._next:
            return 0
        self._next = now + self.interval
        reported, self._pending = self._pending, 0
        return reported


class JsonFormatter(logging.Formatter):
    """time (UTC, ISO 8601), level, logger, thread, message, and the exception's traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "thread": record.threadName,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(config: LoggingConfig, *, verbose: bool = False) -> None:
    """Apply the config's level (`-v` lowers it to info at most) and format to the root logger's handlers."""
    level = getattr(logging, config.level.upper())
    if verbose:
        level = min(level, logging.INFO)
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig()
    root.setLevel(level)
    formatter = JsonFormatter() if config.format == "json" else logging.Formatter(TEXT_FORMAT)
    for handler in root.handlers:
        handler.setFormatter(formatter)
