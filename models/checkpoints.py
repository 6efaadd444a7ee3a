"""Load a trained CLAP from a Hugging Face id, a local Hugging Face directory, or one of LAION's `.pt` files.

Every failure a user can cause (missing file, wrong format, unreachable hub, unsupported architecture) becomes a
`CheckpointError` with a one-line message; the CLI prints it and exits 1.
"""

from __future__ import annotations

import logging
import pickle
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, ClapConfig, ClapFeatureExtractor, ClapModel, PreTrainedTokenizerBase

from clapd.models import laion
from clapd.models.frontend import FrontEndSettings

logger = logging.getLogger(__name__)

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
LAION_TOKENIZER = "roberta-base"  # what LAION's training tokenizes with
# LAION's audio config for every released HTS-AT checkpoint (48 kHz, 10 s, 1024/480 STFT, 64 mels, 50-14000 Hz).
LAION_FRONT_END = FrontEndSettings()


class CheckpointError(Exception):
    """A checkpoint that cannot be loaded; the message is one line meant for the user."""


@dataclass(frozen=True, slots=True)
class LoadedCheckpoint:
    """A CLAP in eval mode with what export needs to know about it."""

    model: ClapModel
    tokenizer: PreTrainedTokenizerBase
    front_end: FrontEndSettings
    source: str  # what the user named
    revision: str | None  # hub commit, or None for local files
    source_was_fused: bool = False  # exported through its unfused path (windows of at most 10 s)
    notes: tuple[str, ...] = field(default=())


def load_checkpoint(source: str, *, tokenizer: str | None = None, trust_pickle: bool = False) -> LoadedCheckpoint:
    """Dispatch on what SOURCE is: an existing file, an existing directory, or a hub id."""
    path = Path(source).expanduser()
    if path.is_file():
        return load_laion_file(path, tokenizer=tokenizer or LAION_TOKENIZER, trust_pickle=trust_pickle)
    if path.is_dir():
        return load_hf_directory(path, source=source, tokenizer=tokenizer)
    if source.endswith((".pt", ".pth", ".ckpt", ".bin", ".safetensors")) or not HUB_ID.match(source):
        raise CheckpointError(f"{source}: no such file or directory")
    return load_hf_directory(_download(source), source=source, tokenizer=tokenizer, revision_from_path=True)


def _download(hub_id: str) -> Path:
    """The hub snapshot's config, tokenizer, preprocessor and weights (safetensors, else the .bin)."""
    path = _snapshot(hub_id, ["*.json", "*.txt", "*.safetensors"])
    return path if any(path.glob("*.safetensors")) else _snapshot(hub_id, ["pytorch_model.bin"])


def _snapshot(hub_id: str, patterns: list[str]) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(hub_id, allow_patterns=patterns))
    except Exception as e:  # the hub client raises many types; all mean "could not get it"
        raise CheckpointError(
            f"{hub_id}: cannot fetch it from the Hugging Face hub ({type(e).__name__}); download it "
            "on a connected machine and pass its local directory"
        ) from e


def load_hf_directory(
    path: Path, *, source: str, tokenizer: str | None, revision_from_path: bool = False
) -> LoadedCheckpoint:
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{source}: not a Hugging Face model directory (no config.json)")
    try:
        config = ClapConfig.from_pretrained(path)
    except Exception as e:
        raise CheckpointError(f"{source}: config.json is not a CLAP config ({e})") from e
    fused = bool(config.audio_config.enable_fusion)
    front_end = _front_end_from_directory(path, fused=fused)
    state = _read_hf_weights(path, source)
    model, notes = _build_model(config, state, source)
    return LoadedCheckpoint(
        model=model,
        tokenizer=_load_tokenizer(tokenizer or str(path), source),
        front_end=front_end,
        source=source,
        revision=path.name if revision_from_path else None,
        source_was_fused=fused,
        notes=notes,
    )


