"""Our PyTorch encoders against Hugging Face transformers' CLAP on the same weights and audio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import SAMPLE_RATE, WINDOW, hf_audio_embeddings
from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel

from clapd.daemon.windows import repeat_pad
from clapd.export.verify import compare
from clapd.models.checkpoints import load_checkpoint
from clapd.models.encoders import AudioEncoder, TextEncoder
from clapd.models.frontend import BicubicTimeStretch, FrontEndSettings, LogMelFrontEnd

PROMPTS = ["a dog barking", "the sound of a siren wailing", "rain", "someone knocking on a door", "glass breaking"]


def unfused_extractor() -> ClapFeatureExtractor:
    """The reference settings for unfused models (the class defaults are the fused ones)."""
    return ClapFeatureExtractor(frequency_min=50, truncation="rand_trunc")


def our_audio_embeddings(encoder: AudioEncoder, clips: list[np.ndarray]) -> np.ndarray:
    batch = np.stack([repeat_pad(clip.astype(np.float32), WINDOW) for clip in clips])
    with torch.no_grad():
        return encoder(torch.from_numpy(batch)).numpy()


def test_front_end_matches_reference_extractor(test_audio: dict[str, np.ndarray]) -> None:
    clips = [repeat_pad(clip.astype(np.float32), WINDOW) for clip in test_audio.values()]
    reference = unfused_extractor()(clips, sampling_rate=SAMPLE_RATE, return_tensors="np")["input_features"]
    with torch.no_grad():
        ours = LogMelFrontEnd(FrontEndSettings())(torch.from_numpy(np.stack(clips))).numpy()
    assert ours.shape == reference.shape == (len(clips), 1, 1001, 64)
    loud = reference > -80.0
    assert loud.mean() > 0.3  # the comparison covers real signal, not only the floor
    assert np.abs(ours - reference)[loud].max() <= 0.05
    assert np.abs(ours - reference).max() <= 0.5  # near the -100 dB floor fp32 rounding shows more


def test_fused_front_end_matches_reference_fusion_channel(test_audio: dict[str, np.ndarray]) -> None:
    """For clips of at most 10 s the fusion extractor stacks four copies of one HTK-bank log-mel."""
    clips = [repeat_pad(clip.astype(np.float32), WINDOW) for clip in list(test_audio.values())[:4]]
    extractor = ClapFeatureExtractor(frequency_min=50, truncation="fusion")
    reference = extractor(clips, sampling_rate=SAMPLE_RATE, return_tensors="np")["input_features"][:, :1]
    settings = FrontEndSettings(mel_scale="htk", mel_norm=None)
    with torch.no_grad():
        ours = LogMelFrontEnd(settings)(torch.from_numpy(np.stack(clips))).numpy()
    error = np.abs(ours - reference)
    # The HTK bank's narrow low filters sit on few DFT bins, so fp32 rounding of the DFT (~1e-6 of full scale)
    # shows more in quiet bins of loud clips: 0.09 dB at -79 dB for the sweep, against 0.03 for the Slaney bank.
    assert error[reference > -60.0].max() <= 0.03
    assert error[reference > -80.0].max() <= 0.1


def test_time_stretch_is_the_bicubic_resize() -> None:
    features = torch.randn(2, 1, 1001, 64, dtype=torch.float64) * 20 - 40
    expected = F.interpolate(features, (1024, 64), mode="bicubic", align_corners=True)
    stretched = BicubicTimeStretch(1001, 1024)(features.float()).double()
    assert stretched.shape == expected.shape
    # Against float64 truth: fp32 taps are off by ~2e-5 dB (torch's own fp32 bicubic by ~6e-3).
    assert torch.allclose(stretched, expected, atol=1e-4)
    assert not torch.allclose(stretched[:, :, :1001], features, atol=1.0)  # a real resize, not a copy


def assert_audio_parity(model_dir: Path, clips: list[np.ndarray], extractor: ClapFeatureExtractor) -> None:
    reference_model = ClapModel.from_pretrained(model_dir).eval()
    reference = hf_audio_embeddings(reference_model, extractor, clips)
    checkpoint = load_checkpoint(str(model_dir))
    ours = our_audio_embeddings(AudioEncoder(checkpoint.model, checkpoint.front_end).eval(), clips)
    result = compare(reference, ours)
    assert result.min_cosine >= 0.99999
    assert result.relative_error <= 0.01, result


def assert_text_parity(model_dir: Path) -> None:
    reference_model = ClapModel.from_pretrained(model_dir).eval()
    tokens = AutoTokenizer.from_pretrained(model_dir)(PROMPTS, padding=True, return_tensors="pt")
    checkpoint = load_checkpoint(str(model_dir))
    with torch.no_grad():
        reference = reference_model.get_text_features(**tokens).pooler_output.numpy()
        ours = TextEncoder(checkpoint.model).eval()(tokens["input_ids"], tokens["attention_mask"]).numpy()
    result = compare(reference, ours)
    assert result.min_cosine >= 0.99999
    assert result.relative_error <= 0.001, result


def test_small_audio_parity(small_model_dir: Path, test_audio: dict[str, np.ndarray]) -> None:
    assert_audio_parity(small_model_dir, list(test_audio.values()), unfused_extractor())


def test_small_text_parity(small_model_dir: Path) -> None:
    assert_text_parity(small_model_dir)


def test_fused_checkpoint_matches_reference_fusion_path(
    small_fused_model_dir: Path, test_audio: dict[str, np.ndarray]
) -> None:
    checkpoint = load_checkpoint(str(small_fused_model_dir))
    assert checkpoint.source_was_fused and checkpoint.notes
    assert checkpoint.front_end.mel_scale == "htk"
    clips = list(test_audio.values())  # all of at most 10 s: the fusion branch stays idle in the reference
    assert_audio_parity(small_fused_model_dir, clips, ClapFeatureExtractor(frequency_min=50, truncation="fusion"))


def test_results_do_not_depend_on_batch_composition(small_model_dir: Path, test_audio: dict[str, np.ndarray]) -> None:
    checkpoint = load_checkpoint(str(small_model_dir))
    encoder = AudioEncoder(checkpoint.model, checkpoint.front_end).eval()
    clips = list(test_audio.values())
    together = our_audio_embeddings(encoder, clips)
    alone = np.concatenate([our_audio_embeddings(encoder, [clip]) for clip in clips])
    assert np.abs(together - alone).max() < 1e-5


@pytest.mark.slow
def test_full_size_audio_parity(default_model_dir: Path, test_audio: dict[str, np.ndarray]) -> None:
    clips = [test_audio[name] for name in ("tone_440", "square_3k_full_scale", "bursts", "short_3_7s_noise")]
    assert_audio_parity(default_model_dir, clips, unfused_extractor())


@pytest.mark.slow
def test_full_size_text_parity(default_model_dir: Path) -> None:
    assert_text_parity(default_model_dir)
