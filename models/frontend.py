"""The log-mel front end as graph operations, matching the reference feature extractor.

The reference (`transformers.ClapFeatureExtractor`, LAION's torchlibrosa front end) computes a centred STFT with
a periodic Hann window, a power spectrum, a mel filter bank and 10*log10 with a 1e-10 floor. Here the STFT is a
Conv1d with a fixed windowed DFT basis, because every execution provider has Conv and TensorRT has no STFT op.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers.audio_utils import mel_filter_bank, window_function

POWER_FLOOR = 1e-10  # the reference's amin: -100 dB


@dataclass(frozen=True, slots=True)
class FrontEndSettings:
    """How a checkpoint turns a waveform into its log-mel input."""

    sample_rate: int = 48_000  # Hz
    n_fft: int = 1024  # samples per analysis frame
    hop_length: int = 480  # samples between frames (10 ms)
    n_mels: int = 64
    f_min: float = 50.0  # Hz
    f_max: float = 14_000.0  # Hz
    mel_scale: str = "slaney"  # "slaney" for unfused checkpoints, "htk" for the fusion path
    mel_norm: str | None = "slaney"
    window_samples: int = 480_000  # the model's fixed input: 10 s

    @property
    def frames(self) -> int:
        """Frames per window: 1001 for 10 s at a 480-sample hop (centred STFT)."""
        return self.window_samples // self.hop_length + 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_feature_extractor(cls, extractor: Any) -> FrontEndSettings:
        """Read a `ClapFeatureExtractor`'s own settings; its `truncation` chooses the mel bank it uses."""
        fusion = getattr(extractor, "truncation", "rand_trunc") == "fusion"
        return cls(
            sample_rate=int(extractor.sampling_rate),
            n_fft=int(extractor.fft_window_size),
            hop_length=int(extractor.hop_length),
            n_mels=int(extractor.feature_size),
            f_min=float(extractor.frequency_min),
            f_max=float(extractor.frequency_max),
            mel_scale="htk" if fusion else "slaney",
            mel_norm=None if fusion else "slaney",
            window_samples=int(extractor.nb_max_samples),
        )

    def mel_bank(self) -> np.ndarray:
        """The reference's filter bank, [n_fft // 2 + 1, n_mels] in float64."""
        return mel_filter_bank(
            num_frequency_bins=self.n_fft // 2 + 1,
            num_mel_filters=self.n_mels,
            min_frequency=self.f_min,
            max_frequency=self.f_max,
            sampling_rate=self.sample_rate,
            norm=self.mel_norm,
            mel_scale=self.mel_scale,
        )


def _used_bins(mel_bank: np.ndarray) -> tuple[int, int]:
    """First and one-past-last DFT bin that feed any mel filter; the rest of the basis is dead weight."""
    used = np.flatnonzero(np.abs(mel_bank).sum(axis=1) > 0)
    return int(used[0]), int(used[-1]) + 1


