"""Prompts -> embeddings: the on-disk prompt cache, and the preparation of a detection set between model calls
(prompts through the text model, audio examples through the audio model: `clapd.daemon.examples`).

The text model is needed only for prompts missing from the cache; it is loaded for one batch of prompts and
released after it (`LazyTextModel`), so a running daemon does not keep the full-size model's ~500 MB.

A cache entry is trusted only after it has been checked: a file that cannot be read (a zero-length one is what a
power cut during a non-atomic write leaves), or that holds anything but a finite unit vector of the text model's
embedding size, is recomputed with a warning and written again. Entries are written atomically. Embeddings once read
or computed are kept in memory, so a control request reads the files of new prompts only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Protocol

import numpy as np

from clapd.daemon.calibration import AutoThresholds
from clapd.daemon.config import DetectionConfig
from clapd.daemon.detector import DetectionSet
from clapd.daemon.embedding_cache import EmbeddingFiles
from clapd.daemon.examples import ExampleEmbedder
from clapd.daemon.matcher import Matcher, build_detections

logger = logging.getLogger(__name__)


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
        self._files = EmbeddingFiles(directory, "prompt cache", embedding_size, logger)
        self._model = model_sha256
        self._known: dict[str, np.ndarray] = {}  # prompt -> its checked embedding, float32 [size], read-only

    def embed(self, prompts: list[str]) -> np.ndarray:
        """Embeddings [len(prompts), size] float32, one per prompt, from memory, the cache files or the text model."""
        for prompt in dict.fromkeys(prompts):
            if prompt not in self._known and (embedding := self._files.read(self._key(prompt))) is not None:
                self._known[prompt] = embedding
        missing = [p for p in dict.fromkeys(prompts) if p not in self._known]
        if missing:
            self._compute(missing)
        return np.stack([self._known[p] for p in prompts])

    def retain(self, prompts: Collection[str]) -> None:
        """Forget the embeddings of every prompt not in `prompts` (those in use), so memory stays bounded by them."""
        for prompt in [p for p in self._known if p not in prompts]:
            del self._known[prompt]

    def _key(self, prompt: str) -> str:
        return f"{self._model}\0{prompt}"

    def _compute(self, prompts: list[str]) -> None:
        computed = np.asarray(self._embedder.embed(prompts), dtype=np.float32)
        if self._files.size is None:
            self._files.size = computed.shape[-1]
        if computed.shape != (len(prompts), self._files.size):
            raise RuntimeError(
                f"the text model gave embeddings of shape {computed.shape} for {len(prompts)} prompts; "
                f"expected [{len(prompts)}, {self._files.size}] (the bundle's embedding size)"
            )
        for prompt, embedding in zip(prompts, computed, strict=True):
            embedding = np.array(embedding)  # its own copy, not a view keeping the whole batch alive
            embedding.setflags(write=False)
            self._known[prompt] = embedding
            self._files.write(self._key(prompt), embedding)


class DetectionPreparer:
    """Embeds detections' prompts and examples into a `DetectionSet`; any thread may call it while audio flows (one
    at a time).

    `embedding_size`: the text model's (`Manifest.embedding_size`), against which cache entries are checked.
    `examples`: embeds audio examples (without it, a detection with examples is refused). Level detections need
    neither model, and a set of level detections only embeds nothing at all. `thresholds`: the calibration that
    `threshold_on: auto` stands for (without it, such a detection is refused).
    """

    def __init__(
        self,
        text: ReleasableTextEmbedder,
        cache_dir: Path | None,
        text_sha256: str,
        logit_scale: float,
        embedding_size: int | None = None,
        *,
        examples: ExampleEmbedder | None = None,
        thresholds: AutoThresholds | None = None,
    ) -> None:
        self._text = text
        self._thresholds = thresholds or AutoThresholds(None, text_sha256)
        self._cache = PromptCache(text, cache_dir, text_sha256, embedding_size)
        self._examples = examples
        self._logit_scale = logit_scale
        self._lock = threading.Lock()  # start-up, reloads and control requests embed one after another

    def prepare(self, detections: Mapping[str, DetectionConfig], background: list[str]) -> DetectionSet:
        """`ExampleError` (a ValueError) names an example file that cannot be used, `CalibrationError` (a ValueError)
        an auto threshold without a calibration; both before anything is embedded."""
        with self._lock:
            bundle_margin = self._examples.bundle_margin if self._examples is not None else None
            resolved = self._thresholds.resolve(detections, background, bundle_margin)
            model_detections = {n: c for n, c in detections.items() if c.level is None}
            try:
                built = build_detections(model_detections, self._cache, self._examples)
                embedded = self._cache.embed(list(background)) if built and background else None
                size = built[0].negatives.shape[1] if built else 0
                matcher = Matcher(built, embedded if embedded is not None else np.zeros((0, size)), self._logit_scale)
            finally:
                self._text.release()
            self._cache.retain(_prompts_in(model_detections, background if built else []))
            if self._examples is not None:
                self._examples.retain()
        return DetectionSet(dict(detections), matcher, resolved)


def _prompts_in(detections: Mapping[str, DetectionConfig], background: list[str]) -> set[str]:
    used = set(background)
    for config in detections.values():
        used.update(config.prompts, config.negative_prompts)
    return used
