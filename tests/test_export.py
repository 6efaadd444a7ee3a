"""`clapd export`: bundles that pass their own verification, match the reference, and land whole or not at all."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import SAMPLE_RATE, WINDOW, hf_audio_embeddings, run_clapd
from laion_layout import save_laion_checkpoint
from onnx import numpy_helper
from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel

from clapd.daemon.manifest import BundleError, Manifest
from clapd.daemon.tokenizer import PromptTokenizer
from clapd.daemon.windows import repeat_pad
from clapd.export import onnx_graphs, verify
from clapd.export.bundle import ExportRequest, export_bundle

PROMPTS = ["a dog barking", "an alarm", "water running from a tap", "knock knock"]


def export_cli(source: Path | str, out: Path, *extra: str) -> Manifest:
    result = run_clapd("export", str(source), "-o", str(out), "--no-progress", *extra)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "bundle written" in result.stdout
    return Manifest.read(out)


def audio_session(bundle_dir: Path, precision: str) -> ort.InferenceSession:
    return verify.cpu_session(str(bundle_dir / f"audio_{precision}.onnx"))


def onnx_audio(bundle_dir: Path, precision: str, clips: list[np.ndarray]) -> np.ndarray:
    batch = np.stack([repeat_pad(clip.astype(np.float32), WINDOW) for clip in clips])
    return audio_session(bundle_dir, precision).run(None, {"waveform": batch})[0]


def onnx_text(bundle_dir: Path, manifest: Manifest, prompts: list[str]) -> np.ndarray:
    tokenizer = PromptTokenizer(
        bundle_dir / manifest.tokenizer.file,
        pad_token_id=manifest.tokenizer.pad_token_id,
        max_tokens=manifest.tokenizer.max_tokens,
    )
    tokens = tokenizer(prompts)
    session = verify.cpu_session(str(bundle_dir / manifest.text.file))
    return session.run(None, {"input_ids": tokens.input_ids, "attention_mask": tokens.attention_mask})[0]


@pytest.fixture(scope="module")
def small_bundle(small_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "small"
    export_cli(small_model_dir, out, "--precision", "fp32,fp16,int8")
    return out


def test_manifest_describes_every_file(small_bundle: Path, small_model_dir: Path) -> None:
    manifest = Manifest.read(small_bundle)
    manifest.check_files(small_bundle)
    assert sorted(p.name for p in small_bundle.iterdir()) == sorted(
        ["audio_fp32.onnx", "audio_fp16.onnx", "audio_int8.onnx", "text_fp32.onnx", "tokenizer.json", "manifest.json"]
    )
    config = json.loads((small_model_dir / "config.json").read_text())
    assert manifest.source == str(small_model_dir)
    assert (manifest.sample_rate, manifest.window_samples, manifest.min_window_samples) == (48000, 480000, 48000)
    assert manifest.embedding_size == config["projection_dim"] == 32
    model = ClapModel.from_pretrained(small_model_dir)
    assert manifest.logit_scale == pytest.approx(model.logit_scale_a.exp().item(), rel=1e-6)
    assert manifest.tokenizer.pad_token_id == 1
    for precision, entry in manifest.audio.items():
        assert entry.precision == precision and entry.opset == onnx_graphs.OPSET
        assert entry.inputs[0].name == "waveform" and entry.inputs[0].shape == ["batch", 480000]
        assert entry.parity.min_cosine >= verify.MIN_COSINE[precision] == entry.parity.min_cosine_required
        assert entry.parity.inputs == len(verify.verification_clips(SAMPLE_RATE, WINDOW))
        session = audio_session(small_bundle, precision)
        assert [i.name for i in session.get_inputs()] == ["waveform"]
        assert session.get_inputs()[0].type == "tensor(float)"  # fp16 and int8 keep fp32 at the boundary


def test_tampered_bundle_is_detected(small_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(small_bundle, copy)
    with (copy / "tokenizer.json").open("ab") as f:
        f.write(b" ")
    with pytest.raises(BundleError, match="sha256 differs"):
        Manifest.read(copy).check_files(copy)
    (copy / "text_fp32.onnx").unlink()
    with pytest.raises(BundleError, match="missing"):
        Manifest.read(copy).check_files(copy)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_onnx_audio_matches_the_reference(
    small_bundle: Path, small_model_dir: Path, test_audio: dict[str, np.ndarray], precision: str
) -> None:
    """End to end: waveform -> ONNX, against transformers' extractor + model, short clips included."""
    clips = list(test_audio.values())
    reference = hf_audio_embeddings(
        ClapModel.from_pretrained(small_model_dir).eval(),
        ClapFeatureExtractor.from_pretrained(small_model_dir),
        clips,
    )
    result = verify.compare(reference, onnx_audio(small_bundle, precision, clips))
    assert result.min_cosine >= verify.MIN_COSINE[precision]
    if precision != "int8":
        assert result.relative_error <= verify.MAX_RELATIVE_ERROR[precision]


