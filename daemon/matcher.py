"""Prompts -> per-detection reference embeddings, and audio embeddings -> per-detection scores.

A detection's score is the probability, under the model's logit scale, that its prompt describes the window
better than its own negative prompts and the shared background prompts: a softmax over that small set, so a
window of ordinary sound is not forced onto the closest detection as a closed-set softmax would.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from clapd.daemon.config import DetectionConfig

logger = logging.getLogger(__name__)


class TextEmbedder(Protocol):
    def embed(self, prompts: list[str]) -> np.ndarray: ...


@dataclass(frozen=True, slots=True)
class DetectionPrompts:
    """One detection's reference embeddings (unit vectors)."""

    name: str
    positive: np.ndarray  # [dim]: the mean of its prompts' embeddings, renormalised
    negatives: np.ndarray  # [k, dim], k >= 0
    streams: frozenset[str] | None  # None: every stream


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


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def build_detections(detections: dict[str, DetectionConfig], cache: PromptCache) -> list[DetectionPrompts]:
    built = []
    for name, config in detections.items():
        positive = _unit(cache.embed(config.prompts).mean(axis=0))
        negatives = cache.embed(config.negative_prompts) if config.negative_prompts else np.zeros((0, positive.size))
        streams = frozenset(config.streams) if config.streams is not None else None
        built.append(DetectionPrompts(name, positive, negatives.astype(np.float32), streams))
    return built


class Matcher:
    """Embedding [dim] of one window of one stream -> {detection: score in [0, 1]}."""

    def __init__(self, detections: list[DetectionPrompts], background: np.ndarray, logit_scale: float) -> None:
        self._detections = detections
        self._background = background.astype(np.float32)  # [m, dim]
        self._logit_scale = logit_scale

    def score(self, stream: str, embedding: np.ndarray) -> dict[str, float]:
        background = self._logit_scale * (self._background @ embedding)
        scores = {}
        for detection in self._detections:
            if detection.streams is not None and stream not in detection.streams:
                continue
            own = self._logit_scale * np.concatenate(
                [[detection.positive @ embedding], detection.negatives @ embedding]
            )
            logits = np.concatenate([own, background]).astype(np.float64)
            probabilities = np.exp(logits - logits.max())
            scores[detection.name] = float(probabilities[0] / probabilities.sum())
        return scores
