"""Prompts -> per-detection reference embeddings, and audio embeddings -> per-detection scores.

A detection's score is the probability, under the model's logit scale, that its prompt describes the window
better than its own negative prompts and the shared background prompts: a softmax over that small set, so a
window of ordinary sound is not forced onto the closest detection as a closed-set softmax would.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from clapd.daemon.config import DetectionConfig

if TYPE_CHECKING:
    from clapd.daemon.prompts import PromptCache

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DetectionPrompts:
    """One detection's reference embeddings (unit vectors)."""

    name: str
    positive: np.ndarray  # [dim]: the mean of its prompts' embeddings, renormalised
    negatives: np.ndarray  # [k, dim], k >= 0
    streams: frozenset[str] | None  # None: every stream


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