def _read_hf_weights(path: Path, source: str) -> dict[str, torch.Tensor]:
    safetensors = sorted(path.glob("*.safetensors"))
    try:
        if safetensors:
            from safetensors.torch import load_file

            state: dict[str, torch.Tensor] = {}
            for file in safetensors:
                state.update(load_file(file))
            return state
        binary = path / "pytorch_model.bin"
        if binary.is_file():
            return torch.load(binary, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{source}: cannot read the weights ({type(e).__name__}: {e})") from e
    raise CheckpointError(f"{source}: no weights (model.safetensors or pytorch_model.bin) in the directory")


def _front_end_from_directory(path: Path, *, fused: bool) -> FrontEndSettings:
    """The checkpoint's own preprocessor settings; the mel bank follows the model, not `truncation`.

    Hub CLAP directories ship `truncation="fusion"` even for unfused models; the unfused reference path
    (`rand_trunc`) uses the Slaney bank, the fusion path the HTK one.
    """
    if not (path / "preprocessor_config.json").is_file():
        logger.warning("no preprocessor_config.json: using LAION's front-end settings")
        settings = LAION_FRONT_END
    else:
        extractor = ClapFeatureExtractor.from_pretrained(path)
        if extractor.top_db is not None:
            raise CheckpointError(f"{path}: preprocessor top_db={extractor.top_db} is not supported")
        settings = FrontEndSettings.from_feature_extractor(extractor)
    scale, norm = ("htk", None) if fused else ("slaney", "slaney")
    return FrontEndSettings(**{**settings.to_dict(), "mel_scale": scale, "mel_norm": norm})


def _build_model(config: ClapConfig, state: dict[str, torch.Tensor], source: str) -> tuple[ClapModel, tuple[str, ...]]:
    """A `ClapModel` with every one of its weights from `state`; fused models lose only their fusion branch."""
    notes: list[str] = []
    if config.audio_config.enable_fusion:
        if config.audio_config.fusion_type == "channel_map":
            raise CheckpointError(f"{source}: fusion type 'channel_map' has no unfused path; not supported")
        notes.append(
            "fused checkpoint: exported through its unfused path, exact for windows of at most 10 s "
            "(the fusion branch only acts on longer clips)"
        )
        logger.warning("%s: %s", source, notes[-1])
        config.audio_config.enable_fusion = False
        config.audio_config.fusion_type = None
        state = {k: v for k, v in state.items() if not laion.FUSION_KEYS.search(k)}
    try:
        model = ClapModel(config)
    except Exception as e:
        raise CheckpointError(f"{source}: unsupported CLAP architecture ({e})") from e
    _load_weights(model, state, source)
    return model.eval(), tuple(notes)


def _load_weights(model: ClapModel, state: dict[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not _derived_buffer(k)]
    unexpected = [k for k in state if k not in expected]
    if missing:
        raise CheckpointError(f"{source}: {len(missing)} weights missing, e.g. {missing[0]}")
    if unexpected:
        raise CheckpointError(f"{source}: {len(unexpected)} unknown weights, e.g. {unexpected[0]}")
    wrong = [k for k, v in state.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        k = wrong[0]
        raise CheckpointError(
            f"{source}: {k} has shape {tuple(state[k].shape)}, the architecture needs {tuple(expected[k].shape)}"
        )
    model.load_state_dict(state, strict=False)


def _derived_buffer(key: str) -> bool:
    """Buffers the model computes itself and older checkpoints do not carry."""
    return key.endswith(("position_ids", "token_type_ids", "relative_position_index", "num_batches_tracked"))


def _load_tokenizer(name: str, source: str) -> PreTrainedTokenizerBase:
    """From a local directory, or a hub id fetched in one snapshot call (one quick failure when offline)."""
    local = Path(name).expanduser()
    try:
        return AutoTokenizer.from_pretrained(local if local.is_dir() else _snapshot(name, ["*.json", "*.txt"]))
    except Exception as e:
        raise CheckpointError(
            f"{source}: cannot load the tokenizer '{name}' ({type(e).__name__}); pass --tokenizer with a local "
            "directory that holds it"
        ) from e


def load_laion_file(path: Path, *, tokenizer: str, trust_pickle: bool) -> LoadedCheckpoint:
    """One of LAION's training checkpoints; its tokenizer is RoBERTa's unless `tokenizer` names another."""
    try:
        state = laion.unwrap_state_dict(_torch_load(path, trust_pickle))
    except ValueError as e:
        raise CheckpointError(f"{path}: not a CLAP checkpoint ({e})") from e
    if not laion.is_laion_layout(state):
        raise CheckpointError(f"{path}: not a LAION CLAP checkpoint (no audio_branch/text_branch weights)")
    if "text_branch.embeddings.word_embeddings.weight" not in state:
        raise CheckpointError(f"{path}: only RoBERTa text towers are supported (HF ClapModel's text model)")
    try:
        config = laion.infer_config(state)
    except KeyError as e:
        raise CheckpointError(f"{path}: not an HTS-AT CLAP checkpoint (no {e.args[0]})") from e
    fused = bool(config.audio_config.enable_fusion)
    if not fused:
        _check_mel_bank(state, path)
    model, notes = _build_model(config, laion.rename_to_transformers(state), str(path))
    return LoadedCheckpoint(
        model=model,
        tokenizer=_load_tokenizer(tokenizer, str(path)),
        # LAION's fusion training fed torchaudio's HTK bank; the unfused models their own Slaney one.
        front_end=replace(LAION_FRONT_END, mel_scale="htk", mel_norm=None) if fused else LAION_FRONT_END,
        source=str(path),
        revision=None,
        source_was_fused=fused,
        notes=notes,
    )


def _torch_load(path: Path, trust_pickle: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e):  # anything else is not a pickle of tensors at all
            raise CheckpointError(f"{path}: not a PyTorch checkpoint (unreadable pickle)") from e
        raise CheckpointError(
            f"{path}: holds Python objects beyond tensors; if you trust the file, pass --trust-pickle"
        ) from e
    except Exception as e:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({type(e).__name__})") from e


def _check_mel_bank(state: dict[str, torch.Tensor], path: Path) -> None:
    """LAION checkpoints carry their torchlibrosa mel bank: refuse one that is not the front end we rebuild."""
    mel = state.get("audio_branch.logmel_extractor.melW")
    if mel is None:
        return
    ours = torch.tensor(LAION_FRONT_END.mel_bank(), dtype=mel.dtype)
    if mel.shape != ours.shape or not torch.allclose(mel, ours, rtol=1e-4, atol=1e-6):
        raise CheckpointError(f"{path}: its mel filter bank differs from LAION's 50-14000 Hz Slaney bank")
