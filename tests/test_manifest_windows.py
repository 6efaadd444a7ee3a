"""The configured windows against the manifest: samples at the model's rate, a clear error when they do not fit."""

from __future__ import annotations

from pathlib import Path

import pytest

import clapd
from clapd.daemon.config import WindowConfig
from clapd.daemon.manifest import BundleError, Manifest, window_samples_for

DEMO_BUNDLE = Path(clapd.__file__).resolve().parent / "demo_bundle"


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    """The demo bundle's: 48 kHz, windows of 1 to 10 s (48000 to 480000 samples)."""
    return Manifest.read(DEMO_BUNDLE)


def model(manifest: Manifest, rate: int, shortest_s: float, longest_s: float) -> Manifest:
    update = {
        "sample_rate": rate,
        "min_window_samples": int(shortest_s * rate),
        "window_samples": int(longest_s * rate),
    }
    return manifest.model_copy(update=update)


def test_samples_are_counted_at_the_models_rate(manifest: Manifest) -> None:
    windows = WindowConfig(window_seconds=2.0, hop_seconds=0.5)
    assert window_samples_for(windows, manifest) == (96000, 24000)
    assert window_samples_for(windows, model(manifest, 16000, 1, 10)) == (32000, 8000)
    assert window_samples_for(WindowConfig(), manifest) == (480000, 48000)  # the longest window the model takes


def test_seconds_round_to_the_nearest_sample(manifest: Manifest) -> None:
    # 0.3 s * 48000 Hz is 14399.999999999998 in floating point: one sample, not a truncated one, off.
    assert window_samples_for(WindowConfig(window_seconds=1.5, hop_seconds=0.3), manifest) == (72000, 14400)
    assert (
        window_samples_for(WindowConfig(window_seconds=1.5, hop_seconds=0.7), model(manifest, 44100, 1, 10))[1] == 30870
    )


def test_a_window_longer_than_the_models_input_names_key_value_limits_and_bundle(manifest: Manifest) -> None:
    short_model = model(manifest, 48000, 1, 5)
    with pytest.raises(BundleError) as caught:
        window_samples_for(WindowConfig(window_seconds=7.5, hop_seconds=1.0), short_model, bundle=Path("/b/clap"))
    message = str(caught.value)
    assert message.startswith("windows.window_seconds = 7.5: 360000 samples at 48000 Hz is too long for")
    assert "48000 to 240000 samples (1 to 5 s)" in message and "bundle /b/clap" in message


def test_a_window_shorter_than_the_models_shortest_is_refused(manifest: Manifest) -> None:
    picky = model(manifest, 48000, 3, 10)
    with pytest.raises(BundleError, match=r"windows\.window_seconds = 2\.0: 96000 samples .* shorter than") as caught:
        window_samples_for(WindowConfig(window_seconds=2.0, hop_seconds=1.0), picky)
    assert "144000 to 480000 samples (3 to 10 s)" in str(caught.value)
    assert manifest.source in str(caught.value)  # without a directory, the bundle is named by its source


def test_a_hop_under_one_sample_is_refused(manifest: Manifest) -> None:
    tiny_rate = model(manifest, 4, 1, 10)  # 4 Hz: a 0.1 s hop is 0.4 samples
    with pytest.raises(BundleError, match=r"windows\.hop_seconds = 0\.1: under one sample at the 4 Hz"):
        window_samples_for(WindowConfig(window_seconds=2.0, hop_seconds=0.1), tiny_rate)


def test_the_limits_themselves_are_allowed(manifest: Manifest) -> None:
    assert window_samples_for(WindowConfig(window_seconds=1.0, hop_seconds=1.0), manifest) == (48000, 48000)
    assert window_samples_for(WindowConfig(window_seconds=10.0, hop_seconds=10.0), manifest) == (480000, 480000)
