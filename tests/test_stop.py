"""Stopping while a long model call runs: the call is cancelled, the inference thread ends, nothing crashes.

A daemon that fell behind runs big batches (48 windows of the full-size model took 5 s on 2 cores); a process that
exits while onnxruntime still runs a call aborts (exit 134), so `Runner.stop` cancels the call it cannot wait for.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from clapd.daemon import assembly
from clapd.daemon.config import ModelConfig, parse_config
from clapd.daemon.demo import installed_demo_bundle
from clapd.daemon.inference import AudioModel, open_bundle

DEMO_BUNDLE = installed_demo_bundle()
RATE = 48_000
STREAMS = 16  # a call takes at most 4 windows of each stream
BIG_BATCH = 64  # windows: 0.8 s of the demo model on these machines, 10x the stop's wait for the call
SECONDS = 5  # of audio each stream's `cat` writes at once


def test_a_cancelled_model_refuses_calls_with_an_error() -> None:
    model = AudioModel(DEMO_BUNDLE, open_bundle(DEMO_BUNDLE), ModelConfig(providers=["cpu"]))
    windows = np.zeros((2, model.window_samples), dtype=np.float32)
    assert model.embed(windows).shape[0] == 2
    model.cancel()
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.Fail, match="terminate"):
        model.embed(windows)


class SignallingModel(AudioModel):
    """The real audio model, which says when a big batch starts."""

    big_batch_started = threading.Event()

    def embed(self, windows: np.ndarray) -> np.ndarray:
        if len(windows) >= BIG_BATCH:
            self.big_batch_started.set()
        return super().embed(windows)


def test_stop_cancels_a_long_model_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    raw = tmp_path / "audio.s16le"
    noise = np.random.default_rng(3).standard_normal(SECONDS * RATE) * 3000
    raw.write_bytes(noise.astype("<i2").tobytes())
    stream = {"type": "pipe", "command": ["cat", str(raw)], "sample_rate": RATE, "sample_format": "s16le"}
    config = parse_config(
        {
            "model": {"bundle": str(DEMO_BUNDLE), "providers": ["cpu"], "threads": 1},
            "windows": {"window_seconds": 1, "hop_seconds": 0.1},
            "streams": {f"s{i}": stream for i in range(STREAMS)},
            "detections": {"siren": {"prompts": ["a siren wailing"]}},
            "outputs": {"stdout": True},
            "state_dir": str(tmp_path / "state"),
        }
    )
    monkeypatch.setattr(assembly, "AudioModel", SignallingModel)
    SignallingModel.big_batch_started.clear()
    with contextlib.redirect_stdout(io.StringIO()), caplog.at_level(logging.INFO, logger="clapd.daemon.runner"):
        runner = assembly.assemble(config).runner
        runner.start()
        try:
            assert SignallingModel.big_batch_started.wait(120), f"no batch of {BIG_BATCH} windows came"
        finally:
            runner.stop(0.2)
    assert not runner.running() and not runner.crashed
    assert "model call in progress is cancelled" in caplog.text
    assert "cancelled at stop" in caplog.text
    print(f"windows processed before the stop: {runner.windows_processed}", file=sys.stderr)
