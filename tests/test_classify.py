"""`clapd classify`: a recording's scores over time as a table and a PNG."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml
from helpers import run_clapd

from clapd.daemon.classify import classify, read_audio, scoring_from


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
    scoring = scoring_from(
        None, prompts=["a beep", "noise"], bundle=small_bundle_dir, window_s=2.0, hop_s=0.5, background=["silence"]
    )
    table = classify(recording, scoring)
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


def test_cli_scores_with_the_demo_bundle_by_default(recording: Path) -> None:
    """As `clapd run` without a config: the embedded demo bundle and its 2 s windows at a 0.5 s hop."""
    result = run_clapd("classify", str(recording), "--prompt", "a smoke alarm", "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    windows = json.loads(result.stdout)["windows"]
    assert len(windows) == 10 and windows[1]["start_s"] == 0.5 and windows[0]["end_s"] == 2.0
    assert set(windows[0]["scores"]) == {"a smoke alarm"}


def test_cli_says_what_is_missing(recording: Path, tmp_path: Path) -> None:
    result = run_clapd("classify", str(recording), timeout=120)
    assert result.returncode == 2 and "--prompt" in result.stderr and "-c CONFIG" in result.stderr
    result = run_clapd("classify", str(recording), "--prompt", "x", "--window", "30", timeout=120)
    assert result.returncode == 2 and "window_seconds" in result.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("streams: {}\n")
    result = run_clapd("classify", str(recording), "-c", str(bad), timeout=120)
    assert result.returncode == 2 and "streams" in result.stderr


def _scores_config(bundle: Path, audio: Path, state_dir: Path) -> dict:
    return {
        "model": {"bundle": str(bundle), "providers": ["cpu"], "precision": "fp32"},
        "windows": {"window_seconds": 2.0, "hop_seconds": 0.5},
        "streams": {"file": {"type": "file", "path": str(audio), "realtime": False}},
        "detections": {
            "beep": {"prompts": ["a high beep"], "negative_prompts": ["a low hum"]},
            "noise": {"prompts": ["hiss"], "threshold_on": 0.2, "threshold_off": 0.1, "smoothing_windows": 1},
        },
        "background_prompts": ["silence", "rain"],
        "outputs": {"stdout": True, "stdout_scores": True},
        "state_dir": str(state_dir),
    }


def test_classify_and_run_give_identical_scores(small_bundle_dir: Path, recording: Path, tmp_path: Path) -> None:
    """The same recording through `clapd classify -c` and `clapd run -c`: one Detector, the same numbers."""
    config_path = tmp_path / "clapd.yaml"
    config_path.write_text(yaml.safe_dump(_scores_config(small_bundle_dir, recording, tmp_path / "state")))
    ran = run_clapd("run", "-c", str(config_path), timeout=180)
    assert ran.returncode == 0, ran.stderr[-3000:]
    lines = [json.loads(line) for line in ran.stdout.splitlines()]
    from_run = [
        (w["start_offset_seconds"], w["end_offset_seconds"], w["scores"]) for w in lines if w["kind"] == "scores"
    ]
    classified = run_clapd("classify", "-c", str(config_path), str(recording), "--json", timeout=180)
    assert classified.returncode == 0, classified.stderr
    document = json.loads(classified.stdout)
    from_classify = [(w["start_s"], w["end_s"], w["scores"]) for w in document["windows"]]
    assert len(from_run) == 10 and set(from_run[0][2]) == {"beep", "noise"}
    assert from_classify == from_run  # exact: every float, every window
    run_events = sorted((e["kind"], e["detection"], e["start_offset_seconds"]) for e in lines if e["kind"] != "scores")
    classify_events = sorted((e["kind"], e["detection"], e["start_offset_seconds"]) for e in document["events"])
    assert run_events and classify_events == run_events
