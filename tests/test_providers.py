"""Execution providers: what clapd asks onnxruntime for, and what it says when onnxruntime falls back.

This machine has no GPU; the CUDA and TensorRT paths themselves were measured on an H100 (benchmarks/bench_gpu.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from clapd.daemon.config import ModelConfig
from clapd.daemon.inference import (
    AudioModel,
    choose_providers,
    open_bundle,
    provider_entry,
    providers_from,
    report_fallback,
)
from clapd.daemon.manifest import TensorSpec


def test_cuda_runs_fp32_without_tf32_unless_asked() -> None:
    assert provider_entry("cuda", ModelConfig()) == ("CUDAExecutionProvider", {"use_tf32": "0"})
    assert provider_entry("cuda", ModelConfig(cuda_tf32=True)) == ("CUDAExecutionProvider", {"use_tf32": "1"})


def test_tensorrt_options_follow_the_config(tmp_path: Path) -> None:
    config = ModelConfig.model_validate({"tensorrt": {"fp16": True, "engine_cache_dir": str(tmp_path), "max_batch": 8}})
    audio_input = TensorSpec(name="waveform", dtype="float32", shape=["batch", 480000])
    name, options = provider_entry("tensorrt", config, audio_input)
    assert name == "TensorrtExecutionProvider"
    cache = str(tmp_path)
    assert options == {
        "trt_fp16_enable": "1",
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": cache,
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": cache,
        "trt_profile_min_shapes": "waveform:1x480000",
        "trt_profile_opt_shapes": "waveform:4x480000",
        "trt_profile_max_shapes": "waveform:8x480000",
    }
    assert provider_entry("tensorrt", ModelConfig())[1] == {"trt_fp16_enable": "0"}


def test_missing_gpu_providers_are_skipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: the skip path cannot be shown here")
    with caplog.at_level(logging.WARNING):
        chosen = choose_providers(ModelConfig(providers=["tensorrt", "cuda"]))
    assert chosen == ["CPUExecutionProvider"]
    assert "tensorrt execution provider is not available" in caplog.text
    assert "cuda execution provider is not available" in caplog.text


def test_a_fallback_is_reported() -> None:
    requested = [("TensorrtExecutionProvider", {}), ("CUDAExecutionProvider", {}), "CPUExecutionProvider"]
    assert report_fallback(requested, ["TensorrtExecutionProvider", "CPUExecutionProvider"]) is None
    warning = report_fallback(requested, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert warning is not None and warning.startswith("TensorrtExecutionProvider was requested")
    assert "CUDAExecutionProvider, CPUExecutionProvider" in warning


def test_after_a_fallback_the_providers_are_asked_again_with_their_options() -> None:
    cuda = ("CUDAExecutionProvider", {"use_tf32": "0"})
    requested = [("TensorrtExecutionProvider", {"trt_fp16_enable": "0"}), cuda, "CPUExecutionProvider"]
    assert providers_from(requested, "CUDAExecutionProvider") == [cuda, "CPUExecutionProvider"]
    assert providers_from(requested, "CPUExecutionProvider") == ["CPUExecutionProvider"]
    assert providers_from(requested, "ROCMExecutionProvider") == []


def test_the_provider_in_use_is_logged(small_bundle_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="clapd.daemon.inference"):
        model = AudioModel(small_bundle_dir, open_bundle(small_bundle_dir), ModelConfig(providers=["cpu"]))
    assert model.providers == ["CPUExecutionProvider"]
    assert "on CPUExecutionProvider" in caplog.text and "requested but" not in caplog.text


def test_batches_beyond_the_engine_profile_are_split(small_bundle_dir: Path) -> None:
    model = AudioModel(small_bundle_dir, open_bundle(small_bundle_dir), ModelConfig(providers=["cpu"]))
    windows = np.random.default_rng(0).standard_normal((5, model.window_samples)).astype(np.float32) * 0.1
    whole = model.embed(windows)
    model.max_batch = 2  # as on TensorRT with tensorrt.max_batch: 2
    np.testing.assert_allclose(model.embed(windows), whole, atol=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_parallel_calls_and_the_cpu_batch_limit_give_the_same_embeddings(precision: str) -> None:
    from clapd.daemon.demo import installed_demo_bundle

    bundle = installed_demo_bundle()

    def model(**settings: int) -> AudioModel:
        return AudioModel(bundle, open_bundle(bundle), ModelConfig(providers=["cpu"], precision=precision, **settings))

    whole = model(threads=2, parallel_calls=1, cpu_batch=256)
    windows = np.random.default_rng(1).standard_normal((7, whole.window_samples)).astype(np.float32) * 0.1
    expected = whole.embed(windows)
    for settings in ({"parallel_calls": 3, "cpu_batch": 256}, {"parallel_calls": 2, "cpu_batch": 1}, {"cpu_batch": 3}):
        split = model(threads=1, **settings)
        assert (split.parallel_calls, split.max_batch) == (settings.get("parallel_calls", 2), settings["cpu_batch"])
        # static int8 is batch-invariant to the bit; fp32 GEMMs may block a smaller batch differently
        np.testing.assert_allclose(split.embed(windows), expected, atol=0 if precision == "int8" else 1e-5)
        np.testing.assert_allclose(split.embed(windows[:1]), expected[:1], atol=1e-5)
