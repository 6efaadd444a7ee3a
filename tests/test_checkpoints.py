"""Loading checkpoints: LAION's .pt layout, Hugging Face directories, and every user error as one clear line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import WINDOW, run_clapd
from laion_layout import laion_state_dict, save_laion_checkpoint
from transformers import ClapModel

from clapd.models import laion
from clapd.models.checkpoints import CheckpointError, load_checkpoint
from clapd.models.encoders import AudioEncoder, TextEncoder
from clapd.models.reference import build_reference_model, reference_config


def embeddings(model: ClapModel, clips: np.ndarray, tokens: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    from clapd.models.frontend import FrontEndSettings

    with torch.no_grad():
        audio = AudioEncoder(model, FrontEndSettings()).eval()(torch.from_numpy(clips)).numpy()
        text = TextEncoder(model).eval()(tokens, torch.ones_like(tokens)).numpy()
    return audio, text


@pytest.fixture(scope="module")
def clips() -> np.ndarray:
    rng = np.random.default_rng(7)
    return (rng.standard_normal((3, WINDOW)) * np.array([[0.01], [0.1], [0.5]])).astype(np.float32)


@pytest.mark.parametrize("ddp_prefix", [True, False])
@pytest.mark.parametrize("with_position_ids", [True, False])
def test_laion_checkpoint_reproduces_the_original_weights(
    tmp_path: Path, small_model_dir: Path, clips: np.ndarray, ddp_prefix: bool, with_position_ids: bool
) -> None:
    original = ClapModel.from_pretrained(small_model_dir).eval()
    path = tmp_path / "epoch_10.pt"
    save_laion_checkpoint(original, path, ddp_prefix=ddp_prefix, with_position_ids=with_position_ids)

    loaded = load_checkpoint(str(path), tokenizer=str(small_model_dir))

    assert loaded.front_end.mel_scale == "slaney" and not loaded.source_was_fused
    for key, value in original.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    tokens = torch.tensor([[0, 10, 20, 30, 2]])
    expected = embeddings(original, clips, tokens)
    got = embeddings(loaded.model, clips, tokens)
    # Same weights; only the attention kernel chosen (eager vs sdpa) can differ in the last bits.
    assert np.abs(expected[0] - got[0]).max() < 1e-6 and np.abs(expected[1] - got[1]).max() < 1e-6


def test_fused_laion_checkpoint_loads_through_its_unfused_path(tmp_path: Path, small_model_dir: Path) -> None:
    fused = build_reference_model("small", seed=3, fused=True)
    path = tmp_path / "fused.pt"
    save_laion_checkpoint(fused, path)
    loaded = load_checkpoint(str(path), tokenizer=str(small_model_dir))
    assert loaded.source_was_fused
    assert "unfused path" in loaded.notes[0]
    assert loaded.front_end.mel_scale == "htk"  # LAION's fusion training fed torchaudio's HTK bank
    assert not loaded.model.config.audio_config.enable_fusion
    assert torch.equal(
        loaded.model.audio_projection.linear2.weight, fused.audio_projection.linear2.weight
    )  # the weights that remain are the fused model's own


@pytest.mark.parametrize(
    ("size", "width", "depths", "heads"),
    [("default", 96, [2, 2, 6, 2], [4, 8, 16, 32]), ("base", 128, [2, 2, 12, 2], [4, 8, 16, 32])],
)
def test_architecture_is_read_from_laion_tensor_shapes(
    size: str, width: int, depths: list[int], heads: list[int]
) -> None:
    """HTSAT-tiny (630k-*.pt) and HTSAT-base (music_*.pt) with RoBERTa-base, from shapes alone."""
    state = laion_state_dict(ClapModel(reference_config(size)))
    config = laion.infer_config(state)
    audio, text = config.audio_config, config.text_config
    assert audio.patch_embeds_hidden_size == width and list(audio.depths) == depths
    assert list(audio.num_attention_heads) == heads and audio.window_size == 8
    assert audio.hidden_size == width * 8 and not audio.enable_fusion
    assert (text.vocab_size, text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (50265, 768, 12, 12)
    assert text.max_position_embeddings == 514 and config.projection_dim == 512


def test_laion_checkpoint_with_a_foreign_mel_bank_is_refused(tmp_path: Path, small_model_dir: Path) -> None:
    state = laion_state_dict(ClapModel.from_pretrained(small_model_dir))
    state["audio_branch.logmel_extractor.melW"] = state["audio_branch.logmel_extractor.melW"] * 1.5
    path = tmp_path / "other_bank.pt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match="mel filter bank"):
        load_checkpoint(str(path), tokenizer=str(small_model_dir))


class Opaque:
    """A pickled Python object: `weights_only` loading refuses it."""


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "no such file or directory"),
        (lambda p: p.write_bytes(b"definitely not a checkpoint"), "not a PyTorch checkpoint"),
        (lambda p: torch.save({"state_dict": {"conv.weight": torch.zeros(3)}}, p), "not a LAION CLAP checkpoint"),
        (lambda p: torch.save({"state_dict": {}}, p), "not a CLAP checkpoint"),
        (lambda p: torch.save({"state_dict": {}, "args": Opaque()}, p), "--trust-pickle"),
    ],
    ids=["missing", "garbage", "not-clap", "empty", "pickled-objects"],
)
def test_bad_checkpoint_files_give_one_clear_line(tmp_path: Path, make, message: str) -> None:
    path = tmp_path / "checkpoint.pt"
    make(path)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(str(path))


def test_truncated_laion_checkpoint_names_a_missing_weight(tmp_path: Path, small_model_dir: Path) -> None:
    state = laion_state_dict(ClapModel.from_pretrained(small_model_dir))
    del state["audio_projection.2.bias"]
    path = tmp_path / "truncated.pt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match="audio_projection.linear2.bias"):
        load_checkpoint(str(path), tokenizer=str(small_model_dir))


def test_directory_errors(tmp_path: Path, small_model_dir: Path) -> None:
    with pytest.raises(CheckpointError, match="no config.json"):
        load_checkpoint(str(tmp_path))
    (tmp_path / "config.json").write_text((small_model_dir / "config.json").read_text())
    with pytest.raises(CheckpointError, match="no weights"):
        load_checkpoint(str(tmp_path))


def test_a_missing_tokenizer_for_a_laion_file_is_named(tmp_path: Path, small_model_dir: Path) -> None:
    path = tmp_path / "epoch.pt"
    save_laion_checkpoint(ClapModel.from_pretrained(small_model_dir), path)
    with pytest.raises(CheckpointError, match="cannot load the tokenizer 'roberta-base'"):
        load_checkpoint(str(path))  # these machines have no hub


@pytest.mark.parametrize("source", ["laion/clap-htsat-unfused", "/nonexistent/630k-audioset-best.pt", "not a model"])
def test_cli_prints_one_line_and_exits_1(tmp_path: Path, source: str) -> None:
    result = run_clapd("export", source, "-o", str(tmp_path / "bundle"), "--no-progress", timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("clapd export: ") and "Traceback" not in result.stderr
    assert not (tmp_path / "bundle").exists()
