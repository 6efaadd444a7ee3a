"""Hold every exported file against PyTorch fp32 before it is written into a bundle.

A bare cosine cannot fail on random weights (text embeddings of different prompts sit at cosine ~0.99), so each
file is also judged by its error relative to the distance between different inputs' embeddings.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from clapd.daemon.manifest import Parity, Precision
from clapd.daemon.windows import repeat_pad

MIN_COSINE: dict[str, float] = {"fp32": 0.99999, "fp16": 0.999, "int8": 0.99}
# An error this fraction of the gap between the two closest different inputs could swap their ranks. int8's
# error is reported, not barred: on small random models it exceeds the gap between near-silent clips while
# its cosine bar still holds, and the bar for int8 is the cosine.
MAX_RELATIVE_ERROR: dict[str, float] = {"fp32": 0.05, "fp16": 0.25, "int8": math.inf}

# Largest change of an embedding element (unit vectors) between running a clip alone and in a batch that still
# counts as batch-invariant: GEMM blocking differs with the batch size, dynamic int8 scales differ far more.
BATCH_INVARIANCE_TOLERANCE = 1e-3

VERIFICATION_PROMPTS = (
    "a dog barking",
    "a smoke alarm beeping",
    "glass breaking",
    "someone knocking on a door",
    "a car engine idling",
    "rain falling on a roof",
    "a baby crying in the next room",
    "",
)


class VerificationError(Exception):
    """An exported file that is too far from PyTorch; the message carries the figures."""


@dataclass(frozen=True, slots=True)
class Comparison:
    min_cosine: float
    max_abs_error: float
    relative_error: float


def verification_clips(sample_rate: int, window_samples: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded test audio covering the front end's extremes, each [window_samples] float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(window_samples) / sample_rate
    # Speech-like: a gliding 90-220 Hz voice with 1/k harmonics, voiced in 4 Hz syllables.
    f0 = 150 + 60 * np.sin(2 * np.pi * 0.3 * t) + 10 * rng.standard_normal() * np.sin(2 * np.pi * 5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 30))
    syllables = np.clip(np.sin(2 * np.pi * 4 * t + rng.uniform(0, np.pi)), 0, None) ** 2
    second = sample_rate
    chirp = np.sin(2 * np.pi * (200 + 4000 * np.arange(second) / second) * np.arange(second) / sample_rate)
    clips = {
        "silence": np.zeros(window_samples),
        "sine_1k_full_scale": np.sin(2 * np.pi * 1000 * t),
        "white_noise_full_scale": rng.uniform(-1.0, 1.0, window_samples),
        "speech_like": 0.3 * voice * syllables / np.abs(voice).max(),
        "clicks_over_hiss": 0.8 * (rng.random(window_samples) < 3 / sample_rate) + 1e-3 * rng.standard_normal(t.size),
        "chirp_1s_repeat_padded": repeat_pad(0.5 * chirp, window_samples),
    }
    return {name: clip.astype(np.float32) for name, clip in clips.items()}


def compare(reference: np.ndarray, candidate: np.ndarray) -> Comparison:
    """Embeddings [inputs, dim]: min cosine, max abs error, and max error over the closest pair's distance."""
    ref = reference.astype(np.float64)
    got = candidate.astype(np.float64)
    cosine = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    errors = np.linalg.norm(ref - got, axis=1)
    gaps = np.linalg.norm(ref[:, None, :] - ref[None, :, :], axis=-1)
    closest_gap = gaps[~np.eye(len(ref), dtype=bool)].min()
    return Comparison(
        min_cosine=float(cosine.min()),
        max_abs_error=float(np.abs(ref - got).max()),
        relative_error=float(errors.max() / max(closest_gap, 1e-12)),
    )


def check(name: str, precision: Precision, comparison: Comparison, inputs: int) -> Parity:
    """Parity figures for the manifest, or `VerificationError` when a bar is missed."""
    parity = Parity(
        inputs=inputs,
        min_cosine=comparison.min_cosine,
        max_abs_error=comparison.max_abs_error,
        relative_error=comparison.relative_error,
        min_cosine_required=MIN_COSINE[precision],
    )
    too_far = comparison.relative_error > MAX_RELATIVE_ERROR[precision]
    if comparison.min_cosine < MIN_COSINE[precision] or too_far:
        raise VerificationError(
            f"{name} ({precision}) fails verification against PyTorch fp32: min cosine "
            f"{comparison.min_cosine:.7f} (needs >= {MIN_COSINE[precision]}), max abs error "
            f"{comparison.max_abs_error:.3g}, relative error {comparison.relative_error:.3g} "
            f"(needs <= {MAX_RELATIVE_ERROR[precision]})"
        )
    return parity


def cpu_session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # fp16 graphs on the CPU warn about every inserted cast
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def run_batched(run: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray, batch: int = 4) -> np.ndarray:
    """Run in small batches so that full-size models stay within a few GB."""
    return np.concatenate([run(inputs[i : i + batch]) for i in range(0, len(inputs), batch)])
