"""Small JSON files in the state directory, written atomically so a crash leaves the old or the new file, never half.

Used for what the daemon must remember across restarts besides its MQTT spool: the Home Assistant entities it
announced, and the detection changes made over MQTT.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def read_json(path: Path) -> object | None:
    """The file's JSON value, or None when there is no file; OSError and ValueError (bad JSON) pass through."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return json.loads(text)


def write_json_atomically(path: Path, value: object) -> None:
    """Write to a temporary file in the same directory, fsync it, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(value, file, indent=2, sort_keys=True)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
