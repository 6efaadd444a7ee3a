"""Write a `transformers.ClapModel` out in the layout of a checkpoint saved by LAION's own CLAP training code.

`laion_clap` cannot be installed here and tests must not reach the hub, so this helper builds, from a
(small, random) Hugging Face `ClapModel`, the checkpoint LAION's trainer would have saved for the same
weights. The key names are written out from LAION's module tree (github.com/LAION-AI/CLAP), not by
inverting transformers' conversion script, so that a loader tested against this file is checked against an
independent account.

What was read in the sources, and what this module therefore writes:

`src/laion_clap/training/main.py`
  * A checkpoint is `torch.save` of a dict with keys, in this order, "epoch" (the completed epoch, int),
    "name" (the run name, `<date>-model_<amodel>-lr_<lr>-b_<batch>-j_<workers>-p_<precision>` by default),
    "state_dict" (`model.state_dict()`), then "optimizer" (an optimizer `state_dict()`; with `--split_opt`
    it is "pretrained_optimizer" and "new_optimizer" instead) and "scaler" when training with AMP.
  * The model is wrapped in `DistributedDataParallel` when distributed, so every key then starts `module.`.
`src/laion_clap/clap_module/factory.py` (`load_state_dict`)
  * Takes `checkpoint["state_dict"]` when present, strips a leading `module.` (the check looks only at the
    first key), and deletes `text_branch.embeddings.position_ids` when transformers >= 4.31: the released
    checkpoints carry that buffer, and do not carry `text_branch.embeddings.token_type_ids`.
`src/laion_clap/clap_module/model.py` (`CLAP`, `MLPLayers`)
  * Own parameters `logit_scale_a`, `logit_scale_t` (0-d), registered before any submodule, so they are the
    first keys of the state dict. Its `attn_mask` buffer is registered with `persistent=False`: not saved.
  * Submodules in order: `audio_branch`, `text_branch` (for tmodel "roberta" a `RobertaModel` with pooler),
    `text_transform`, `text_projection`, `audio_transform`, `audio_projection`.
  * `*_projection` is `nn.Sequential(Linear(width, joint), act, Linear(joint, joint))`: keys `.0.` and `.2.`.
  * `*_transform` is `MLPLayers(units=[joint] * 3)`: Linear, ReLU, Dropout, Linear (the trailing ReLU and
    Dropout are cut off), so its keys are `sequential.0.` and `sequential.3.` - not `.2.`.
`src/laion_clap/clap_module/htsat.py` (`HTSAT_Swin_Transformer` and its parts), as `audio_branch.`:
  * `spectrogram_extractor.stft.conv_real.weight`, `...conv_imag.weight` and `logmel_extractor.melW`
    (torchlibrosa modules built with `freeze_parameters=True`: frozen, but parameters, hence saved);
    `spec_augmenter`, `avgpool`, `maxpool`, `pos_drop` hold nothing; `absolute_pos_embed` only if `ape`
    (False in every HTSAT config).
  * `bn0` (`BatchNorm2d(mel_bins)`: weight, bias, running_mean, running_var, num_batches_tracked).
  * `patch_embed.proj` (Conv2d), `patch_embed.norm` (LayerNorm); for fusion types daf/aff/iaff_2d also
    `patch_embed.mel_conv2d` (Conv2d, kernel (p, 3p), stride (s, 3s)) and `patch_embed.fusion_model`.
  * `layers.N.blocks.M.` = `attn_mask` (own buffer, persistent, registered for every block but `None`, hence
    absent, unless the block is shifted), `norm1`, `attn.relative_position_bias_table`,
    `attn.relative_position_index` (persistent int64 buffer), `attn.qkv` (one Linear dim -> 3*dim, rows q,
    then k, then v), `attn.proj`, `norm2`, `mlp.fc1`, `mlp.fc2`. Block M is shifted (shift = window // 2) when
    M is odd, unless the stage's resolution is <= the window, which sets shift 0 and window = resolution.
    The mask is (windows, w*w, w*w) float: 0 within a region of the shifted image, -100 across regions.
  * `layers.N.downsample.reduction` (Linear 4C -> 2C, no bias) and `.norm` (LayerNorm 4C), all stages but
    the last; `norm`; `tscam_conv` (Conv2d(num_features, num_classes, (SF, 3)), SF = spec_size //
    2**(stages-1) // patch_stride // (spec_size // mel_bins)); `head` (Linear(num_classes, num_classes)).
    For 1d fusion types there are also top-level `mel_conv1d.0/.1` and `fusion_model` (not written here).
  * `create_htsat_model` leaves `norm_before_mlp` at its default 'ln', so `norm2` is a LayerNorm.
`src/open_clip/feature_fusion.py` (the `feature_fusion` module `htsat.py` imports; `hook.py` uses
  fusion_type "aff_2d" for the fused checkpoints)
  * `AFF(channels=embed_dim, r=4, type='2D')`: `local_att` = Sequential(Conv2d C->C/4, BN, ReLU,
    Conv2d C/4->C, BN) -> keys `.0 .1 .3 .4`; `global_att` = Sequential(AdaptiveAvgPool2d, Conv2d, BN, ReLU,
    Conv2d, BN) -> keys `.1 .2 .4 .5`; convolutions 1x1 with bias.
torchlibrosa `stft.py` (read at a later commit; LAION's requirements.txt pins 0.0.9, same formulas)
  * `STFT`: Conv1d(1, n_fft // 2 + 1, kernel n_fft, no bias) twice; weight[k, 0, n] = Re / Im of
    exp(-2 pi i k n / n_fft) * window[n], i.e. cos and -sin times the periodic ("fftbins") Hann window.
  * `LogmelFilterBank`: `melW` = `librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax).T` (slaney scale and
    norm, librosa's defaults), shape (n_fft // 2 + 1, n_mels); `ref` and `amin` are plain tensors, not saved.
  * LAION's released HTSAT models use sr 48000, n_fft 1024, 64 mels, fmin 50, fmax 14000 (the defaults here).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import ClapModel

__all__ = ["laion_state_dict", "save_laion_checkpoint", "stft_kernels", "slaney_mel_bank"]

_HF_AUDIO = "audio_model.audio_encoder."
_HF_TEXT = "text_model."
_HF_IGNORED = {_HF_TEXT + "embeddings.token_type_ids"}  # not persistent in the RobertaModel LAION saved

SAMPLE_RATE = 48000
N_FFT = 1024
F_MIN = 50.0
F_MAX = 14000.0
_SEED = 1234


def stft_kernels(n_fft: int = N_FFT) -> tuple[torch.Tensor, torch.Tensor]:
    """torchlibrosa's `conv_real` / `conv_imag` weights, each [n_fft // 2 + 1, 1, n_fft], float32."""
    n = torch.arange(n_fft, dtype=torch.float64)
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
    # Reduce k*n mod n_fft in integers first so the angle stays small and exact.
    phase = 2.0 * math.pi * ((k[:, None] * n[None, :]) % n_fft) / n_fft
    real = torch.cos(phase) * window[None, :]
    imag = -torch.sin(phase) * window[None, :]
    return real.float().unsqueeze(1).contiguous(), imag.float().unsqueeze(1).contiguous()


