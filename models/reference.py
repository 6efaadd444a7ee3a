"""Random-weight reference CLAPs of the real architectures, built here because these machines have no hub.

Tests, benchmarks and the README's first command export these; they exercise every code path a trained model
does. Random init hides some bugs, so the statistics that matter are set to trained-like values: the mel batch
norm's running mean and variance sit where real log-mel dB values do.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, PreTrainedTokenizerFast

from clapd.models.frontend import FrontEndSettings

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa's ids 0-4; <pad> = 1 = padding_idx

SIZES = ("small", "default", "base")


def reference_config(size: str, *, fused: bool = False) -> ClapConfig:
    """ "default" is `ClapConfig()` (laion/clap-htsat-unfused: HTSAT-tiny + RoBERTa-base); "base" is HTSAT-base
    (laion/larger_clap_*); "small" keeps the structure (4 Swin stages, window 8, 256 spec) at a tiny width."""
    fusion = {"enable_fusion": True, "fusion_type": "aff_2d"} if fused else {}
    if size == "default":
        return ClapConfig(audio_config=fusion)
    if size == "base":
        audio = {"patch_embeds_hidden_size": 128, "depths": [2, 2, 12, 2], "hidden_size": 1024, **fusion}
        return ClapConfig(audio_config=audio)
    if size != "small":
        raise ValueError(f"size must be one of {SIZES}, not {size!r}")
    audio = {
        "patch_embeds_hidden_size": 16,
        "depths": [1, 1, 2, 1],
        "num_attention_heads": [1, 2, 2, 4],
        "hidden_size": 128,  # = patch_embeds_hidden_size * 2 ** (stages - 1)
        **fusion,
    }
    text = {
        "vocab_size": 1000,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 1,  # hidden / 64, as RoBERTa (and LAION-checkpoint loading) assume
        "intermediate_size": 128,
        "max_position_embeddings": 130,
    }
    return ClapConfig(audio_config=audio, text_config=text, projection_dim=32)


def caption_corpus() -> list[str]:
    """Sound-description text to train a byte-level BPE on (stands in for RoBERTa's vocabulary)."""
    things = [
        "dog",
        "cat",
        "siren",
        "smoke alarm",
        "phone",
        "door",
        "glass",
        "engine",
        "water",
        "baby",
        "bird",
        "clock",
        "car horn",
        "knock",
        "speech",
        "music",
        "rain",
        "wind",
        "footsteps",
        "keyboard",
    ]
    verbs = [
        "barking",
        "meowing",
        "wailing",
        "beeping",
        "ringing",
        "slamming",
        "breaking",
        "humming",
        "running",
        "crying",
        "singing",
        "ticking",
        "honking",
        "knocking",
        "talking",
        "playing",
        "falling",
        "blowing",
    ]
    frames = [
        "the sound of a {} {}",
        "a {} {} nearby",
        "someone hears a {} {}",
        "loud {} {} in the distance",
        "quiet {} {} indoors",
        "A {} is {}.",
        "recording of {} {} outside",
    ]
    return [f.format(t, v) for f, t, v in itertools.product(frames, things, verbs)]


def build_tokenizer(vocab_size: int, corpus: Iterable[str] | None = None) -> PreTrainedTokenizerFast:
    """A RoBERTa-style byte-level BPE tokenizer (<s> text </s>, <pad> = 1) trained on `corpus` (default:
    `caption_corpus`)."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(caption_corpus() if corpus is None else corpus, trainer=trainer)
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=512,
    )


def build_reference_model(size: str, *, seed: int = 0, fused: bool = False) -> ClapModel:
    torch.manual_seed(seed)
    model = ClapModel(reference_config(size, fused=fused)).eval()
    mel_bn = model.audio_model.audio_encoder.batch_norm
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        # Real log-mel inputs average around -50..-20 dB with ~15 dB spread; unit statistics would let a
        # front end that is off by a constant pass.
        mel_bn.running_mean.copy_(-35.0 + 10.0 * torch.rand(mel_bn.num_features, generator=generator))
        mel_bn.running_var.copy_((12.0 + 6.0 * torch.rand(mel_bn.num_features, generator=generator)) ** 2)
        mel_bn.weight.copy_(1.0 + 0.1 * torch.randn(mel_bn.num_features, generator=generator))
        mel_bn.bias.copy_(0.1 * torch.randn(mel_bn.num_features, generator=generator))
    return model


def save_reference_model(size: str, out_dir: Path, *, seed: int = 0, fused: bool = False) -> Path:
    """Write a complete Hugging Face model directory: weights, config, tokenizer, feature extractor."""
    model = build_reference_model(size, seed=seed, fused=fused)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer_vocab = min(model.config.text_config.vocab_size, 1000)
    build_tokenizer(tokenizer_vocab).save_pretrained(out_dir)
    front_end = FrontEndSettings()
    ClapFeatureExtractor(
        frequency_min=front_end.f_min,
        frequency_max=front_end.f_max,
        truncation="fusion" if fused else "rand_trunc",
    ).save_pretrained(out_dir)
    return out_dir
