"""Embeddings on disk, one `.npy` file per key in a state-directory folder: the prompt cache and the example cache.

An entry is trusted only after it has been checked: a file that cannot be read (a zero-length one is what a power cut
during a non-atomic write leaves), or that holds anything but a finite unit vector of the model's embedding size, is
reported (the caller recomputes and writes it again). Entries are written atomically, readable by the daemon's user
only (`clapd.daemon.state_files.write_atomically`).
"""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

import numpy as np

from clapd.daemon.state_files import write_atomically

logger = logging.getLogger(__name__)

NORM_TOLERANCE = 1e-2  # |1 - norm| a cached embedding may have: the models' are unit vectors (fp16: ~1e-3)


class EmbeddingFiles:
    """`directory/<sha256 of key>.npy` per key; None as the directory keeps nothing on disk.

    `what` names the cache in warnings ("prompt cache"), logged to `log`; `size` is the embedding size entries must
    have (None: the first entry read or written sets it).
    """

    def __init__(
        self, directory: Path | None, what: str, size: int | None = None, log: logging.Logger = logger
    ) -> None:
        self._directory = directory
        self._what = what
        self.size = size
        self._log = log  # the owner's logger: warnings name the cache's user

    def path(self, key: str) -> Path | None:
        if self._directory is None:
            return None
        return self._directory / f"{hashlib.sha256(key.encode()).hexdigest()}.npy"

    def read(self, key: str) -> np.ndarray | None:
        """The entry if there is a sound one (read-only); None (with a warning for a bad one) to recompute it."""
        path = self.path(key)
        if path is None:
            return None
        try:
            value = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except Exception as e:  # np.load raises EOFError, ValueError, OSError, SyntaxError... on a damaged file
            self._log.warning(
                "%s entry %s is unreadable (%s); recomputing it", self._what, path.name, str(e) or repr(e)
            )
            return None
        problem = self.problem(value)
        if not isinstance(value, np.ndarray) and hasattr(value, "close"):
            value.close()  # an .npz archive holds its file open
        if problem is not None:
            self._log.warning("%s entry %s %s; recomputing it", self._what, path.name, problem)
            return None
        if self.size is None:
            self.size = value.shape[0]
        value.setflags(write=False)
        return value

    def problem(self, value: object) -> str | None:
        """What is wrong with a value, or None if it is a finite float32 unit vector of the embedding size."""
        if not isinstance(value, np.ndarray) or value.dtype != np.float32:
            return f"holds {getattr(value, 'dtype', type(value).__name__)}, not float32"
        size = self.size
        if value.ndim != 1 or value.shape[0] == 0 or (size is not None and value.shape[0] != size):
            return f"has shape {list(value.shape)}, not [{size if size is not None else 'n'}]"
        if not np.isfinite(value).all():
            return "holds NaN or infinite values"
        norm = float(np.linalg.norm(value))
        if abs(norm - 1.0) > NORM_TOLERANCE:
            return f"is not a unit vector (norm {norm:.4g})"
        return None

    def write(self, key: str, embedding: np.ndarray) -> None:
        """Keep `embedding` under `key`; a disk that refuses costs the next start its time, nothing else."""
        path = self.path(key)
        if path is None:
            return
        buffer = io.BytesIO()
        np.save(buffer, embedding, allow_pickle=False)
        try:
            write_atomically(path, buffer.getvalue())
        except OSError as e:
            self._log.warning("cannot write the %s (%s); it will be recomputed next start", self._what, e)