def slaney_mel_bank(
    n_mels: int = 64, *, n_fft: int = N_FFT, sr: int = SAMPLE_RATE, fmin: float = F_MIN, fmax: float = F_MAX
) -> torch.Tensor:
    """`logmel_extractor.melW`: librosa's slaney filter bank, [n_fft // 2 + 1, n_mels], float32."""
    from transformers.audio_utils import mel_filter_bank

    bank = mel_filter_bank(n_fft // 2 + 1, n_mels, fmin, fmax, sr, norm="slaney", mel_scale="slaney")
    return torch.from_numpy(bank).float().contiguous()


def _relative_position_index(window: int) -> torch.Tensor:
    """Swin's pairwise relative-position index for a `window` x `window` window, [w*w, w*w] int64."""
    rows = torch.arange(window).repeat_interleave(window)
    cols = torch.arange(window).repeat(window)
    d_row = rows[:, None] - rows[None, :] + (window - 1)
    d_col = cols[:, None] - cols[None, :] + (window - 1)
    return (d_row * (2 * window - 1) + d_col).to(torch.int64)


def _shifted_window_mask(height: int, width: int, window: int, shift: int) -> torch.Tensor:
    """The `attn_mask` buffer of a shifted block: [num_windows, w*w, w*w], 0 / -100 float32."""

    def regions(size: int) -> torch.Tensor:
        idx = torch.arange(size)
        return (idx >= size - window).long() + (idx >= size - shift).long()

    label = regions(height)[:, None] * 3 + regions(width)[None, :]  # [H, W], 9 regions, row-major
    label = label.reshape(height // window, window, width // window, window).permute(0, 2, 1, 3)
    label = label.reshape(-1, window * window)  # windows in row-major order, tokens row-major inside
    differs = label[:, :, None] != label[:, None, :]
    return torch.zeros(differs.shape).masked_fill(differs, -100.0)


class _Source:
    """The HF state dict, handed out key by key; remembers which keys were used."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self.state = state
        self.used: set[str] = set()

    def __contains__(self, key: str) -> bool:
        return key in self.state

    def take(self, key: str) -> torch.Tensor:
        if key not in self.state:
            raise KeyError(f"the ClapModel has no {key!r}; LAION's layout needs it")
        self.used.add(key)
        return self.state[key].detach().clone().contiguous()

    def leftovers(self) -> list[str]:
        return sorted(k for k in self.state if k not in self.used and k not in _HF_IGNORED)


def _linear(out: dict[str, torch.Tensor], dst: str, src: _Source, hf: str) -> None:
    out[dst + ".weight"] = src.take(hf + ".weight")
    if hf + ".bias" in src:
        out[dst + ".bias"] = src.take(hf + ".bias")


def _batch_norm(out: dict[str, torch.Tensor], dst: str, src: _Source, hf: str) -> None:
    for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        out[f"{dst}.{name}"] = src.take(f"{hf}.{name}")


def _random_linear(out: dict[str, torch.Tensor], dst: str, shape: tuple[int, ...], gen: torch.Generator) -> None:
    out[dst + ".weight"] = torch.randn(shape, generator=gen) * 0.02
    out[dst + ".bias"] = torch.randn(shape[0], generator=gen) * 0.02


def _random_batch_norm(out: dict[str, torch.Tensor], dst: str, channels: int, gen: torch.Generator) -> None:
    out[dst + ".weight"] = 1.0 + 0.1 * torch.randn(channels, generator=gen)
    out[dst + ".bias"] = 0.1 * torch.randn(channels, generator=gen)
    out[dst + ".running_mean"] = 0.1 * torch.randn(channels, generator=gen)
    out[dst + ".running_var"] = 1.0 + torch.rand(channels, generator=gen)
    out[dst + ".num_batches_tracked"] = torch.tensor(1000, dtype=torch.int64)


def _random_aff_2d(out: dict[str, torch.Tensor], dst: str, channels: int, r: int, gen: torch.Generator) -> None:
    """feature_fusion.AFF(channels, r, type='2D') with random weights."""
    inter = channels // r
    for seq, (c1, b1, c2, b2) in (("local_att", (0, 1, 3, 4)), ("global_att", (1, 2, 4, 5))):
        _random_linear(out, f"{dst}.{seq}.{c1}", (inter, channels, 1, 1), gen)
        _random_batch_norm(out, f"{dst}.{seq}.{b1}", inter, gen)
        _random_linear(out, f"{dst}.{seq}.{c2}", (channels, inter, 1, 1), gen)
        _random_batch_norm(out, f"{dst}.{seq}.{b2}", channels, gen)


def _pair(value: Any) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _audio_branch(
    out: dict[str, torch.Tensor], src: _Source, cfg: Any, *, fused_extras: bool, gen: torch.Generator
) -> None:
    """`audio_branch.*` in HTSAT_Swin_Transformer's registration order."""
    a, hf = "audio_branch.", _HF_AUDIO
    real, imag = stft_kernels(N_FFT)
    out[a + "spectrogram_extractor.stft.conv_real.weight"] = real
    out[a + "spectrogram_extractor.stft.conv_imag.weight"] = imag
    out[a + "logmel_extractor.melW"] = slaney_mel_bank(cfg.num_mel_bins)
    _batch_norm(out, a + "bn0", src, hf + "batch_norm")

    # PatchEmbed: proj, norm, then (2d fusion) mel_conv2d, fusion_model.
    _linear(out, a + "patch_embed.proj", src, hf + "patch_embed.proj")
    if hf + "patch_embed.norm.weight" in src:
        _linear(out, a + "patch_embed.norm", src, hf + "patch_embed.norm")
    embed = int(cfg.patch_embeds_hidden_size)
    patch, stride = _pair(cfg.patch_size), _pair(cfg.patch_stride)
    if hf + "patch_embed.mel_conv2d.weight" in src:
        _linear(out, a + "patch_embed.mel_conv2d", src, hf + "patch_embed.mel_conv2d")
        fusion = hf + "patch_embed.fusion_model."
        for key in [k for k in src.state if k.startswith(fusion)]:
            out[a + "patch_embed.fusion_model." + key[len(fusion) :]] = src.take(key)
    elif fused_extras:
        in_chans = int(cfg.patch_embed_input_channels)
        _random_linear(out, a + "patch_embed.mel_conv2d", (embed, in_chans, patch[0], patch[1] * 3), gen)
        _random_aff_2d(out, a + "patch_embed.fusion_model", embed, int(cfg.aff_block_r), gen)

    spec = int(cfg.spec_size)
    grid = (spec // stride[0], spec // stride[1])
    window_cfg = int(cfg.window_size)
    depths = list(cfg.depths)
    for i, depth in enumerate(depths):
        res = (grid[0] // 2**i, grid[1] // 2**i)
        small = min(res) <= window_cfg
        window = min(res) if small else window_cfg
        for j in range(depth):
            b, h = f"{a}layers.{i}.blocks.{j}.", f"{hf}layers.{i}.blocks.{j}."
            shift = 0 if small or j % 2 == 0 else window_cfg // 2
            if shift:
                out[b + "attn_mask"] = _shifted_window_mask(res[0], res[1], window, shift)
            _linear(out, b + "norm1", src, h + "layernorm_before")
            table = src.take(h + "attention.self.relative_position_bias_table")
            if table.shape[0] != (2 * window - 1) ** 2:
                raise ValueError(f"{h}: bias table {tuple(table.shape)} does not fit LAION's window {window}")
            out[b + "attn.relative_position_bias_table"] = table
            src.take(h + "attention.self.relative_position_index")  # rebuilt below, LAION's own way
            out[b + "attn.relative_position_index"] = _relative_position_index(window)
            parts = ("query", "key", "value")
            out[b + "attn.qkv.weight"] = torch.cat([src.take(f"{h}attention.self.{p}.weight") for p in parts])
            if h + "attention.self.query.bias" in src:
                out[b + "attn.qkv.bias"] = torch.cat([src.take(f"{h}attention.self.{p}.bias") for p in parts])
            _linear(out, b + "attn.proj", src, h + "attention.output.dense")
            _linear(out, b + "norm2", src, h + "layernorm_after")
            _linear(out, b + "mlp.fc1", src, h + "intermediate.dense")
            _linear(out, b + "mlp.fc2", src, h + "output.dense")
        if i < len(depths) - 1:
            d, h = f"{a}layers.{i}.downsample.", f"{hf}layers.{i}.downsample."
            _linear(out, d + "reduction", src, h + "reduction")
            _linear(out, d + "norm", src, h + "norm")

    _linear(out, a + "norm", src, hf + "norm")
    num_features = embed * 2 ** (len(depths) - 1)
    classes = int(getattr(cfg, "num_classes", 527))
    freq_ratio = spec // int(cfg.num_mel_bins)
    sf = spec // 2 ** (len(depths) - 1) // stride[0] // freq_ratio
    _random_linear(out, a + "tscam_conv", (classes, num_features, sf, 3), gen)
    _random_linear(out, a + "head", (classes, classes), gen)


def _text_branch(out: dict[str, torch.Tensor], src: _Source, *, with_position_ids: bool) -> None:
    """`text_branch.*`: a RobertaModel's own names, in its registration order."""
    t, hf = "text_branch.", _HF_TEXT
    if with_position_ids:
        out[t + "embeddings.position_ids"] = src.take(hf + "embeddings.position_ids")
    else:
        src.take(hf + "embeddings.position_ids")
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        out[f"{t}embeddings.{name}.weight"] = src.take(f"{hf}embeddings.{name}.weight")
    _linear(out, t + "embeddings.LayerNorm", src, hf + "embeddings.LayerNorm")
    layer = 0
    while f"{hf}encoder.layer.{layer}.attention.self.query.weight" in src:
        for sub in (
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
            "attention.output.LayerNorm",
            "intermediate.dense",
            "output.dense",
            "output.LayerNorm",
        ):
            _linear(out, f"{t}encoder.layer.{layer}.{sub}", src, f"{hf}encoder.layer.{layer}.{sub}")
        layer += 1
    _linear(out, t + "pooler.dense", src, hf + "pooler.dense")


def laion_state_dict(
    clap: ClapModel, *, fused_extras: bool = False, with_position_ids: bool = True
) -> dict[str, torch.Tensor]:
    """`CLAP.state_dict()` as LAION's HTSAT + RoBERTa model would hold these weights (no `module.` prefix).

    Weights the HF model has are copied (audio q, k, v fused into `qkv`, rows q then k then v); what LAION
    saves and transformers does not model is added: the torchlibrosa STFT kernels and mel bank (exact values),
    `relative_position_index` and shifted blocks' `attn_mask` (recomputed), and seeded random `tscam_conv`,
    `head`, `audio_transform` and `text_transform`. A fused HF model's `mel_conv2d` / `fusion_model` are
    copied under `patch_embed.`; with `fused_extras` a non-fused model gets random ones of the aff_2d shapes.
    `with_position_ids=False` leaves out `text_branch.embeddings.position_ids` (as if saved with
    transformers >= 4.31). Raises if the HF model holds a tensor this layout has no place for.
    """
    cfg = clap.config
    src = _Source(dict(clap.state_dict()))
    gen = torch.Generator().manual_seed(_SEED)
    out: dict[str, torch.Tensor] = {}

    out["logit_scale_a"] = src.take("logit_scale_a")
    out["logit_scale_t"] = src.take("logit_scale_t")
    _audio_branch(out, src, cfg.audio_config, fused_extras=fused_extras, gen=gen)
    _text_branch(out, src, with_position_ids=with_position_ids)

    joint = int(cfg.projection_dim)
    _random_linear(out, "text_transform.sequential.0", (joint, joint), gen)
    _random_linear(out, "text_transform.sequential.3", (joint, joint), gen)
    _linear(out, "text_projection.0", src, "text_projection.linear1")
    _linear(out, "text_projection.2", src, "text_projection.linear2")
    _random_linear(out, "audio_transform.sequential.0", (joint, joint), gen)
    _random_linear(out, "audio_transform.sequential.3", (joint, joint), gen)
    _linear(out, "audio_projection.0", src, "audio_projection.linear1")
    _linear(out, "audio_projection.2", src, "audio_projection.linear2")

    leftovers = src.leftovers()
    if leftovers:
        raise ValueError(f"ClapModel tensors with no place in LAION's layout: {leftovers[:8]}")
    return out


def _dummy_optimizer_state(joint: int) -> dict[str, Any]:
    """A small AdamW `state_dict()` of the shape LAION's trainer saves (two param groups: no-decay, decay)."""
    gen = torch.Generator().manual_seed(_SEED + 1)
    group = {
        "lr": 1e-4,
        "betas": (0.9, 0.99),
        "eps": 1e-9,
        "amsgrad": False,
        "maximize": False,
        "foreach": None,
        "capturable": False,
        "differentiable": False,
        "fused": None,
    }
    return {
        "state": {
            i: {
                "step": torch.tensor(1000.0),
                "exp_avg": 1e-3 * torch.randn(joint, generator=gen),
                "exp_avg_sq": 1e-6 * torch.rand(joint, generator=gen),
            }
            for i in range(2)
        },
        "param_groups": [
            {**group, "weight_decay": 0.0, "initial_lr": 1e-4, "params": [0]},
            {**group, "weight_decay": 0.0, "initial_lr": 1e-4, "params": [1]},
        ],
    }


def save_laion_checkpoint(
    clap: ClapModel,
    path: str | Path,
    *,
    ddp_prefix: bool = True,
    fused_extras: bool = False,
    with_position_ids: bool = True,
) -> None:
    """Write `clap` to `path` as LAION's training loop saves an epoch checkpoint.

    `{"epoch", "name", "state_dict", "optimizer"}` with every state-dict key prefixed `module.` when
    `ddp_prefix` (a DistributedDataParallel run). Loads with `torch.load(path, weights_only=True)`.
    """
    state = laion_state_dict(clap, fused_extras=fused_extras, with_position_ids=with_position_ids)
    if ddp_prefix:
        state = {"module." + key: value for key, value in state.items()}
    checkpoint: dict[str, Any] = {
        "epoch": 10,
        "name": "2023_01_01-00_00_00-model_HTSAT-tiny-lr_0.0001-b_96-j_6-p_fp32",
        "state_dict": state,
        "optimizer": _dummy_optimizer_state(int(clap.config.projection_dim)),
    }
    torch.save(checkpoint, Path(path))
