"""Log set-up for `clapd run`: plain text for a terminal or journald, or one JSON object per line for collectors."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

from clapd.daemon.config import LoggingConfig

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


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
