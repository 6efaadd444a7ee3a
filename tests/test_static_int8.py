"""Static int8: the calibration set, an fp32 audio model split into its stages and joined again, and int8 rebuilt
from a bundle's fp32 file (how the shipped demo bundle got its int8 model)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import SAMPLE_RATE, WINDOW

import clapd
from clapd.daemon.manifest import Manifest
from clapd.daemon.windows import repeat_pad
from clapd.export import onnx_graphs, quantize, verify
from clapd.export.bundle import requantize_int8

DEMO_BUNDLE = Path(clapd.__file__).parent / "demo_bundle"
QUANTISED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger"}


def embed(path: Path, windows: np.ndarray) -> np.ndarray:
    session = verify.cpu_session(str(path))
    return verify.run_batched(lambda x: session.run(None, {onnx_graphs.AUDIO_INPUT: x})[0], windows)


def padded(clips: dict[str, np.ndarray]) -> np.ndarray:
    return np.stack([repeat_pad(clip.astype(np.float32), WINDOW) for clip in clips.values()])


def test_calibration_clips_are_seeded_and_span_the_levels() -> None:
    clips = quantize.calibration_clips(SAMPLE_RATE, WINDOW)
    again = quantize.calibration_clips(SAMPLE_RATE, WINDOW)
    assert clips.keys() == again.keys() and all(np.array_equal(clips[k], again[k]) for k in clips)
    assert verify.verification_clips(SAMPLE_RATE, WINDOW).keys() <= clips.keys()
    for clip in clips.values():
        assert clip.shape == (WINDOW,) and clip.dtype == np.float32 and np.abs(clip).max() <= 1.0
    rms_dbfs = {name: 10 * np.log10(np.mean(np.square(clip, dtype=np.float64)) + 1e-30) for name, clip in clips.items()}
    noise = [rms_dbfs[f"white_noise_{level}dBFS"] for level in quantize.NOISE_LEVELS_DBFS]
    assert noise[0] == pytest.approx(-60, abs=0.5) and noise[-1] > -3  # 0 dBFS RMS clips at full scale
    assert all(f"{name}_short_repeat_padded" in clips for name in quantize.SOUND_CLASSES)


def test_split_stages_inverts_join_stages(small_bundle_dir: Path, tmp_path: Path) -> None:
    fp32 = small_bundle_dir / "audio_fp32.onnx"
    front_end, embedder, joined = tmp_path / "front_end.onnx", tmp_path / "embedder.onnx", tmp_path / "joined.onnx"
    onnx_graphs.split_stages(fp32, front_end, embedder)
    assert [i.name for i in onnx.load(str(embedder)).graph.input] == [onnx_graphs.FEATURES]
    onnx_graphs.join_stages(front_end, embedder, joined)
    before, after = onnx.load(str(fp32)), onnx.load(str(joined))
    assert [n.name for n in before.graph.node] == [n.name for n in after.graph.node]
    assert len({o.domain for o in after.opset_import}) == len(after.opset_import)  # each domain once
    windows = padded(verify.verification_clips(SAMPLE_RATE, WINDOW))
    assert np.array_equal(embed(fp32, windows), embed(joined, windows))


def test_requantize_adds_a_static_int8_model(
    small_bundle_dir: Path, tmp_path: Path, test_audio: dict[str, np.ndarray]
) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(small_bundle_dir, bundle)
    before = Manifest.read(bundle)
    unchanged = {p.name: p.read_bytes() for p in bundle.iterdir() if p.name != "manifest.json"}
    manifest = requantize_int8(bundle, notes=("rebuilt",))
    manifest.check_files(bundle)
    assert Manifest.read(bundle) == manifest and manifest.notes == [*before.notes, "rebuilt"]
    assert {p.name: p.read_bytes() for p in bundle.iterdir() if p.name in unchanged} == unchanged
    assert manifest.audio["fp32"] == before.audio["fp32"] and manifest.text == before.text
    int8 = manifest.audio["int8"]
    assert int8.batch_invariant and int8.parity.min_cosine >= verify.MIN_COSINE["int8"]
    assert int8.inputs == manifest.audio["fp32"].inputs and int8.outputs == manifest.audio["fp32"].outputs
    windows = padded(test_audio)
    held_out = verify.compare(embed(bundle / "audio_fp32.onnx", windows), embed(bundle / int8.file, windows))
    assert held_out.min_cosine >= verify.MIN_COSINE["int8"]
    model = onnx.load(str(bundle / int8.file))
    front_end_ops = {n.op_type for n in model.graph.node if n.name.startswith(onnx_graphs.FRONT_END_PREFIX)}
    assert not front_end_ops & QUANTISED_OPS  # the front end stays fp32
    assert {n.op_type for n in model.graph.node} & QUANTISED_OPS


def test_shipped_demo_int8_is_static_and_close_to_fp32(test_audio: dict[str, np.ndarray]) -> None:
    manifest = Manifest.read(DEMO_BUNDLE)
    int8 = manifest.audio["int8"]
    assert int8.batch_invariant and int8.parity.min_cosine >= verify.MIN_COSINE["int8"]
    windows = np.concatenate([padded(verify.verification_clips(SAMPLE_RATE, WINDOW)), padded(test_audio)])
    fp32_rows = embed(DEMO_BUNDLE / manifest.audio["fp32"].file, windows)
    int8_path = DEMO_BUNDLE / int8.file
    batched = embed(int8_path, windows)
    assert verify.compare(fp32_rows, batched).min_cosine >= verify.MIN_COSINE["int8"]
    session = verify.cpu_session(str(int8_path))
    alone = np.concatenate([session.run(None, {onnx_graphs.AUDIO_INPUT: w[None]})[0] for w in windows])
    assert np.abs(alone - batched).max() < verify.BATCH_INVARIANCE_TOLERANCE
