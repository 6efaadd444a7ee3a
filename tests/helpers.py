"""Helpers shared by the tests (importable: pytest puts tests/ on the path)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch
from transformers import ClapFeatureExtractor, ClapModel

SAMPLE_RATE = 48_000
WINDOW = 480_000  # 10 s at 48 kHz


def run_clapd(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The real console entry point, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "clapd", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def hf_audio_embeddings(model: ClapModel, extractor: ClapFeatureExtractor, clips: list[np.ndarray]) -> np.ndarray:
    """The reference: transformers' feature extractor (repeat-pads short clips) + `get_audio_features`.

    With fusion, the extractor marks one random clip of a batch with no long clip as "longer" (a training-time
    augmentation LAION's data loader has); clips of at most 10 s are not longer, so the flags are reset here.
    """
    features = extractor(clips, sampling_rate=SAMPLE_RATE, return_tensors="pt")
    if "is_longer" in features:
        features["is_longer"] = torch.zeros_like(features["is_longer"])
    with torch.no_grad():
        return model.get_audio_features(**features).pooler_output.numpy()
