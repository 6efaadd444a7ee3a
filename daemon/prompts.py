"""Prompts -> embeddings: the on-disk prompt cache, and the preparation of a detection set between model calls.

The text model is needed only for prompts missing from the cache; it is loaded for one batch of prompts and
released after it (`LazyTextModel`), so a running daemon does not keep the full-size model's ~500 MB.

A cache entry is trusted only after it has been checked: a file that cannot be read (a zero-length one is what a
power cut during a non-atomic write leaves), or that holds anything but a finite unit vector of the text model's
embedding size, is recomputed with a warning and written again. Entries are written atomically. Embeddings once read
or computed are kept in memory, so a control request reads the files of new prompts only.
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Protocol

import numpy as np

from clapd.daemon.config import DetectionConfig
from clapd.daemon.detector import DetectionSet
from clapd.daemon.matcher import Matcher, build_detections
from clapd.daemon.state_files import write_atomically

logger = logging.getLogger(__name__)

NORM_TOLERANCE = 1e-2  # |1 - norm| a cached embedding may have: the text model's are unit vectors (fp16: ~1e-3)


class TextEmbedder(Protocol):
    def embed(self, prompts: list[str]) -> np.ndarray: ...


class ReleasableTextEmbedder(TextEmbedder, Protocol):
    def release(self) -> bool: ...


class PromptCache:
    """Prompt embeddings on disk, keyed by the text model's hash and the prompt: start-up skips the text model.

    `embedding_size` is the text model's (`Manifest.embedding_size`); when None, the first embedding accepted sets it.
    """

    def __init__(
        self, embedder: TextEmbedder, directory: Path | None, model_sha256: str, embedding_size: int | None = None
    ) -> None:
        self._embedder = embedder
        self._directory = directory
        self._model = model_sha256
        self._size = embedding_size
        self._known: dict[str, np.ndarray] = {}  # prompt -> its checked embedding, float32 [size], read-only

    def embed(self, prompts: list[str]) -> np.ndarray:
        """Embeddings [len(prompts), size] float32, one per prompt, from memory, the cache files or the text model."""
        for prompt in dict.fromkeys(prompts):
            if prompt not in self._known and (embedding := self._read(prompt)) is not None:
                self._known[prompt] = embedding
        missing = [p for p in dict.fromkeys(prompts) if p not in self._known]
        if missing:
            self._compute(missing)
        return np.stack([self._known[p] for p in prompts])

    def retain(self, prompts: Collection[str]) -> None:
        """Forget the embeddings of every prompt not in `prompts` (those in use), so memory stays bounded by them."""
        for prompt in [p for p in self._known if p not in prompts]:
            del self._known[prompt]

    def _compute(self, prompts: list[str]) -> None:
        computed = np.asarray(self._embedder.embed(prompts), dtype=np.float32)
        if self._size is None:
            self._size = computed.shape[-1]
        if computed.shape != (len(prompts), self._size):
            raise RuntimeError(
                f"the text model gave embeddings of shape {computed.shape} for {len(prompts)} prompts; "
                f"expected [{len(prompts)}, {self._size}] (the bundle's embedding size)"
            )
        for prompt, embedding in zip(prompts, computed, strict=True):
            embedding = np.array(embedding)  # its own copy, not a view keeping the whole batch alive
            embedding.setflags(write=False)
            self._known[prompt] = embedding
            self._write(prompt, embedding)

    def _path(self, prompt: str) -> Path | None:
        if self._directory is None:
            return None
        key = hashlib.sha256(f"{self._model}\0{prompt}".encode()).hexdigest()
        return self._directory / f"{key}.npy"

    def _read(self, prompt: str) -> np.ndarray | None:
        """The cached embedding if there is a sound one; None (with a warning for a bad one) to recompute it."""
        path = self._path(prompt)
        if path is None:
            return None
        try:
            value = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except Exception as e:  # np.load raises EOFError, ValueError, OSError, SyntaxError... on a damaged file
            logger.warning("prompt cache entry %s is unreadable (%s); recomputing it", path.name, str(e) or repr(e))
            return None
        problem = self._problem(value)
        if not isinstance(value, np.ndarray) and hasattr(value, "close"):
            value.close()  # an .npz archive holds its file open
        if problem is not None:
            logger.warning("prompt cache entry %s %s; recomputing it", path.name, problem)
            return None
        if self._size is None:
            self._size = value.shape[0]
        value.setflags(write=False)
        return value

    def _problem(self, value: object) -> str | None:
        """What is wrong with a cached value, or None if it is a finite unit vector of the embedding size."""
        if not isinstance(value, np.ndarray) or value.dtype != np.float32:
            return f"holds {getattr(value, 'dtype', type(value).__name__)}, not float32"
        size = self._size
        if value.ndim != 1 or value.shape[0] == 0 or (size is not None and value.shape[0] != size):
            return f"has shape {list(value.shape)}, not [{size if size is not None else 'n'}]"
        if not np.isfinite(value).all():
            return "holds NaN or infinite values"
        norm = float(np.linalg.norm(value))
        if abs(norm - 1.0) > NORM_TOLERANCE:
            return f"is not a unit vector (norm {norm:.4g})"
        return None

    def _write(self, prompt: str, embedding: np.ndarray) -> None:
        path = self._path(prompt)
        if path is None:
            return
        buffer = io.BytesIO()
        np.save(buffer, embedding, allow_pickle=False)
        try:
            write_atomically(path, buffer.getvalue())
        except OSError as e:  # a read-only or full disk costs start-up time, nothing else
            logger.warning("cannot write the prompt cache (%s); prompts will be re-embedded next start", e)


class DetectionPreparer:
    """Embeds detections' prompts into a `DetectionSet`; any thread may call it while audio flows (one at a time).

    `embedding_size`: the text model's (`Manifest.embedding_size`), against which cache entries are checked.
    """

    def __init__(
        self,
        text: ReleasableTextEmbedder,
        cache_dir: Path | None,
        text_sha256: str,
        logit_scale: float,
        embedding_size: int | None = None,
    ) -> None:
        self._text = text
        self._cache = PromptCache(text, cache_dir, text_sha256, embedding_size)
        self._logit_scale = logit_scale
        self._lock = threading.Lock()  # start-up, reloads and control requests embed one after another

    def prepare(self, detections: Mapping[str, DetectionConfig], background: list[str]) -> DetectionSet:
        with self._lock:
            try:
                built = build_detections(dict(detections), self._cache)
                matcher = Matcher(built, self._cache.embed(list(background)), self._logit_scale)
            finally:
                self._text.release()
            self._cache.retain(_prompts_in(detections, background))
        return DetectionSet(dict(detections), matcher)


def _prompts_in(detections: Mapping[str, DetectionConfig], background: list[str]) -> set[str]:
    used = set(background)
    for config in detections.values():
        used.update(config.prompts, config.negative_prompts)
    return used
