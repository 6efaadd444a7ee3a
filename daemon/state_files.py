"""Files in the state directory, written atomically so a crash or a power cut leaves the old or the new file, never
half of one, and private to the daemon's user: files 0600, the folders made for them 0700, whatever the umask.

Used for what the daemon must remember across restarts besides its MQTT spool: the prompt cache, the Home Assistant
entities it announced, and the detection changes made over MQTT.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

FILE_MODE = 0o600  # state files hold event payloads and detection settings: the daemon's user only
FOLDER_MODE = 0o700


def private_folder(path: Path) -> Path:
    """Create `path` (and missing parents) with FOLDER_MODE, whatever the umask; an existing folder is left as it is
    (it may be systemd's StateDirectory, or one the administrator chose)."""
    if path.is_dir():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=FOLDER_MODE)
    except FileExistsError:
        if path.is_dir():  # made meanwhile by another process: theirs to set
            return path
        raise
    os.chmod(path, FOLDER_MODE)  # mkdir's mode is masked by the umask
    return path


def read_json(path: Path) -> object | None:
    """The file's JSON value, or None when there is no file; OSError and ValueError (bad JSON) pass through."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return json.loads(text)


def write_json_atomically(path: Path, value: object) -> None:
    """`value` as indented JSON, written with `write_atomically`."""
    write_atomically(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file (FILE_MODE) in the same folder, fsync it, rename it over `path`, and fsync
    the folder so the rename itself survives a power cut. The folder is made with `private_folder` if missing."""
    private_folder(path.parent)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), FILE_MODE)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # a platform or file system without folder handles: the rename is done, only less durable
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
