"""`clapd finetune`: training lowers the loss, resume continues, the result exports, bad data gets clear errors."""

from __future__ import annotations

import argparse
import csv
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from safetensors.torch import load_file

from clapd.export.bundle import ExportRequest, export_bundle
from clapd.models import finetune_cli, machine_pairs
from clapd.models.finetune import (
    FLOOR_DB,
    MAX_MASKED_SHARE,
    STATE_FILE,
    EpochReport,
    FeatureSet,
    Trainer,
    TrainSettings,
    finetune,
    from_scratch,
    precompute,
    second_view,
)
from clapd.models.finetune_data import (
    WINDOW_SAMPLES,
    DataError,
    Pair,
    PairsDataset,
    SyntheticDataset,
    read_audio,
)
from clapd.models.frontend import FrontEndSettings

SAMPLE_RATE = 48_000  # Hz
SOUNDS = {  # distinct, cheap sounds: (frequency Hz, on-off rate Hz)
    "a low hum": (120.0, 0.0),
    "a high whistle": (6000.0, 0.0),
    "a mid beep pulsing": (1000.0, 4.0),
    "a shrill fast beeping": (3000.0, 9.0),
    "hissing noise": (0.0, 0.0),
    "clicking": (0.0, 3.0),
    "a slow pulse of low tone": (300.0, 1.0),
    "a bright tone": (2000.0, 0.0),
}


