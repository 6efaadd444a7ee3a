"""Helpers shared by the tests (importable: pytest puts tests/ on the path).

No torch or transformers at import: daemon-only tests use this module without them installed.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml

if TYPE_CHECKING:
    from collections.abc import Sequence

    from transformers import ClapFeatureExtractor, ClapModel

    from clapd.models.demo_stream import PlannedEvent

SAMPLE_RATE = 48_000
WINDOW = 480_000  # 10 s at 48 kHz
# Scored against its own prompt as the only background prompt, this detection scores exactly 0.5 in every window.
ALWAYS = {"prompts": ["anything at all"], "threshold_on": 0.4, "threshold_off": 0.3, "smoothing_windows": 1}


def always_config(tmp_path: Path, bundle: Path, stream: dict, **sections: object) -> Path:
    """tmp_path/clapd.yaml: one stream "cam", the one detection "always" (fires on any audio), 1 s windows at a
    0.5 s hop on the CPU, state in tmp_path/state; `sections` added or replacing top-level keys."""
    config = {
        "model": {"bundle": str(bundle), "providers": ["cpu"], "threads": 1},
        "windows": {"window_seconds": 1, "hop_seconds": 0.5},
        "streams": {"cam": stream},
        "detections": {"always": ALWAYS},
        "background_prompts": [ALWAYS["prompts"][0]],
        "state_dir": str(tmp_path / "state"),
        **sections,
    }
    path = tmp_path / "clapd.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_clapd(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The real console entry point, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "clapd", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def start_daemon(
    config_path: Path, *, stdout: object = subprocess.PIPE, stderr: object = subprocess.PIPE, **env: str
) -> subprocess.Popen[str]:
    """`clapd run -c config_path` in the background, stderr piped by default (read it with `stop_daemon`)."""
    return subprocess.Popen(
        [sys.executable, "-m", "clapd", "run", "-c", str(config_path)],
        env=dict(os.environ, **env),
        stdout=stdout,
        stderr=stderr,
        text=True,
    )


def stop_daemon(daemon: subprocess.Popen[str]) -> tuple[float, str]:
    """SIGTERM; the seconds until the process exited, and its stderr (killed, and an AssertionError, after 30 s)."""
    sent = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    try:
        _, stderr = daemon.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        daemon.kill()
        _, stderr = daemon.communicate(timeout=10)
        raise AssertionError(f"no exit 30 s after SIGTERM: {stderr[-3000:]}") from None
    return time.monotonic() - sent, stderr


def cross_class_starts(starts: list[dict], events: Sequence[PlannedEvent], hop_s: float, window_s: float) -> list[dict]:
    """Start events (`clapd run`'s JSON) of a detection during a planted sound of another class: from a hop before
    the sound to a window length after it, while windows still hold its end (issue 15: there must be none)."""
    return [
        s
        for s in starts
        if any(
            e.start_s - hop_s <= s["start_offset_seconds"] <= e.end_s + window_s and s["detection"] != e.class_name
            for e in events
        )
    ]


class CountingModel:
    """An audio model stand-in for tests of whether the model is called, not of what it hears: every window is
    embedded as the same 3-dimensional vector; windows counted."""

    def __init__(self) -> None:
        self.windows = 0

    def embed(self, windows: np.ndarray) -> np.ndarray:
        self.windows += len(windows)
        return np.tile(np.array([1.0, 0.0, 0.0], dtype=np.float32), (len(windows), 1))


# Run with `python -I -c`: imports clapd.daemon and every module under it, subpackages included; prints one JSON
# line. A module that fails to import is recorded, not skipped (pkgutil's walk would skip a package silently).
IMPORT_DAEMON_MODULES = """
import importlib, json, pkgutil, sys

import clapd.daemon

errors = {}


def failed(name):
    errors[name] = repr(sys.exc_info()[1])


names = ["clapd.daemon", *(m.name for m in pkgutil.walk_packages(clapd.daemon.__path__, "clapd.daemon.", failed))]
for name in names:
    try:
        importlib.import_module(name)
    except Exception:
        failed(name)
heavy = sorted(m for m in ("torch", "transformers") if m in sys.modules)
print(json.dumps({"folder": clapd.daemon.__path__[0], "modules": names, "errors": errors, "heavy": heavy}))
"""
PORTAUDIO_MISSING = "PortAudio library not found"  # sounddevice's OSError on a machine without libportaudio2


@dataclass(frozen=True, slots=True)
class DaemonModules:
    """What importing every clapd.daemon module found, in the interpreter that did it."""

    folder: Path  # where clapd.daemon was imported from
    modules: list[str]  # every module and package found, clapd.daemon first
    errors: dict[str, str]  # module -> the exception its import raised
    heavy: list[str]  # those of torch and transformers that got imported

    def import_failures(self) -> dict[str, str]:
        """The errors, less a missing PortAudio's on a machine without it (the daemon runs there without mics)."""
        portaudio = ctypes.util.find_library("portaudio") is not None
        return {name: e for name, e in self.errors.items() if portaudio or PORTAUDIO_MISSING not in e}


def import_daemon_modules(python: str | Path, cwd: Path | None = None) -> DaemonModules:
    """Every module under clapd.daemon imported in a fresh `python` (isolated: no cwd, PYTHON* or user site)."""
    result = subprocess.run(
        [str(python), "-I", "-c", IMPORT_DAEMON_MODULES],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.splitlines()[-1])
    return DaemonModules(Path(found["folder"]), found["modules"], found["errors"], found["heavy"])


def modules_on_disk(folder: Path, package: str) -> set[str]:
    """The names of the modules that the .py files under `folder`, the folder of `package`, make."""
    names = set()
    for path in folder.rglob("*.py"):
        parts = path.relative_to(folder).with_suffix("").parts
        names.add(".".join((package, *parts[: -1 if parts[-1] == "__init__" else None])))
    return names


def hf_audio_embeddings(model: ClapModel, extractor: ClapFeatureExtractor, clips: list[np.ndarray]) -> np.ndarray:
    """The reference: transformers' feature extractor (repeat-pads short clips) + `get_audio_features`.

    With fusion, the extractor marks one random clip of a batch with no long clip as "longer" (a training-time
    augmentation LAION's data loader has); clips of at most 10 s are not longer, so the flags are reset here.
    """
    import torch

    features = extractor(clips, sampling_rate=SAMPLE_RATE, return_tensors="pt")
    if "is_longer" in features:
        features["is_longer"] = torch.zeros_like(features["is_longer"])
    with torch.no_grad():
        return model.get_audio_features(**features).pooler_output.numpy()
