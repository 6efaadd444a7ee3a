"""Sound features of a window for anomaly monitoring (numpy only): what a machine's sound is made of, kept apart from
the audio model's embedding, which is trained to name sounds and keeps little of what tells a healthy machine from a
faulty one (measured in docs/benchmarks.md, "Anomalous machine sounds").

Two parts, from the window's log-mel spectrogram (10 ms frames, 64 bands):
  - the level distribution of each band: its 10th, 50th, 90th and 99th percentile over the frames in dB (a whine
    or a hiss raises a band's floor, impacts and rubs its top percentiles);
  - the modulation spectrum: the power envelope of 8 groups of 8 bands, as a fraction of its mean, and its spectrum
    from 1 to 50 Hz in 2 Hz bins in dB (a shaft's imbalance, a rub once a revolution, a compressor's strokes are
    rhythms of 10-50 Hz that band levels average away).
The bank whitens them (`NormalBank.fit(..., whiten=True)`): every direction scaled by how much normal operation
varies along it, so no part dominates by its units.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from clapd.daemon.anomaly.log_mel import F_MAX, F_MIN, N_MELS, log_mel, mel_bank

FEATURES_VERSION = "sound-features-v1"  # changes whenever the features do: a bank of older ones is refused
FRAMES_PER_SECOND = 100  # log-mel frames, 10 ms apart
PERCENTILES = (10.0, 50.0, 90.0, 99.0)
BAND_GROUPS = 8  # of N_MELS // BAND_GROUPS adjacent bands each, for the modulation spectrum
MODULATION_EDGES_HZ = np.linspace(1.0, 50.0, 25)  # 24 bins of about 2 Hz, up to the frames' Nyquist rate
MIN_MODULATION_FFT = 512  # points at least: a 2 Hz bin holds 10 of them even for the shortest window
POWER_FLOOR = 1e-12  # of a modulation bin, relative: -120 dB
FEATURE_SIZE = len(PERCENTILES) * N_MELS + BAND_GROUPS * (len(MODULATION_EDGES_HZ) - 1)  # 448


def features_id(sample_rate: int) -> str:
    """What a bank of these features was made with (stored in the bank; another sample rate is not comparable)."""
    return f"{FEATURES_VERSION}@{sample_rate}Hz"


@lru_cache(maxsize=4)
def _front_end(sample_rate: int) -> tuple[np.ndarray, int, int]:
    """(mel filters, FFT size, hop) at `sample_rate`: 10 ms frames of about 21 ms, as the demo model's at 48 kHz."""
    hop = sample_rate // FRAMES_PER_SECOND
    n_fft = 1 << max(8, round(np.log2(sample_rate * 1024 / 48_000)))
    bank = mel_bank(sample_rate, n_fft, N_MELS, F_MIN, min(F_MAX, 0.45 * sample_rate))
    return bank, n_fft, hop


def sound_features(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """One window's features, float32 [FEATURE_SIZE]."""
    bank, n_fft, hop = _front_end(sample_rate)
    spectrogram = log_mel(samples, bank, n_fft, hop)  # [frames, N_MELS], dB
    levels = np.percentile(spectrogram, PERCENTILES, axis=0).reshape(-1)
    return np.concatenate([levels, _modulation(spectrogram)]).astype(np.float32)


def _modulation(spectrogram: np.ndarray) -> np.ndarray:
    """Each band group's envelope spectrum, pooled into MODULATION_EDGES_HZ bins, in dB [BAND_GROUPS * bins]."""
    frames = spectrogram.shape[0]
    power = 10.0 ** (spectrogram / 10.0)
    groups = power.reshape(frames, BAND_GROUPS, -1).sum(axis=2)
    envelope = groups / np.maximum(groups.mean(axis=0), 1e-30) - 1.0  # relative: the level is the other part's job
    n = max(MIN_MODULATION_FFT, 1 << (frames - 1).bit_length())
    spectrum = np.abs(np.fft.rfft(envelope * np.hanning(frames)[:, None], n=n, axis=0)) ** 2 / frames
    bins = np.digitize(np.fft.rfftfreq(n, 1.0 / FRAMES_PER_SECOND), MODULATION_EDGES_HZ)  # 0 and len: outside
    pooled = np.stack([spectrum[bins == b].mean(axis=0) for b in range(1, len(MODULATION_EDGES_HZ))])
    return 10.0 * np.log10(pooled.T.reshape(-1) + POWER_FLOOR)