# The largest tensor the front end needs stored is the mel bank (297 bins x 64 filters fp32: 76 KB); the DFT basis
# (2.4 MB), a dense bicubic matrix (4 MB) or the basis's int64 index (4.9 MB) must not come back.
MAX_FRONT_END_TENSOR_BYTES = 128 * 1024
MAX_FRONT_END_BYTES = 256 * 1024


def front_end_tensors(model: onnx.ModelProto) -> dict[str, int]:
    """Bytes of every tensor the front end stores: its initializers and its Constant nodes' values."""
    prefix = onnx_graphs.FRONT_END_PREFIX
    stored = {t.name: numpy_helper.to_array(t).nbytes for t in model.graph.initializer if t.name.startswith(prefix)}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0].startswith(prefix):
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.TENSOR:
                    stored[node.output[0]] = numpy_helper.to_array(attribute.t).nbytes
    return stored


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_front_end_stores_no_dft_basis(small_bundle: Path, precision: str) -> None:
    """The DFT basis is built in the graph from small tables; folded by the exporter, it would be stored again."""
    model = onnx.load(str(small_bundle / f"audio_{precision}.onnx"))
    stored = front_end_tensors(model)
    assert any("cosine" in name for name in stored)  # the front end is there, under its prefix
    largest = max(stored, key=stored.__getitem__)
    assert stored[largest] <= MAX_FRONT_END_TENSOR_BYTES, (largest, stored[largest])
    assert sum(stored.values()) <= MAX_FRONT_END_BYTES
    ops = {node.op_type for node in model.graph.node if node.name.startswith(onnx_graphs.FRONT_END_PREFIX)}
    assert {"Mod", "Gather", "Conv"} <= ops


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_dynamic_batch_gives_the_same_rows(
    small_bundle: Path, test_audio: dict[str, np.ndarray], precision: str
) -> None:
    clips = list(test_audio.values())[:3]
    together = onnx_audio(small_bundle, precision, clips)
    alone = np.concatenate([onnx_audio(small_bundle, precision, [clip]) for clip in clips])
    assert together.shape == (3, 32)
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-3)
    # int8 is static: its activation scales were fixed at export, so no precision depends on the batch.
    assert Manifest.read(small_bundle).audio[precision].batch_invariant
    assert np.abs(together - alone).max() < verify.BATCH_INVARIANCE_TOLERANCE


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def int8_rows_in_other_batches(bundle_dir: Path, windows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(each window alone, the same windows taken from batches of other sizes, orders and companions)."""
    session = audio_session(bundle_dir, "int8")

    def run(rows: list[int]) -> np.ndarray:
        return session.run(None, {"waveform": np.stack([windows[i] for i in rows])})[0]

    alone = np.concatenate([run([i]) for i in range(len(windows))])
    everything = list(range(len(windows)))
    batches = [everything, everything[::-1], everything[1::2] + everything[::2], [0, 0, 1]]
    expected, got = [], []
    for batch in batches:
        result = run(batch)
        expected += batch
        got += list(result)
    return alone[expected], np.stack(got)


def test_int8_window_does_not_depend_on_its_batch(small_bundle: Path, test_audio: dict[str, np.ndarray]) -> None:
    """Static int8: every window's embedding is the same alone and among any other windows (dynamic int8, which
    scaled activations over the whole batch, differed by up to 1e-2 here)."""
    windows = [repeat_pad(clip.astype(np.float32), WINDOW) for clip in test_audio.values()]
    alone, batched = int8_rows_in_other_batches(small_bundle, windows)
    print(f"int8 small: max |alone - batched| {np.abs(alone - batched).max():.3g}")  # 6e-8 with onnxruntime 1.32
    assert row_cosines(alone, batched).min() >= 0.99999
    assert np.abs(alone - batched).max() < verify.BATCH_INVARIANCE_TOLERANCE


def test_onnx_text_through_the_daemon_tokenizer_matches_the_reference(
    small_bundle: Path, small_model_dir: Path
) -> None:
    model = ClapModel.from_pretrained(small_model_dir).eval()
    tokens = AutoTokenizer.from_pretrained(small_model_dir)(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        reference = model.get_text_features(**tokens).pooler_output.numpy()
    result = verify.compare(reference, onnx_text(small_bundle, Manifest.read(small_bundle), PROMPTS))
    assert result.min_cosine >= 0.99999 and result.relative_error <= 0.01


def test_laion_pt_exports_the_same_model(tmp_path: Path, small_model_dir: Path, small_bundle: Path) -> None:
    checkpoint = tmp_path / "630k-audioset-best.pt"
    save_laion_checkpoint(ClapModel.from_pretrained(small_model_dir), checkpoint)
    manifest = export_cli(checkpoint, tmp_path / "laion", "--tokenizer", str(small_model_dir), "--precision", "fp32")
    assert manifest.source == str(checkpoint) and not manifest.source_was_fused
    clips = [np.sin(2 * np.pi * 1000 * np.arange(WINDOW) / SAMPLE_RATE), np.zeros(SAMPLE_RATE)]
    same = verify.compare(onnx_audio(small_bundle, "fp32", clips), onnx_audio(tmp_path / "laion", "fp32", clips))
    assert same.min_cosine > 0.999999


def test_fused_checkpoint_export_is_flagged(tmp_path: Path, small_fused_model_dir: Path) -> None:
    manifest = export_cli(small_fused_model_dir, tmp_path / "fused", "--precision", "fp32,int8")
    assert manifest.source_was_fused and manifest.front_end.mel_scale == "htk"
    assert any("unfused path" in note for note in manifest.notes)


def _perturbed_fp16(fp32_path: Path, out_path: Path) -> None:
    """A broken conversion: every weight off by ~10 %."""
    model = onnx.load(str(fp32_path))
    rng = np.random.default_rng(0)
    for initializer in model.graph.initializer:
        values = numpy_helper.to_array(initializer)
        if values.dtype == np.float32 and values.size > 1:
            noisy = values * (1 + 0.1 * rng.standard_normal(values.shape)).astype(np.float32)
            initializer.CopyFrom(numpy_helper.from_array(noisy, initializer.name))
    onnx.save(model, str(out_path))


def test_failed_verification_writes_nothing_and_keeps_the_old_bundle(
    tmp_path: Path, small_model_dir: Path, small_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(onnx_graphs, "embedder_fp16", _perturbed_fp16)
    out = tmp_path / "bundle"
    request = ExportRequest(str(small_model_dir), out, precisions=("fp32", "fp16"), progress=False)
    with pytest.raises(verify.VerificationError, match=r"audio_fp16.onnx \(fp16\) fails verification.*min cosine"):
        export_bundle(request)
    assert list(tmp_path.iterdir()) == []  # no bundle, no staging left behind

    shutil.copytree(small_bundle, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(verify.VerificationError):
        export_bundle(ExportRequest(str(small_model_dir), out, precisions=("fp16",), overwrite=True, progress=False))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_existing_bundle_needs_overwrite(tmp_path: Path, small_model_dir: Path) -> None:
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run_clapd("export", str(small_model_dir), "-o", str(out), "--no-progress")
    assert result.returncode == 1 and "--overwrite" in result.stderr
    assert (out / "keep.txt").read_text() == "mine"


def test_verification_bars_can_fail() -> None:
    """`compare` sees both a rotated embedding (cosine) and an error that is large next to the closest pair."""
    reference = np.eye(4)[:3]
    rotated = reference.copy()
    rotated[0] = [0.9, 0.1, 0.0, 0.0]
    result = verify.compare(reference, rotated)
    assert result.min_cosine < 0.999 and result.relative_error == pytest.approx(np.sqrt(0.02) / np.sqrt(2))
    with pytest.raises(verify.VerificationError, match="min cosine"):
        verify.check("x.onnx", "fp32", result, 3)
    nearly = reference + np.array([[0, 0, 0, 1e-3], [0, 0, 0, 0], [0, 0, 0, 0]])
    close_pair = np.array([[1.0, 0, 0, 0], [1.0, 1e-4, 0, 0], [0, 1.0, 0, 0]])
    assert verify.compare(close_pair, close_pair + (nearly - reference)).relative_error > 1
    assert verify.compare(close_pair, close_pair).relative_error == 0


@pytest.mark.slow
def test_full_size_export_with_every_precision(tmp_path: Path, default_model_dir: Path) -> None:
    out = tmp_path / "full"
    manifest = export_cli(default_model_dir, out, "--precision", "fp32,fp16,int8")
    assert manifest.embedding_size == 512 and manifest.architecture["audio_depths"] == [2, 2, 6, 2]
    rng = np.random.default_rng(5)
    t = np.arange(WINDOW) / SAMPLE_RATE
    clips = [0.3 * np.sin(2 * np.pi * 700 * t), 0.1 * rng.standard_normal(WINDOW), np.sign(np.sin(2 * np.pi * 50 * t))]
    fp32 = onnx_audio(out, "fp32", clips)
    assert verify.compare(fp32, onnx_audio(out, "fp16", clips)).min_cosine >= 0.9999
    assert verify.compare(fp32, onnx_audio(out, "int8", clips)).min_cosine >= 0.999
    int8 = manifest.audio["int8"]
    assert int8.batch_invariant and int8.parity.min_cosine >= verify.MIN_COSINE["int8"]
    windows = [repeat_pad(clip.astype(np.float32), WINDOW) for clip in clips]
    alone, batched = int8_rows_in_other_batches(out, windows)
    difference = np.abs(alone - batched).max()
    print(f"int8 full size: min cosine {int8.parity.min_cosine:.6f}, max |alone - batched| {difference:.3g}")
    assert row_cosines(alone, batched).min() >= 0.99999
    assert onnx_text(out, manifest, PROMPTS).shape == (len(PROMPTS), 512)
