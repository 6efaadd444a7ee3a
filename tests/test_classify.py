"""`clapd classify`: a recording's scores over time as a table and a PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
from helpers import run_clapd

from clapd.daemon.classify import classify, read_audio


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6.5 s of 44.1 kHz stereo: quiet noise with a 3 kHz tone from 2 s to 4 s."""
    t = np.arange(int(6.5 * 44100)) / 44100
    rng = np.random.default_rng(0)
    mono = np.where((t > 2) & (t < 4), 0.5 * np.sin(2 * np.pi * 3000 * t), 0.01 * rng.standard_normal(t.size))
    path = tmp_path_factory.mktemp("audio") / "tone.wav"
    soundfile.write(path, np.stack([mono, mono], axis=1), 44100)
    return path


def test_read_audio_resamples_and_downmixes(recording: Path) -> None:
    audio = read_audio(recording, 48_000)
    assert audio.ndim == 1 and audio.dtype == np.float32
    assert abs(len(audio) - 6.5 * 48_000) < 48
    tone = audio[int(2.5 * 48_000) : int(3.5 * 48_000)]
    peak_hz = np.argmax(np.abs(np.fft.rfft(tone))) * 48_000 / tone.size
    assert abs(peak_hz - 3000) < 5


def test_scores_cover_the_recording_window_by_window(small_bundle_dir: Path, recording: Path) -> None:
    table = classify(small_bundle_dir, recording, ["a beep", "noise"], ["silence"], window_s=2.0, hop_s=0.5)
    assert table.prompts == ["a beep", "noise"]
    assert table.scores.shape == (10, 2)  # starts 0, 0.5, ..., 4.5 s: every full 2 s window of 6.5 s
    assert np.allclose(table.starts, np.arange(10) * 0.5) and np.allclose(table.ends - table.starts, 2.0)
    assert ((table.scores > 0) & (table.scores < 1)).all()
    quiet, tone = table.scores[0], table.scores[5]  # 0-2 s is noise only; 2.5-4.5 s holds the tone
    assert not np.allclose(quiet, tone, atol=1e-4)  # the audio reaches the scores


def test_cli_prints_a_table_and_writes_a_plot(small_bundle_dir: Path, recording: Path, tmp_path: Path) -> None:
    png = tmp_path / "scores.png"
    result = run_clapd(
        "classify",
        str(recording),
        "--bundle",
        str(small_bundle_dir),
        "--prompt",
        "a beep",
        "--prompt",
        "rain",
        "--window",
        "2",
        "--hop",
        "1",
        "--plot",
        str(png),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].split("\t") == ["start_s", "end_s", "a beep", "rain"] and len(lines) == 1 + 5
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_errors(small_bundle_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    result = run_clapd("classify", str(bad), "--bundle", str(small_bundle_dir), "--prompt", "x", timeout=120)
    assert result.returncode == 1 and "cannot read audio" in result.stderr
    result = run_clapd("classify", str(bad), "--bundle", str(tmp_path), "--prompt", "x", timeout=120)
    assert result.returncode == 1 and "not a clapd bundle" in result.stderr
