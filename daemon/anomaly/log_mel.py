"""Log-mel spectrograms and their per-band statistics in numpy (no torch): what anomaly monitoring's sound features
(`clapd.daemon.anomaly.features`) and the anomaly benchmark's baseline are made of, with the demo model's front-end
settings by default (a Hann-windowed 1024-point STFT every 10 ms at 48 kHz, 64 Slaney mel bands from 50 Hz to 14 kHz,
10*log10 of the power with a 1e-10 floor).
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 48_000  # Hz
N_FFT = 1024  # samples per frame
HOP = 480  # samples between frames (10 ms)
N_MELS = 64
F_MIN, F_MAX = 50.0, 14_000.0  # Hz
POWER_FLOOR = 1e-10  # -100 dB


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    log_part = 15.0 + np.log(np.maximum(hz, 1e-9) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz < 1000.0, hz / (200.0 / 3), log_part)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel < 15.0, mel * (200.0 / 3), 1000.0 * np.exp((mel - 15.0) * np.log(6.4) / 27.0))


def mel_bank(
    sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS, f_min: float = F_MIN, f_max: float = F_MAX
) -> np.ndarray:
    """Triangular filters [n_mels, n_fft // 2 + 1], each scaled to unit area per Hz (Slaney normalisation)."""
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    f = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    lo, centre, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising, falling = (f - lo) / (centre - lo), (hi - f) / (hi - centre)
    return np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (hi - lo))


def log_mel(audio: np.ndarray, bank: np.ndarray | None = None, n_fft: int = N_FFT, hop: int = HOP) -> np.ndarray:
    """dB power per frame and band [frames, n_mels] of mono `audio` (frames of whole n_fft samples)."""
    bank = mel_bank(n_fft=n_fft) if bank is None else bank
    x = np.asarray(audio, dtype=np.float64)
    if x.size < n_fft:
        x = np.pad(x, (0, n_fft - x.size))
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
    power = np.abs(np.fft.rfft(frames * np.hanning(n_fft + 1)[:-1], axis=1)) ** 2
    return 10.0 * np.log10(np.maximum(power @ bank.T, POWER_FLOOR))


def log_mel_stats(audio: np.ndarray, bank: np.ndarray | None = None) -> np.ndarray:
    """Each band's mean and standard deviation over the frames, in dB: [2 * n_mels]."""
    spectrogram = log_mel(audio, bank)
    return np.concatenate([spectrogram.mean(axis=0), spectrogram.std(axis=0)])