def sound(caption: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    f, rate = SOUNDS[caption]
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    x = np.sin(2 * np.pi * f * t) if f else rng.standard_normal(len(t)) * 0.3
    if rate:
        x = x * (np.sin(2 * np.pi * rate * t) > 0.3)
    return (0.3 * x + 0.003 * rng.standard_normal(len(t))).astype(np.float32)


@dataclass
class ListDataset:
    pairs: list[Pair]

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[Pair]:
        return iter(self.pairs)

    def prompts(self) -> dict[str, str]:
        return {p.label: p.captions[0] for p in self.pairs}

    def corpus(self) -> list[str]:
        return [p.captions[0] for p in self.pairs]


@pytest.fixture(scope="module")
def batch() -> FeatureSet:
    rng = np.random.default_rng(0)
    pairs = [Pair(np.resize(sound(c, 2.0, rng), WINDOW_SAMPLES), (c,), c) for c in SOUNDS]
    return precompute(ListDataset(pairs), FrontEndSettings(), 1024, progress=False)


def test_a_few_steps_lower_the_loss_and_raise_recall(batch: FeatureSet) -> None:
    steps = 60
    start = from_scratch("tiny", list(SOUNDS), seed=0)
    trainer = Trainer(start, TrainSettings(batch_size=8, lr=1e-3, warmup_fraction=0.1, progress=False), steps)
    before = trainer.evaluate(batch)
    for _ in range(steps):
        trainer.step(batch, list(range(len(batch))))
    after = trainer.evaluate(batch)
    assert after.loss < before.loss - 1.0
    assert after.recall_at_1 >= 0.75 > before.recall_at_1


def test_second_view_moves_the_clip_in_time_and_masks_a_span() -> None:
    features = torch.randn(4, 1, 64, 8)
    view = second_view(features, torch.Generator().manual_seed(0))
    for clip, other in zip(features, view, strict=True):
        kept = [
            int((torch.roll(clip, s, dims=1) == other).all(dim=-1).sum()) for s in range(clip.shape[1])
        ]  # frames equal to the clip moved by each shift
        assert max(kept) >= (1 - MAX_MASKED_SHARE) * clip.shape[1]
        assert int((other == FLOOR_DB).all(dim=-1).sum()) == clip.shape[1] - max(kept)


def test_the_audio_loss_keeps_clips_that_share_a_caption_apart(batch: FeatureSet) -> None:
    """Two sounds per caption: text contrast alone pulls them together, the audio-to-audio loss keeps what tells
    them apart (an oven timer's beep from a smoke alarm's) while the captions are still found."""
    captions = tuple((f"sound {i // 2}",) for i in range(len(batch)))  # clips 0 and 1 share one, 2 and 3 ...
    data = replace(batch, captions=captions, labels=tuple(c[0] for c in captions))
    text_only, with_audio = train_tiny(data, 0.0), train_tiny(data, 1.0)
    assert cosine_of_pairs(with_audio, data) < cosine_of_pairs(text_only, data) - 0.1
    assert with_audio.evaluate(data).recall_at_1 >= 0.75


def train_tiny(data: FeatureSet, audio_contrast: float, steps: int = 60) -> Trainer:
    start = from_scratch("tiny", [c[0] for c in data.captions], seed=0)
    settings = TrainSettings(batch_size=8, lr=1e-3, warmup_fraction=0.1, audio_contrast=audio_contrast, progress=False)
    trainer = Trainer(start, settings, steps)
    for _ in range(steps):
        trainer.step(data, list(range(len(data))))
    return trainer


def cosine_of_pairs(trainer: Trainer, data: FeatureSet) -> float:
    """Mean cosine between the two clips of each caption."""
    trainer.model.eval()
    with torch.no_grad():
        audio = trainer.audio(data.features.float())
    return float((audio[0::2] * audio[1::2]).sum(dim=1).mean())


@pytest.fixture(scope="module")
def pairs_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(1)
    rows = []
    for i in range(2):
        for k, caption in enumerate(SOUNDS):
            name = f"clip_{i}_{k}.wav"
            soundfile.write(root / name, sound(caption, rng.uniform(1.0, 3.0), rng), SAMPLE_RATE)
            rows.append({"path": name, "caption": caption})
    write_csv(root / "pairs.csv", rows)
    return root / "pairs.csv"


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    return path


COMMON = ("--threads", "2", "--no-progress", "--batch-size", "8", "--val-fraction", "0.25")


def run_cli(*args: str) -> int:
    return finetune_cli.main([*COMMON, *args])


def parse(*args: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    finetune_cli.add_finetune_parser(parser.add_subparsers())
    return parser.parse_args(["finetune", *COMMON, *args])


class Interrupted(Exception):
    pass


def stop_after_first_epoch(report: EpochReport) -> None:
    if report.epoch == 1:
        raise Interrupted


def test_resume_continues_from_the_saved_epoch(
    pairs_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert run_cli(str(pairs_csv), "--from-scratch", "tiny", "--epochs", "2", "-o", str(whole)) == 0
    request = finetune_cli.build_request(
        parse(str(pairs_csv), "--from-scratch", "tiny", "--epochs", "2", "-o", str(split))
    )
    with pytest.raises(Interrupted):
        finetune(request, report=stop_after_first_epoch)
    assert torch.load(split / STATE_FILE, weights_only=True)["epoch"] == 1
    capsys.readouterr()
    assert run_cli(str(pairs_csv), "--resume", "--epochs", "2", "-o", str(split)) == 0
    printed = capsys.readouterr().out
    assert "epoch 2:" in printed and "epoch 1:" not in printed
    a = torch.load(whole / STATE_FILE, weights_only=True)
    b = torch.load(split / STATE_FILE, weights_only=True)
    assert b["epoch"] == 2 and b["steps_done"] == a["steps_done"]
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_a_second_run_into_a_model_directory_is_refused(
    pairs_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model"
    assert run_cli(str(pairs_csv), "--from-scratch", "tiny", "--epochs", "1", "-o", str(out)) == 0
    assert run_cli(str(pairs_csv), "--from-scratch", "tiny", "--epochs", "1", "-o", str(out)) == 1
    assert "--resume" in capsys.readouterr().err


def test_fine_tuned_directory_exports_and_verifies(pairs_csv: Path, small_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "tuned"
    code = run_cli(
        str(pairs_csv), "--from", str(small_model_dir), "--train", "last-blocks", "--epochs", "1", "-o", str(out)
    )
    assert code == 0
    manifest = export_bundle(
        ExportRequest(source=str(out), out_dir=tmp_path / "bundle", precisions=("fp32",), progress=False)
    )
    assert manifest.audio["fp32"].parity.min_cosine >= 0.99999
    assert manifest.embedding_size == 32 and (tmp_path / "bundle" / "tokenizer.json").is_file()


def test_projection_only_leaves_the_encoders_alone(pairs_csv: Path, small_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "heads"
    assert (
        run_cli(
            str(pairs_csv), "--from", str(small_model_dir), "--train", "projection", "--epochs", "1", "-o", str(out)
        )
        == 0
    )
    before, after = load_file(small_model_dir / "model.safetensors"), load_file(out / "model.safetensors")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("audio_projection", "text_projection", "logit_scale")) for k in changed)


# --- bad data -------------------------------------------------------------------------------------------------------


@pytest.fixture
def mixed_csv(tmp_path: Path) -> Path:
    rng = np.random.default_rng(2)
    soundfile.write(tmp_path / "good.wav", sound("a low hum", 1.0, rng), SAMPLE_RATE)
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really a wave file")
    rows = [
        {"path": "good.wav", "caption": "a low hum"},
        {"path": "missing.wav", "caption": "a high whistle"},
        {"path": "broken.wav", "caption": "clicking"},
    ]
    return write_csv(tmp_path / "pairs.csv", rows)


def test_missing_and_unreadable_files_are_skipped_and_counted(mixed_csv: Path) -> None:
    dataset = PairsDataset.open(mixed_csv)
    pairs = list(dataset)
    assert [p.captions for p in pairs] == [("a low hum",)]
    reasons = {b.path.name: b.reason for b in dataset.bad_files}
    assert reasons["missing.wav"] == "missing" and reasons["broken.wav"].startswith("unreadable")
    assert dataset.bad_summary().startswith("skipped 2 of 3 audio files")


def test_bad_audio_is_fatal_with_the_flag(mixed_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(DataError, match="missing.wav: missing"):
        list(PairsDataset.open(mixed_csv, strict=True))
    code = run_cli(str(mixed_csv), "--from-scratch", "tiny", "--strict-audio", "-o", str(tmp_path / "out"))
    err = capsys.readouterr().err
    assert code == 1 and "missing.wav: missing" in err and len(err.strip().splitlines()) == 1


def test_empty_caption_names_its_line(tmp_path: Path) -> None:
    rows = [{"path": "a.wav", "caption": "a dog"}, {"path": "b.wav", "caption": "  "}]
    with pytest.raises(DataError, match=r"pairs.csv: line 3: empty caption"):
        PairsDataset.open(write_csv(tmp_path / "pairs.csv", rows))


def test_csv_without_the_columns_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pairs.csv").write_text("file,text\na.wav,a dog\n")
    with pytest.raises(DataError, match="'path' and 'caption'"):
        PairsDataset.open(tmp_path / "pairs.csv")


def test_44k1_stereo_is_downmixed_and_resampled(tmp_path: Path) -> None:
    t = np.arange(int(2.0 * 44_100)) / 44_100
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    soundfile.write(tmp_path / "stereo.wav", np.stack([left, -0.5 * left + 0.2], axis=1), 44_100)
    audio = read_audio(tmp_path / "stereo.wav")
    assert audio.dtype == np.float32 and audio.shape == (2 * SAMPLE_RATE,)
    np.testing.assert_allclose(
        audio[1000:-1000], 0.125 * np.sin(2 * np.pi * 440 * np.arange(96_000) / 48_000)[1000:-1000] + 0.1, atol=1e-3
    )
    write_csv(tmp_path / "pairs.csv", [{"path": "stereo.wav", "caption": "a tone"}])
    (pair,) = list(PairsDataset.open(tmp_path / "pairs.csv"))
    assert pair.audio.shape == (WINDOW_SAMPLES,)
    np.testing.assert_array_equal(pair.audio[: 2 * SAMPLE_RATE], pair.audio[2 * SAMPLE_RATE : 4 * SAMPLE_RATE])


def test_folder_layout_captions(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    for folder in ("dog_barking", "door"):
        (tmp_path / folder).mkdir()
        soundfile.write(tmp_path / folder / "x.wav", sound("clicking", 1.0, rng), SAMPLE_RATE)
    (tmp_path / "door" / "captions.txt").write_text("a door slamming\n\nsomeone shuts a door\n")
    dataset = PairsDataset.open(tmp_path)
    assert {p.label: p.captions for p in dataset} == {
        "dog_barking": ("dog barking",),
        "door": ("a door slamming", "someone shuts a door"),
    }
    assert dataset.prompts() == {"dog_barking": "dog barking", "door": "door"}


def test_synthetic_dataset_is_seeded_and_balanced() -> None:
    a, b = list(SyntheticDataset(12, seed=5)), list(SyntheticDataset(12, seed=5))
    assert all(np.array_equal(x.audio, y.audio) for x, y in zip(a, b, strict=True))
    assert all(p.audio.shape == (WINDOW_SAMPLES,) for p in a)
    prompts = SyntheticDataset(1).prompts()
    held_out = {prompts[p.label] for p in a if not p.label.startswith("background:")}
    assert not held_out & {c for p in a for c in p.captions}


def test_synthetic_machine_share_adds_normal_machines_labelled_by_type_and_condition() -> None:
    """Issue 12: a share of clips are machines running normally; each label's held-out prompt is not trained on."""
    dataset = SyntheticDataset(24, seed=2, machines_share=0.5)
    pairs = list(dataset)
    machines = [p for p in pairs if p.label.startswith(machine_pairs.LABEL_PREFIX)]
    assert 4 <= len(machines) <= 20 and len(pairs) == 24  # about half, drawn per clip
    prompts, corpus = dataset.prompts(), set(dataset.corpus())
    assert set(machine_pairs.labels()) <= set(prompts)
    for pair in machines:
        assert pair.audio.shape == (WINDOW_SAMPLES,) and 0.09 < float(np.abs(pair.audio).max()) < 0.11  # -20 dBFS
        assert set(pair.captions) <= corpus and prompts[pair.label] not in corpus
        assert {*pair.captions, prompts[pair.label]} == set(machine_pairs.captions(pair.label))
        assert all(pair.label.split(":")[1][:4] in caption for caption in pair.captions)  # fan, pump, gear, comp
    assert not any(p.label.startswith(machine_pairs.LABEL_PREFIX) for p in SyntheticDataset(24, seed=2))
