"""Prompts -> embeddings: the on-disk prompt cache, and the preparation of a detection set between model calls.

The text model is needed only for prompts missing from the cache; it is loaded for one batch of prompts and
released after it (`LazyTextModel`), so a running daemon does not keep the full-size model's ~500 MB.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import numpy as np

from clapd.daemon.config import DetectionConfig
from clapd.daemon.detector import DetectionSet
from clapd.daemon.matcher import Matcher, build_detections

logger = logging.getLogger(__name__)


class TextEmbedder(Protocol):
    def embed(self, prompts: list[str]) -> np.ndarray: ...


class ReleasableTextEmbedder(TextEmbedder, Protocol):
    def release(self) -> bool: ...


class PromptCache:
    """Prompt embeddings on disk, keyed by the text model's hash and the prompt: start-up skips the text model."""

    def __init__(self, embedder: TextEmbedder, directory: Path | None, model_sha256: str) -> None:
        self._embedder = embedder
        self._directory = directory
        self._model = model_sha256

    def embed(self, prompts: list[str]) -> np.ndarray:
        cached = {p: self._read(p) for p in dict.fromkeys(prompts)}
        missing = [p for p, e in cached.items() if e is None]
        if missing:
            for prompt, embedding in zip(missing, self._embedder.embed(missing), strict=True):
                cached[prompt] = embedding
                self._write(prompt, embedding)
        return np.stack([cached[p] for p in prompts]).astype(np.float32)

    def _path(self, prompt: str) -> Path | None:
        if self._directory is None:
            return None
        key = hashlib.sha256(f"{self._model}\0{prompt}".encode()).hexdigest()
        return self._directory / f"{key}.npy"

    def _read(self, prompt: str) -> np.ndarray | None:
        path = self._path(prompt)
        if path is None or not path.is_file():
            return None
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            logger.warning("prompt cache entry %s is unreadable; recomputing it", path.name)
            return None

    def _write(self, prompt: str, embedding: np.ndarray) -> None:
        path = self._path(prompt)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, embedding)
        except OSError as e:  # a read-only or full disk costs start-up time, nothing else
            logger.warning("cannot write the prompt cache (%s); prompts will be re-embedded next start", e)


class DetectionPreparer:
    """Embeds detections' prompts into a `DetectionSet`; any thread may call it while audio flows (one at a time)."""

    def __init__(
        self, text: ReleasableTextEmbedder, cache_dir: Path | None, text_sha256: str, logit_scale: float
    ) -> None:
        self._text = text
        self._cache = PromptCache(text, cache_dir, text_sha256)
        self._logit_scale = logit_scale
        self._lock = threading.Lock()  # start-up, reloads and control requests embed one after another

    def prepare(self, detections: Mapping[str, DetectionConfig], background: list[str]) -> DetectionSet:
        with self._lock:
            try:
                built = build_detections(dict(detections), self._cache)
                matcher = Matcher(built, self._cache.embed(list(background)), self._logit_scale)
            finally:
                self._text.release()
        return DetectionSet(dict(detections), matcher)
