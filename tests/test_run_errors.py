"""`clapd run` refuses what cannot work with one clear message and a non-zero exit, before audio is opened."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml
from helpers import run_clapd


def write_config(tmp_path: Path, bundle: Path, stream: dict, **extra: object) -> Path:
    config = {
        "model": {"bundle": str(bundle), "providers": ["cpu"]},
        "windows": {"window_seconds": 2, "hop_seconds": 1},
        "streams": {"s": stream},
        "detections": {"alarm": {"prompts": ["an alarm"]}},
        "state_dir": str(tmp_path / "state"),
        **extra,
    }
    path = tmp_path / "clapd.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_bad_config_exits_2_and_starts_nothing(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("streams: {s: {type: mic}}\ndetections: {alarm: {prompts: [x], threshold_on: 3}}\n")
    result = run_clapd("run", "-c", str(path), timeout=60)
    assert result.returncode == 2
    assert "detections.alarm.threshold_on = 3" in result.stderr and "nothing started" in result.stderr
    assert result.stdout == ""


def test_tampered_bundle_is_refused(tmp_path: Path, small_bundle_dir: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(small_bundle_dir, bundle)
    with (bundle / "audio_fp32.onnx").open("r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02\x03")
    result = run_clapd("run", "-c", str(write_config(tmp_path, bundle, {"type": "mic"})), timeout=60)
    assert result.returncode == 1 and "audio_fp32.onnx: sha256 differs" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_bundle_is_refused(tmp_path: Path) -> None:
    result = run_clapd("run", "-c", str(write_config(tmp_path, tmp_path / "nowhere", {"type": "mic"})), timeout=60)
    assert result.returncode == 1 and "not a clapd bundle" in result.stderr


def test_missing_microphone_is_named_with_the_devices_there_are(tmp_path: Path, small_bundle_dir: Path) -> None:
    path = write_config(tmp_path, small_bundle_dir, {"type": "mic", "device": "no-such-microphone"})
    result = run_clapd("run", "-c", str(path), timeout=120)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "no input device 'no-such-microphone'; available input devices:" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_audio_file_is_refused(tmp_path: Path, small_bundle_dir: Path) -> None:
    path = write_config(tmp_path, small_bundle_dir, {"type": "file", "path": str(tmp_path / "none.wav")})
    result = run_clapd("run", "-c", str(path), timeout=120)
    assert result.returncode == 1 and "none.wav" in result.stderr and "Traceback" not in result.stderr


def test_a_dying_pipe_is_restarted_and_the_daemon_keeps_running(tmp_path: Path, small_bundle_dir: Path) -> None:
    dying = [sys.executable, "-c", "import sys; sys.stderr.write('camera unreachable\\n'); sys.exit(3)"]
    stream = {"type": "pipe", "command": dying, "sample_rate": 48000, "restart_max_seconds": 1}
    path = write_config(tmp_path, small_bundle_dir, stream)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "clapd", "-v", "run", "-c", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(12)  # start-up, then several deaths and restarts
    assert daemon.poll() is None  # still running
    daemon.terminate()
    _, stderr = daemon.communicate(timeout=30)
    assert daemon.returncode == 0
    assert "camera unreachable" in stderr  # the command's stderr, logged
    assert stderr.count("restart") >= 2 or stderr.count("exited") >= 2, stderr[-3000:]
