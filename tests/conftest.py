"""Shared fixtures: the tests build the models they need (no hub on these machines).

The reference models need torch and transformers, imported only by the fixtures that build them: daemon-only tests
run without torch installed (tests/test_torchless.py). The broker fixtures (`broker`, `brokers`, `subscribers`)
are tests/mqtt_broker.py's, registered here once for every test module.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import SAMPLE_RATE, WINDOW, run_clapd

pytest_plugins = ("mqtt_broker",)


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from clapd.models.reference import save_reference_model

    return save_reference_model("small", tmp_path_factory.mktemp("small") / "model", seed=0)


@pytest.fixture(scope="session")
def small_bundle_dir(small_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small reference model exported to an fp32 bundle (batch-invariant: results are exact per window)."""
    out = tmp_path_factory.mktemp("small_bundle") / "bundle"
    result = run_clapd("export", str(small_model_dir), "-o", str(out), "--precision", "fp32", "--no-progress")
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def small_fused_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from clapd.models.reference import save_reference_model

    return save_reference_model("small", tmp_path_factory.mktemp("fused") / "model", seed=1, fused=True)


@pytest.fixture(scope="session")
def default_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`ClapConfig()`: the laion/clap-htsat-unfused architecture (HTSAT-tiny + RoBERTa-base), random weights."""
    from clapd.models.reference import save_reference_model

    return save_reference_model("default", tmp_path_factory.mktemp("default") / "model", seed=0)


@pytest.fixture(scope="session")
def test_audio() -> dict[str, np.ndarray]:
    """Seeded clips unlike the export's verification set: tones, noise, a sweep, bursts, and short clips."""
    rng = np.random.default_rng(1234)
    t = np.arange(WINDOW) / SAMPLE_RATE
    bursts = (np.sin(2 * np.pi * 1.5 * t) > 0.7) * rng.standard_normal(WINDOW) * 0.3
    return {
        "tone_440": 0.5 * np.sin(2 * np.pi * 440 * t),
        "square_3k_full_scale": np.sign(np.sin(2 * np.pi * 3000 * t)),
        "pink_ish_noise": np.cumsum(rng.standard_normal(WINDOW)) * 1e-3 % 0.5,
        "sweep": 0.7 * np.sin(2 * np.pi * (100 * t + 600 * t**2)),
        "bursts": bursts,
        "very_quiet_noise": 1e-5 * rng.standard_normal(WINDOW),
        "short_1s_beeps": 0.4 * np.sin(2 * np.pi * 2500 * t[:SAMPLE_RATE]) * (t[:SAMPLE_RATE] % 0.25 < 0.1),
        "short_3_7s_noise": 0.2 * rng.standard_normal(int(3.7 * SAMPLE_RATE)),
    }


@pytest.fixture
def running() -> Iterator[list[subprocess.Popen[str]]]:
    """Daemons a test started; killed at teardown if the test did not stop them."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for daemon in started:
        if daemon.poll() is None:
            daemon.kill()
            daemon.communicate(timeout=10)
