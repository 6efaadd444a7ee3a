"""Prompts and examples -> per-detection reference embeddings, and audio embeddings -> per-detection scores.

A detection's score is the probability, under the model's logit scale, that the window sounds like the detection
rather than like its own negatives or the shared background prompts: a softmax over that small set, so a window of
ordinary sound is not forced onto the closest detection as a closed-set softmax would.

The detection's own logit (`detection_logits`) combines text and audio examples: the larger of

    text:     s * cos(window, mean of its prompts' embeddings, renormalised)
    examples: s * (cos(window, mean of its examples' embeddings, renormalised) - margin)

and each negative prompt competes with `s * cos`, each negative example with `s * (cos - negative margin)`, each
background prompt with `s * cos` (s: the logit scale).

The margin (`example_margin`) puts recordings on the text's scale: a window matches a recording of the same sound
far more closely than any text describes it, by an amount that is the model's own. So a bundle declares its margin
(`Manifest.example_margin`, measured when it is built: how much closer a recording of a sound comes to other
recordings of it than to its caption, `clapd.export.example_margin`), and a detection that sets none takes it (0.3
for a bundle that declares none). Why it must be the model's: on the demo model shipped until 2026-12-02 a sound's
cosine with another recording of it is 0.8 to 1 and with its best description about 0.7 (its measured margin: 0.32),
and over three held-out demo streams (examples-only detections of seven classes) a margin of 0 gave 37 starts on
other sounds, 0.2 gave 5, 0.3 and 0.4 none. A candidate trained to tell recordings apart (`cand5`,
docs/benchmarks.md) matches captions at about 0.3 and other recordings at 0.7 to 0.95 (its measured margin: 0.51):
at 0.3 its examples fired on neighbours 2 to 7 times as often as at 0.51 and lost to text on the kettle whistle; at
0.51 they beat text on every new sound of bench_fewshot; the demo model shipped since then is trained the same way
and measures 0.53. Negative examples have their own setting (`negative_example_margin`, defaulting to the same
measured margin): the smaller it is, the more a negative example takes away, so the two can be set apart.

The larger of the two logits, not their mean, so an example can teach a detection what its words do not say, and
adding examples never lowers a score on audio like them. Examples are averaged into one reference rather than each
competing on its own: with five examples per class, the best-matching example fired on several times as many other
sounds as their mean did.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from clapd.daemon.config import EXAMPLE_MARGIN, NEGATIVE_EXAMPLE_MARGIN, DetectionConfig

if TYPE_CHECKING:
    from clapd.daemon.examples import ExampleEmbedder
    from clapd.daemon.prompts import PromptCache

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DetectionPrompts:
    """One detection's reference embeddings (unit vectors)."""

    name: str
    positive: np.ndarray | None  # [dim]: the mean of its prompts' embeddings, renormalised; None without prompts
    negatives: np.ndarray  # [k, dim], k >= 0: its negative prompts
    streams: frozenset[str] | None  # None: every stream
    example: np.ndarray | None = None  # [dim]: the mean of its examples' embeddings, renormalised; None: no examples
    negative_examples: np.ndarray | None = None  # [j, dim]: one per negative example file; None: none
    margin: float = EXAMPLE_MARGIN  # cosine taken off matches with examples
    negative_margin: float = NEGATIVE_EXAMPLE_MARGIN  # and off matches with negative examples


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def detection_logits(detection: DetectionPrompts, embedding: np.ndarray, logit_scale: float) -> np.ndarray:
    """[the detection's logit, each negative prompt's, each negative example's] for one window's embedding."""
    own = []
    if detection.positive is not None:
        own.append(float(detection.positive @ embedding))
    if detection.example is not None:
        own.append(float(detection.example @ embedding) - detection.margin)
    parts = [np.array([max(own)]), detection.negatives @ embedding]
    if detection.negative_examples is not None:
        parts.append(detection.negative_examples @ embedding - detection.negative_margin)
    return logit_scale * np.concatenate(parts).astype(np.float64)


def margins_for(config: DetectionConfig, bundle_margin: float | None) -> tuple[float, float]:
    """(example margin, negative example margin) the detection scores with: its own, else the bundle's (measured
    on its model), else the defaults. A detection without examples uses no margin, so it gets the defaults
    whatever the bundle declares: its calibration does not depend on the bundle's margin."""
    bundle = bundle_margin if config.examples or config.negative_examples else None
    return (
        _margin(config.example_margin, bundle, EXAMPLE_MARGIN),
        _margin(config.negative_example_margin, bundle, NEGATIVE_EXAMPLE_MARGIN),
    )


def _margin(configured: float | None, bundle: float | None, fallback: float) -> float:
    return configured if configured is not None else bundle if bundle is not None else fallback


def build_detections(
    detections: dict[str, DetectionConfig], cache: PromptCache, examples: ExampleEmbedder | None = None
) -> list[DetectionPrompts]:
    """Model detections (not `level` ones) with their prompts and examples embedded."""
    built = []
    bundle_margin = examples.bundle_margin if examples is not None else None
    for name, config in detections.items():
        if config.level is not None:
            continue
        if (config.examples or config.negative_examples) and examples is None:
            raise ValueError(f"detection {name!r} has examples, but no audio model was given to embed them")
        positive = _unit(cache.embed(config.prompts).mean(axis=0)) if config.prompts else None
        example = _unit(examples.embed(config.examples).mean(axis=0)) if examples and config.examples else None
        negative_examples = examples.embed(config.negative_examples) if examples and config.negative_examples else None
        size = next(v.size for v in (positive, example) if v is not None)
        negatives = cache.embed(config.negative_prompts) if config.negative_prompts else np.zeros((0, size))
        streams = frozenset(config.streams) if config.streams is not None else None
        built.append(
            DetectionPrompts(
                name,
                positive,
                negatives.astype(np.float32),
                streams,
                example,
                negative_examples,
                *margins_for(config, bundle_margin),
            )
        )
    return built


class Matcher:
    """Embedding [dim] of one window of one stream -> {detection: score in [0, 1]}, for the model detections."""

    def __init__(self, detections: list[DetectionPrompts], background: np.ndarray, logit_scale: float) -> None:
        self._detections = detections
        self._background = background.astype(np.float32)  # [m, dim]
        self._logit_scale = logit_scale

    def watches(self, stream: str) -> bool:
        """Whether any detection scores this stream's windows (else they need no model call)."""
        return any(d.streams is None or stream in d.streams for d in self._detections)

    def names(self, stream: str) -> list[str]:
        """The detections that score this stream's windows."""
        return [d.name for d in self._detections if d.streams is None or stream in d.streams]

    def score(self, stream: str, embedding: np.ndarray) -> dict[str, float]:
        background = self._logit_scale * (self._background @ embedding)
        scores = {}
        for detection in self._detections:
            if detection.streams is not None and stream not in detection.streams:
                continue
            logits = np.concatenate([detection_logits(detection, embedding, self._logit_scale), background])
            probabilities = np.exp(logits - logits.max())
            scores[detection.name] = float(probabilities[0] / probabilities.sum())
        return scores
