"""Export-ready encoders: whole computations from raw inputs to L2-normalised joint-space embeddings."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import ClapModel

from clapd.models.frontend import BicubicTimeStretch, FrontEndSettings, LogMelFrontEnd


class LogMelFeatures(nn.Module):
    """Waveform [batch, window_samples] -> HTS-AT's input [batch, 1, spec_frames, n_mels] in dB (always fp32)."""

    def __init__(self, front_end: FrontEndSettings, spec_frames: int) -> None:
        super().__init__()
        self.front_end = LogMelFrontEnd(front_end)
        self.stretch = BicubicTimeStretch(front_end.frames, spec_frames) if front_end.frames < spec_frames else None

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        log_mel = self.front_end(waveform)  # [B, 1, frames, n_mels]
        if self.stretch is not None:
            # Before the encoder's batch norm, which is per mel bin and so commutes with a time resize whose
            # rows sum to one; the encoder then sees its full width and skips its own bicubic interpolate.
            log_mel = self.stretch(log_mel)
        return log_mel


class AudioEmbedder(nn.Module):
    """HTS-AT input [batch, 1, spec_frames, n_mels] -> L2-normalised embedding [batch, projection_dim]."""

    def __init__(self, clap: ClapModel) -> None:
        super().__init__()
        self.audio_model = clap.audio_model
        self.audio_projection = clap.audio_projection
        _freeze_shift_masks(self.audio_model.audio_encoder)

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        pooled = self.audio_model(input_features=log_mel).pooler_output
        return F.normalize(self.audio_projection(pooled), dim=-1)


class AudioEncoder(nn.Module):
    """48 kHz mono float32 waveform [batch, window_samples] -> embedding [batch, projection_dim].

    Two stages, so that export can keep the front end in fp32 while the embedder changes precision. Windows
    shorter than the model's input are repeat-padded before they get here (`clapd.daemon.windows`), as the
    reference does. The fusion branch of fused checkpoints only acts on longer clips and is not part of this.
    """

    def __init__(self, clap: ClapModel, front_end: FrontEndSettings) -> None:
        super().__init__()
        encoder = clap.audio_model.audio_encoder
        self.spec_frames = int(encoder.spec_size * encoder.freq_ratio)  # 1024 for HTS-AT
        self.n_mels = front_end.n_mels
        self.features = LogMelFeatures(front_end, self.spec_frames)
        self.embedder = AudioEmbedder(clap)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.embedder(self.features(waveform))


def _constant_mask(mask: torch.Tensor, *_: object, **__: object) -> torch.Tensor:
    return mask


def _freeze_shift_masks(audio_encoder: nn.Module) -> None:
    """Compute each shifted-window block's attention mask once, as the constant it is.

    HTS-AT rebuilds the masks on every call from the padded feature-map size; traced, that is a chain of
    Range/Cast/Where ops on shape values that the fp16 converter mistypes and TensorRT must re-evaluate. The
    input size is fixed, so the mask is a constant: the same values, computed eagerly.
    """
    for stage in audio_encoder.layers:
        for block in stage.blocks:
            block.set_shift_and_window_size(block.input_resolution)
            window = int(block.window_size)
            height, width = (math.ceil(side / window) * window for side in block.input_resolution)
            mask = block.get_attn_mask(height, width, dtype=torch.float32, device=torch.device("cpu"))
            if mask is not None:
                block.get_attn_mask = functools.partial(_constant_mask, mask)


class TextEncoder(nn.Module):
    """Token ids and attention mask [batch, tokens] (int64) -> embedding [batch, projection_dim]."""

    def __init__(self, clap: ClapModel) -> None:
        super().__init__()
        self.text_model = clap.text_model
        self.text_projection = clap.text_projection

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = self.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return F.normalize(self.text_projection(pooled), dim=-1)
