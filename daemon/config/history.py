"""The embedding history: every window's embedding kept in a SQLite file in state_dir, for `clapd search`."""

from __future__ import annotations

from pydantic import Field

from clapd.daemon.config.base import Section


class HistoryConfig(Section):
    """Every embedded window's embedding (int8 with its scale), stream, UTC time and level, written in batches by
    a history thread to `history.sqlite3` in state_dir (SQLite, WAL, one transaction a batch: a power cut loses at
    most the batch being written and the windows not yet flushed). A corrupt or locked file is reported, moved
    aside (`history.sqlite3.corrupt-{UTC time}`) and started anew. Windows below a stream's level gate are not
    embedded, so not kept. About 600 bytes a window with a 512-wide model: 52 MB a stream-day at a 1 s hop."""

    enabled: bool = Field(False, description="keep the history (off by default)")
    max_days: float = Field(30.0, gt=0.0, le=3650.0, description="windows older than this many days are deleted")
    max_mb: float = Field(
        2000.0, gt=0.0, le=10_000_000.0, description="when the file exceeds this many MB the oldest windows are deleted"
    )
    flush_seconds: float = Field(
        10.0,
        ge=0.1,
        le=600.0,
        description="windows are written at least this often, one transaction each; a power cut loses at most this",
    )
    queue_size: int = Field(
        100_000,
        ge=100,
        le=10_000_000,
        description="windows waiting to be written; beyond this they are dropped and counted (a stuck disk)",
    )
