"""Window preparation shared by the daemon and the export verification (numpy only)."""

from __future__ import annotations

import numpy as np


def repeat_pad(clip: np.ndarray, window_samples: int) -> np.ndarray:
    """Fit a mono clip to the model's fixed input the way CLAP's reference does ("repeatpad").

    A shorter clip is tiled a whole number of times, then zero-padded to `window_samples`; a longer one is
    rejected, because the reference's answer there is a random crop.
    """
    if clip.ndim != 1:
        raise ValueError(f"expected a mono clip [samples], got shape {clip.shape}")
    length = clip.shape[0]
    if length == 0:
        raise ValueError("cannot pad an empty clip")
    if length > window_samples:
        raise ValueError(f"clip of {length} samples is longer than the model's window of {window_samples}")
    tiled = np.tile(clip, window_samples // length)
    return np.pad(tiled, (0, window_samples - tiled.shape[0])).astype(np.float32, copy=False)
