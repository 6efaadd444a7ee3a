"""LAION's original CLAP checkpoints (`630k-audioset-best.pt`, ...) -> the transformers `ClapModel` layout.

LAION's training saves `{"epoch", "state_dict", "optimizer", ...}` with DDP's `module.` prefix; its audio tower is
HTS-AT with fused `qkv` projections, its text tower a RoBERTa model, its projections `nn.Sequential`s. The renames
follow transformers' own conversion script; the architecture is read off the tensor shapes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from transformers import ClapConfig

# Applied in order, as substring replacements (the order matters: "attn" first, then "attention.self_mask").
_RENAMES: tuple[tuple[str, str], ...] = (
    ("text_branch", "text_model"),
    ("audio_branch", "audio_model.audio_encoder"),
    ("attn", "attention.self"),
    ("self.proj", "output.dense"),
    ("attention.self_mask", "attn_mask"),
    ("mlp.fc1", "intermediate.dense"),
    ("mlp.fc2", "output.dense"),
    ("norm1", "layernorm_before"),
    ("norm2", "layernorm_after"),
    ("bn0", "batch_norm"),
)
_PROJECTION = re.compile(r"^(audio|text)_projection\.(\d+)\.")
# Parts of a LAION checkpoint that a `ClapModel` has no place for: training-only heads and MLPs, and the
# torchlibrosa front end, which `clapd` rebuilds in the graph (and checks against `melW`).
_NOT_IN_CLAP_MODEL = re.compile(
    r"^(audio_transform|text_transform)\.|^audio_branch\.(spectrogram_extractor|logmel_extractor|head|tscam_conv)\."
    r"|\.attn_mask$"  # HTS-AT's saved shifted-window masks; transformers derives them
)
FUSION_KEYS = re.compile(r"(fusion_model|mel_conv2d)\.")


def unwrap_state_dict(checkpoint: object) -> dict[str, torch.Tensor]:
    """The tensors of a LAION checkpoint, without DDP's `module.` prefix."""
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping) or not state:
        raise ValueError("no state_dict with tensors in it")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError("the state_dict holds no tensors")
    return {k.removeprefix("module."): v for k, v in tensors.items()}


def is_laion_layout(state: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith("audio_branch.") for k in state) and any(k.startswith("text_branch.") for k in state)


def rename_to_transformers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LAION keys -> `ClapModel` keys; q, k and v are split out of the audio tower's fused `qkv`."""
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if _NOT_IN_CLAP_MODEL.search(key):
            continue
        new_key = key
        for old, new in _RENAMES:
            new_key = new_key.replace(old, new)
        new_key = _PROJECTION.sub(lambda m: f"{m[1]}_projection.linear{1 if m[2] == '0' else 2}.", new_key)
        if ".qkv." in new_key:
            for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0), strict=True):
                renamed[new_key.replace("qkv", name)] = part.clone()
        else:
            renamed[new_key] = value
    return renamed


def _count(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m[1] for k in state if (m := regex.match(k))})


def infer_config(state: Mapping[str, torch.Tensor]) -> ClapConfig:
    """The `ClapConfig` of a LAION checkpoint (HTSAT-tiny or -base audio, RoBERTa text), from tensor shapes."""
    audio = "audio_branch."
    stages = _count(state, rf"{re.escape(audio)}layers\.(\d+)\.")
    depths = [_count(state, rf"{re.escape(audio)}layers\.{i}\.blocks\.(\d+)\.") for i in range(stages)]
    heads = [state[f"{audio}layers.{i}.blocks.0.attn.relative_position_bias_table"].shape[1] for i in range(stages)]
    table = state[f"{audio}layers.0.blocks.0.attn.relative_position_bias_table"].shape[0]
    window = (int(round(table**0.5)) + 1) // 2  # the table holds (2w - 1)^2 offsets
    fused = any(FUSION_KEYS.search(k) for k in state)
    words = state["text_branch.embeddings.word_embeddings.weight"]
    text_hidden = words.shape[1]
    audio_config = {
        "patch_embeds_hidden_size": state[f"{audio}patch_embed.proj.weight"].shape[0],
        "depths": depths,
        "num_attention_heads": heads,
        "window_size": window,
        "hidden_size": state[f"{audio}norm.weight"].shape[0],
        "num_mel_bins": state[f"{audio}bn0.weight"].shape[0],
        "enable_fusion": fused,
        "fusion_type": "aff_2d" if fused else None,
    }
    text_config = {
        "vocab_size": words.shape[0],
        "hidden_size": text_hidden,
        "num_hidden_layers": _count(state, r"text_branch\.encoder\.layer\.(\d+)\."),
        "num_attention_heads": max(1, text_hidden // 64),  # RoBERTa's 64-wide heads; not in the weights
        "intermediate_size": state["text_branch.encoder.layer.0.intermediate.dense.weight"].shape[0],
        "max_position_embeddings": state["text_branch.embeddings.position_embeddings.weight"].shape[0],
    }
    projection_dim = state["audio_projection.2.weight"].shape[0]
    return ClapConfig(audio_config=audio_config, text_config=text_config, projection_dim=projection_dim)
