"""`clapd finetune`: contrastive training of a CLAP on (audio, caption) pairs, as LAION trains it.

The loss is CLAP's symmetric InfoNCE with the model's own learned temperatures (`logit_scale_a` for audio->text,
`logit_scale_t` for text->audio, clamped at ln 100 as CLIP does); pairs that share a label count as positives of
each other, so repeated classes in a batch are not pushed apart (with unique labels this is plain InfoNCE).
The fp32 log-mel front end has no weights: it runs once per clip before training, and the level jitter acts on
its output (a gain of g dB adds g to every log-mel value above the floor, exactly).

After every epoch the output directory holds a complete Hugging Face model (weights, config, tokenizer, feature
extractor) that `clapd export` accepts, and `finetune_state.pt` (model, optimizer, epoch, random states) that
`--resume` continues from.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm
from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from clapd.models.checkpoints import CheckpointError, load_checkpoint
from clapd.models.encoders import AudioEmbedder, LogMelFeatures, TextEncoder
from clapd.models.finetune_data import DataError, PairDataset
from clapd.models.frontend import POWER_FLOOR, FrontEndSettings
from clapd.models.reference import build_tokenizer

logger = logging.getLogger(__name__)

TrainPart = Literal["projection", "last-blocks", "all"]
STATE_FILE = "finetune_state.pt"
STATE_FORMAT = 1
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's clamp: temperatures no sharper than 1/100
FLOOR_DB = 10.0 * math.log10(POWER_FLOOR)  # -100 dB: the front end's floor, which no gain moves
EVAL_BATCH = 32  # clips per no-grad forward when evaluating
TOKENIZER_VOCAB = 384  # BPE size for from-scratch models: small enough that words share sub-word pieces
INSTANCE_SCALE = 10.0  # 1 / temperature of the audio-to-audio loss (SimCLR's 0.1)
MAX_MASKED_SHARE = 0.2  # of a second view's frames, set to the floor
CAPTION_TEMPLATES = ("the sound of {}", "{} in the background", "a recording of {}", "{} nearby", "you can hear {}")


@dataclass(frozen=True, slots=True)
class TrainSettings:
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-4  # peak learning rate, after a linear warm-up, then cosine decay to zero
    weight_decay: float = 0.05  # on matrices only, not on biases, norms or temperatures
    warmup_fraction: float = 0.05  # of all steps
    train: TrainPart = "all"
    seed: int = 0
    word_noise: float = 0.0  # chance that a step drops each caption word or swaps it for a made-up one
    templates: bool = False  # wrap half the training captions in a random `CAPTION_TEMPLATES` frame
    gain_jitter_db: float = 0.0  # dB: each step shifts each clip's level by U(-x, x)
    audio_contrast: float = 0.0  # weight of the audio-to-audio loss between two views of each clip (0: off)
    threads: int = 0  # torch threads; 0: all cores
    progress: bool = True


@dataclass(frozen=True, slots=True)
class FeatureSet:
    """Precomputed model inputs with their text."""

    features: torch.Tensor  # float16 [clips, 1, spec_frames, n_mels], dB
    captions: tuple[tuple[str, ...], ...]  # per clip: the captions a step draws from
    labels: tuple[str, ...]  # per clip
    prompts: dict[str, str]  # label -> zero-shot prompt

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True, slots=True)
class Metrics:
    loss: float  # contrastive loss over the set, in batches of the training batch size
    recall_at_1: float  # text->audio: the top clip for each clip's first caption has that clip's label
    zero_shot: float  # each clip's nearest label prompt is its own label
    clips: int


@dataclass(frozen=True, slots=True)
class EpochReport:
    epoch: int
    train_loss: float
    val: Metrics | None
    logit_scale: float  # exp(logit_scale_a)
    seconds: float


# --- starting points ------------------------------------------------------------------------------------------------


def scratch_config(name: str, vocab_size: int) -> ClapConfig:
    """Small HTS-AT + RoBERTa CLAPs. 8x8 patches (4x4 windows) instead of 4x4 cut the first stage's 4096 tokens
    to 1024: ~10x faster training on a CPU; "tiny" is for tests."""
    widths = {"demo": (24, [1, 1, 2, 1], 64), "tiny": (8, [1, 1, 1, 1], 32)}
    if name not in widths:
        raise ValueError(f"unknown from-scratch config {name!r}; known: {', '.join(widths)}")
    width, depths, text_width = widths[name]
    audio = {
        "patch_embeds_hidden_size": width,
        "depths": depths,
        "num_attention_heads": [max(1, width * 2**i // 24) for i in range(len(depths))],
        "hidden_size": width * 2 ** (len(depths) - 1),
        "patch_size": 8,
        "patch_stride": [8, 8],
        "window_size": 4,
        "hidden_dropout_prob": 0.0,  # the level jitter and fresh clips regularise enough; dropout slows learning
    }
    text = {
        "vocab_size": vocab_size,
        "hidden_size": text_width,
        "num_hidden_layers": 2,
        "num_attention_heads": max(1, text_width // 32),
        "intermediate_size": 4 * text_width,
        "max_position_embeddings": 66,  # 64 tokens: RoBERTa positions start after the padding index
    }
    return ClapConfig(audio_config=audio, text_config=text, projection_dim=64 if name == "demo" else 32)


@dataclass(frozen=True, slots=True)
class StartPoint:
    model: ClapModel
    tokenizer: PreTrainedTokenizerBase
    front_end: FrontEndSettings


def from_scratch(name: str, corpus: Iterable[str], seed: int) -> StartPoint:
    """A randomly initialised model with a BPE tokenizer trained on `corpus`."""
    tokenizer = build_tokenizer(TOKENIZER_VOCAB, corpus)
    torch.manual_seed(seed)
    model = ClapModel(scratch_config(name, len(tokenizer)))
    model.apply(_init_for_width)
    return StartPoint(model, tokenizer, FrontEndSettings())


def _init_for_width(module: nn.Module) -> None:
    """Weights ~ N(0, 1 / fan_in), so that every layer passes on its input at unit scale.

    `ClapModel` draws every matrix of both towers with the joint config's std (0.006, set for 768 wide, 16 layer
    towers); in a 64 wide tower that leaves each attention and MLP branch ~1 % of the residual stream, every
    caption embeds alike (cosine 0.99999) and the loss sits at its chance value for hundreds of steps.
    """
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        fan_in = module.weight[0].numel()
        nn.init.trunc_normal_(module.weight, std=fan_in**-0.5)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def from_checkpoint(source: str, *, tokenizer: str | None = None, trust_pickle: bool = False) -> StartPoint:
    """Any source `clapd export` accepts. The saved directory is unfused with LAION's Slaney bank, so training
    uses that front end (a fused checkpoint's HTK bank would be lost on saving)."""
    checkpoint = load_checkpoint(source, tokenizer=tokenizer, trust_pickle=trust_pickle)
    front_end = replace(checkpoint.front_end, mel_scale="slaney", mel_norm="slaney")
    if front_end != checkpoint.front_end:
        logger.warning("%s: fine-tuning with the Slaney mel bank its saved directory will declare", source)
    return StartPoint(checkpoint.model, checkpoint.tokenizer, front_end)


# --- features -------------------------------------------------------------------------------------------------------


def precompute(dataset: PairDataset, front_end: FrontEndSettings, spec_frames: int, progress: bool) -> FeatureSet:
    """Run the fixed front end once per clip; returns fewer clips than `dataset` when it skips bad files."""
    features = LogMelFeatures(front_end, spec_frames).eval()
    chunks, captions, labels, audio = [], [], [], []

    def flush() -> None:
        with torch.no_grad():
            chunks.append(features(torch.from_numpy(np.stack(audio))).to(torch.float16))
        audio.clear()

    for pair in tqdm(dataset, total=len(dataset), disable=not progress, desc="front end", unit="clip"):
        audio.append(pair.audio)
        captions.append(pair.captions)
        labels.append(pair.label)
        if len(audio) == EVAL_BATCH:
            flush()
    if audio:
        flush()
    if not labels:
        raise DataError("no usable audio clips")
    return FeatureSet(torch.cat(chunks), tuple(captions), tuple(labels), dataset.prompts())


def jitter_gain(features: torch.Tensor, jitter_db: float, generator: torch.Generator) -> torch.Tensor:
    """Each clip's level moved by U(-jitter, jitter) dB: what a gain does to the log-mel, floor included."""
    if jitter_db <= 0:
        return features
    gain = (torch.rand(len(features), 1, 1, 1, generator=generator) * 2 - 1) * jitter_db
    return torch.where(features > FLOOR_DB, (features + gain).clamp(min=FLOOR_DB), features)


def second_view(features: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Another take of each clip: moved in time (circularly: the daemon's windows are repeat-padded, and a sliding
    window meets a sound anywhere in it) with a span of up to `MAX_MASKED_SHARE` of its frames at the floor."""
    frames = features.shape[2]
    shifts = torch.randint(frames, (len(features),), generator=generator).tolist()
    spans = (torch.rand(len(features), generator=generator) * MAX_MASKED_SHARE * frames).long().tolist()
    starts = torch.randint(frames, (len(features),), generator=generator).tolist()
    views = []
    for clip, shift, span, start in zip(features, shifts, spans, starts, strict=True):
        view = torch.roll(clip, shifts=shift, dims=1)
        view[:, start : start + span] = FLOOR_DB
        views.append(view)
    return torch.stack(views)


def augment_caption(captions: tuple[str, ...], rng: np.random.Generator, settings: TrainSettings) -> str:
    """One of the captions, with word noise and a template frame as `settings` ask.

    Made-up words teach the text tower that words it does not know carry no meaning, so that a new phrasing is
    read by the words it does know.
    """
    caption = captions[int(rng.integers(len(captions)))]
    if settings.word_noise > 0:
        words = []
        for word in caption.split():
            draw = rng.random()
            if draw >= settings.word_noise:
                words.append(word)
            elif draw >= settings.word_noise / 2:
                words.append(_made_up_word(rng))
        caption = " ".join(words) or _made_up_word(rng)
    if settings.templates and rng.random() < 0.5:
        caption = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))].format(caption)
    return caption


def _made_up_word(rng: np.random.Generator) -> str:
    return "".join(chr(ord("a") + int(c)) for c in rng.integers(0, 26, int(rng.integers(3, 10))))


def template_corpus() -> list[str]:
    """The templates' own words, for a from-scratch tokenizer."""
    return [t.format("").strip(" ,") for t in CAPTION_TEMPLATES]


# --- loss and metrics -----------------------------------------------------------------------------------------------


def contrastive_loss(
    audio: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, scale_a: torch.Tensor, scale_t: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE over unit embeddings [n, dim]; targets spread evenly over same-label pairs."""
    positives = (labels[:, None] == labels[None, :]).float()
    targets = positives / positives.sum(dim=1, keepdim=True)
    audio_to_text = F.log_softmax(scale_a.exp() * audio @ text.T, dim=1)
    text_to_audio = F.log_softmax(scale_t.exp() * text @ audio.T, dim=1)
    return -((targets * audio_to_text).sum(1).mean() + (targets * text_to_audio).sum(1).mean()) / 2


def instance_loss(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE between two views' unit embeddings [n, dim]: each clip's one positive is its other view.

    Text contrast pulls every clip of a class onto its caption and so teaches the audio tower to drop whatever the
    captions do not name (the pitch of this alarm, the rhythm of that chime); telling clips apart keeps it, and it
    is what audio examples and negative examples compare.
    """
    logits = INSTANCE_SCALE * first @ second.T
    targets = torch.arange(len(first))
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def label_ids(labels: Iterable[str]) -> torch.Tensor:
    index: dict[str, int] = {}
    return torch.tensor([index.setdefault(label, len(index)) for label in labels])


# --- training -------------------------------------------------------------------------------------------------------


def trainable_modules(model: ClapModel, part: TrainPart) -> list[nn.Module]:
    heads: list[nn.Module] = [model.audio_projection, model.text_projection]
    if part == "projection":
        return heads
    if part == "last-blocks":
        audio, text = model.audio_model.audio_encoder, model.text_model
        last = [audio.layers[-1], audio.norm, text.encoder.layer[-1], text.pooler]
        return heads + [m for m in last if m is not None]
    return [model]


class Trainer:
    """One model, its optimizer and random state; `step` trains on one batch, `evaluate` measures a set."""

    def __init__(self, start: StartPoint, settings: TrainSettings, total_steps: int) -> None:
        self.model, self.tokenizer, self.settings = start.model, start.tokenizer, settings
        self.audio, self.text = AudioEmbedder(self.model), TextEncoder(self.model)
        self.max_tokens = self.model.config.text_config.max_position_embeddings - 2
        self.modules = trainable_modules(self.model, settings.train)
        self.model.requires_grad_(False)
        for module in [*self.modules, self.model.logit_scale_a, self.model.logit_scale_t]:
            module.requires_grad_(True)
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": settings.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
        self.optimizer = torch.optim.AdamW(groups, lr=settings.lr)
        self.total_steps, self.steps_done, self.peak_lr = total_steps, 0, settings.lr
        self.rng = np.random.default_rng(settings.seed)
        self.generator = torch.Generator().manual_seed(settings.seed)

    def lr_at(self, step: int) -> float:
        warmup = max(1, int(self.settings.warmup_fraction * self.total_steps))
        if step < warmup:
            return self.peak_lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, self.total_steps - warmup)
        return self.peak_lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    def _train_mode(self) -> None:
        self.model.eval()  # frozen parts keep their batch-norm statistics and drop no units
        for module in self.modules:
            module.train()

    def _embed_text(self, captions: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            captions, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        )
        return self.text(tokens["input_ids"], tokens["attention_mask"])

    def model_loss(self, audio: torch.Tensor, text: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return contrastive_loss(audio, text, labels, self.model.logit_scale_a, self.model.logit_scale_t)

    def step(self, data: FeatureSet, index: list[int]) -> float:
        """One optimizer step on the clips `index` of `data`, with level jitter and caption augmentation."""
        self._train_mode()
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.steps_done)
        features = jitter_gain(data.features[index].float(), self.settings.gain_jitter_db, self.generator)
        captions = [augment_caption(data.captions[i], self.rng, self.settings) for i in index]
        labels = label_ids(data.labels[i] for i in index)
        audio = self.audio(features)
        loss = self.model_loss(audio, self._embed_text(captions), labels)
        if self.settings.audio_contrast > 0:
            other = second_view(data.features[index].float(), self.generator)
            other = jitter_gain(other, self.settings.gain_jitter_db, self.generator)
            loss = loss + self.settings.audio_contrast * instance_loss(audio, self.audio(other))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            for scale in (self.model.logit_scale_a, self.model.logit_scale_t):
                scale.clamp_(0.0, MAX_LOGIT_SCALE)
        self.steps_done += 1
        return loss.detach().item()

    def batches(self, size: int) -> list[list[int]]:
        """A shuffled epoch; a last batch of one clip is dropped (batch norm needs two)."""
        order = self.rng.permutation(size).tolist()
        batches = [order[i : i + self.settings.batch_size] for i in range(0, size, self.settings.batch_size)]
        return [b for b in batches if len(b) >= 2]

    @torch.no_grad()
    def evaluate(self, data: FeatureSet) -> Metrics:
        self.model.eval()
        starts = range(0, len(data), EVAL_BATCH)
        audio = torch.cat([self.audio(data.features[i : i + EVAL_BATCH].float()) for i in starts])
        text = torch.cat([self._embed_text([c[0] for c in data.captions[i : i + EVAL_BATCH]]) for i in starts])
        labels = label_ids(data.labels)
        size = self.settings.batch_size
        losses = [
            float(self.model_loss(audio[i : i + size], text[i : i + size], labels[i : i + size]))
            for i in range(0, len(data), size)
        ]
        recall = (labels[(text @ audio.T).argmax(dim=1)] == labels).float().mean()
        return Metrics(float(np.mean(losses)), float(recall), self._zero_shot(data, audio), len(data))

    def _zero_shot(self, data: FeatureSet, audio: torch.Tensor) -> float:
        names = sorted(data.prompts)
        prompts = self._embed_text([data.prompts[n] for n in names])
        known = [i for i, label in enumerate(data.labels) if label in data.prompts]
        if not known:
            return math.nan
        predicted = (audio[known] @ prompts.T).argmax(dim=1)
        return float(np.mean([names[p] == data.labels[i] for p, i in zip(predicted.tolist(), known, strict=True)]))

    def state(self, epoch: int) -> dict[str, object]:
        return {
            "format": STATE_FORMAT,
            "epoch": epoch,
            "steps_done": self.steps_done,
            "train": self.settings.train,
            "lr": self.peak_lr,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": self.generator.get_state(),
            "torch_global_rng": torch.get_rng_state(),  # dropout draws from it
        }

    def load_state(self, state: dict) -> int:
        """Restore a `state`, its peak learning rate included; returns the number of epochs it had finished."""
        if state.get("format") != STATE_FORMAT or state.get("train") != self.settings.train:
            raise CheckpointError(
                f"the saved run trained {state.get('train')!r}: resume with --train {state.get('train')}"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["numpy_rng"]
        self.generator.set_state(state["torch_rng"])
        torch.set_rng_state(state["torch_global_rng"])
        self.steps_done, self.peak_lr = int(state["steps_done"]), float(state["lr"])
        return int(state["epoch"])


# --- a whole run ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FinetuneRequest:
    out_dir: Path
    train_data: PairDataset
    val_data: PairDataset | None = None
    source: str | None = None  # a checkpoint `clapd export` accepts
    scratch: str | None = None  # or a `scratch_config` name
    settings: TrainSettings = TrainSettings()
    resume: bool = False  # continue the run in `out_dir` (its own model; `source`/`scratch` are ignored)
    tokenizer: str | None = None
    trust_pickle: bool = False


def finetune(request: FinetuneRequest, report: Callable[[EpochReport], None] | None = None) -> list[EpochReport]:
    """Train, saving the model directory and the resume state after every epoch; returns this run's epochs."""
    settings = request.settings
    torch.set_num_threads(settings.threads or os.cpu_count() or 1)
    start = _start_point(request)
    encoder = start.model.audio_model.audio_encoder
    spec_frames = int(encoder.spec_size * encoder.freq_ratio)  # 1024 for HTS-AT
    train = precompute(request.train_data, start.front_end, spec_frames, settings.progress)
    val = None
    if request.val_data is not None and len(request.val_data):
        val = precompute(request.val_data, start.front_end, spec_frames, settings.progress)
    trainer = Trainer(start, settings, settings.epochs * len(_epoch_sizes(len(train), settings.batch_size)))
    done = 0
    if request.resume:
        done = trainer.load_state(torch.load(request.out_dir / STATE_FILE, map_location="cpu", weights_only=True))
    else:
        save_directory(start, request.out_dir)
    reports = []
    for epoch in range(done + 1, settings.epochs + 1):
        reports.append(_run_epoch(trainer, train, val, epoch))
        _save_weights(start.model, request.out_dir)
        _save_state(trainer.state(epoch), request.out_dir / STATE_FILE)
        if report is not None:
            report(reports[-1])
    return reports


def _epoch_sizes(clips: int, batch_size: int) -> list[int]:
    sizes = [batch_size] * (clips // batch_size) + [clips % batch_size]
    return [s for s in sizes if s >= 2]


def _start_point(request: FinetuneRequest) -> StartPoint:
    out = request.out_dir
    if request.resume:
        if not (out / STATE_FILE).is_file():
            raise CheckpointError(f"{out}: no {STATE_FILE} to resume from")
        return from_checkpoint(str(out))
    if out.exists() and ((out / STATE_FILE).exists() or (out / "config.json").exists()):
        raise CheckpointError(f"{out}: already holds a model; pass --resume to continue its run, or another directory")
    if request.scratch is not None:
        corpus = request.train_data.corpus() + (template_corpus() if request.settings.templates else [])
        return from_scratch(request.scratch, corpus, request.settings.seed)
    if request.source is None:
        raise ValueError("a fine-tuning run needs a source checkpoint or a from-scratch config")
    return from_checkpoint(request.source, tokenizer=request.tokenizer, trust_pickle=request.trust_pickle)


def _run_epoch(trainer: Trainer, train: FeatureSet, val: FeatureSet | None, epoch: int) -> EpochReport:
    began = time.perf_counter()
    settings = trainer.settings
    losses = []
    batches = trainer.batches(len(train))
    with tqdm(batches, desc=f"epoch {epoch}/{settings.epochs}", disable=not settings.progress, unit="step") as bar:
        for index in bar:
            losses.append(trainer.step(train, index))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    metrics = trainer.evaluate(val) if val is not None else None
    scale = trainer.model.logit_scale_a.detach().exp().item()
    return EpochReport(epoch, float(np.mean(losses)), metrics, scale, time.perf_counter() - began)


def feature_extractor(front_end: FrontEndSettings) -> ClapFeatureExtractor:
    """The unfused reference settings (`rand_trunc`: the Slaney bank) for `front_end`."""
    return ClapFeatureExtractor(
        feature_size=front_end.n_mels,
        sampling_rate=front_end.sample_rate,
        hop_length=front_end.hop_length,
        max_length_s=front_end.window_samples // front_end.sample_rate,
        fft_window_size=front_end.n_fft,
        frequency_min=front_end.f_min,
        frequency_max=front_end.f_max,
        truncation="rand_trunc",
        padding="repeatpad",
    )


def save_directory(start: StartPoint, out_dir: Path) -> None:
    """A complete Hugging Face model directory: weights, config, tokenizer, feature extractor."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _save_weights(start.model, out_dir)
    start.tokenizer.save_pretrained(out_dir)
    feature_extractor(start.front_end).save_pretrained(out_dir)


def _save_weights(model: ClapModel, out_dir: Path) -> None:
    """`save_pretrained` without its progress bar, which would interleave with training's every epoch."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(out_dir)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _save_state(state: dict[str, object], path: Path) -> None:
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def format_report(report: EpochReport) -> str:
    line = f"epoch {report.epoch}: loss {report.train_loss:.3f}"
    if report.val is not None:
        val = report.val
        line += (
            f", val loss {val.loss:.3f}, R@1 text->audio {val.recall_at_1:.1%}, zero-shot {val.zero_shot:.1%}"
            f" ({val.clips} clips)"
        )
    return line + f", logit scale {report.logit_scale:.1f}, {report.seconds:.0f} s"