class LogMelFrontEnd(nn.Module):
    """Waveform [batch, samples] at the checkpoint's rate -> log-mel in dB [batch, 1, frames, n_mels].

    The DFT basis ([2 * bins, 1, n_fft] fp32: 2.4 MB for CLAP's 297 bins) is built on every call from an n_fft-entry
    cosine table, the window and integer ranges: stored, it would be most of every exported audio model. Export
    keeps that construction in the graph (`onnx_graphs` turns the exporter's constant folding off for the front
    end); onnxruntime folds it once at session load.
    """

    def __init__(self, settings: FrontEndSettings) -> None:
        super().__init__()
        if settings.n_fft % 4:  # the sine is read off the cosine table a quarter period on
            raise ValueError(f"n_fft must be a multiple of 4, not {settings.n_fft}")
        self.settings = settings
        mel_bank = settings.mel_bank()
        lo, hi = _used_bins(mel_bank)
        self.n_bins = hi - lo
        # A buffer, not a Python range: traced from constants alone, the index matrix would be exported as one.
        self.register_buffer("bins", torch.arange(lo, hi, dtype=torch.int64))
        # float64 tables (8 KB each): their product rounded once to fp32 is the basis a float64 DFT would give.
        # fp32 tables round three times and the extra 5e-8 leaks into the quiet bins of loud clips (0.13 dB
        # instead of 0.09 at -79 dB on the HTK bank's narrow filters).
        angles = 2.0 * np.pi * np.arange(settings.n_fft) / settings.n_fft
        self.register_buffer("cosine", torch.tensor(np.cos(angles), dtype=torch.float64))
        window = window_function(settings.n_fft, "hann")  # periodic, as the reference
        self.register_buffer("window", torch.tensor(window, dtype=torch.float64))
        self.register_buffer("mel_bank", torch.tensor(mel_bank[lo:hi], dtype=torch.float32))

    def dft_basis(self) -> torch.Tensor:
        """[2 * bins, 1, n_fft]: rows cos(2 pi k n / N) w[n], then -sin(2 pi k n / N) w[n].

        Table lookups at (k n) mod N and, for -sin(x) = cos(x + pi / 2), at (k n + N / 4) mod N; the products are
        exact in int64 and the product is taken in float64.
        """
        n_fft = self.settings.n_fft
        kn = self.bins.unsqueeze(1) * torch.arange(n_fft, dtype=torch.int64, device=self.bins.device)  # [bins, n_fft]
        index = torch.remainder(torch.cat([kn, kn + n_fft // 4]), n_fft)
        return (self.cosine[index] * self.window).to(torch.float32).unsqueeze(1)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        pad = self.settings.n_fft // 2
        padded = F.pad(waveform.unsqueeze(1), (pad, pad), mode="reflect")
        spectrum = F.conv1d(padded, self.dft_basis(), stride=self.settings.hop_length)  # [B, 2 * bins, frames]
        real, imag = spectrum[:, : self.n_bins], spectrum[:, self.n_bins :]
        power = (real * real + imag * imag).transpose(1, 2)  # [B, frames, bins]
        mel = torch.matmul(power, self.mel_bank)  # [B, frames, n_mels]
        return (10.0 * torch.log10(torch.clamp(mel, min=POWER_FLOOR))).unsqueeze(1)


def bicubic_stretch_matrix(source_frames: int, target_frames: int) -> torch.Tensor:
    """[target, source] matrix equal to the reference's bicubic (align_corners) resize along time.

    HTS-AT stretches the 1001-frame spectrogram to 1024 frames with `interpolate(mode="bicubic")`; the resize is
    linear in its input, so it is exactly this matrix applied along time.
    """
    identity = torch.eye(source_frames, dtype=torch.float64).reshape(1, 1, source_frames, source_frames)
    stretched = F.interpolate(identity, (target_frames, source_frames), mode="bicubic", align_corners=True)
    return stretched[0, 0]


class BicubicTimeStretch(nn.Module):
    """The bicubic resize as four taps per output frame: a Gather and a weighted sum.

    Equal to `bicubic_stretch_matrix` (each row has at most four non-zero weights) at 48 KB instead of a 4 MB
    dense matrix in every exported audio model.
    """

    TAPS = 4

    def __init__(self, source_frames: int, target_frames: int) -> None:
        super().__init__()
        matrix = bicubic_stretch_matrix(source_frames, target_frames)
        if int((matrix != 0).sum(dim=1).max()) > self.TAPS:
            raise ValueError("bicubic rows with more than four taps")
        weights, taps = matrix.abs().topk(self.TAPS, dim=1)
        self.register_buffer("taps", taps)  # [target, 4] source-frame indices
        self.register_buffer("weights", matrix.gather(1, taps).to(torch.float32).unsqueeze(-1))  # [target, 4, 1]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[B, C, source, F] -> [B, C, target, F]."""
        return (features[:, :, self.taps, :] * self.weights).sum(dim=3)
