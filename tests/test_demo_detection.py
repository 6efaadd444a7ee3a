"""What is detected: the shipped demo bundle finds the planted sounds of a demo stream, on time, and nothing else."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from helpers import run_clapd

import clapd
from clapd.daemon.demo import DEMO_DETECTIONS, DEMO_EVENT_SETTINGS, DEMO_WINDOWS
from clapd.daemon.manifest import Manifest
from clapd.models.demo_stream import PlannedEvent, make_demo_stream

DEMO_BUNDLE = Path(clapd.__file__).parent / "demo_bundle"
WINDOW_S, HOP_S = DEMO_WINDOWS["window_seconds"], DEMO_WINDOWS["hop_seconds"]


def test_shipped_demo_bundle_matches_its_manifest() -> None:
    manifest = Manifest.read(DEMO_BUNDLE)
    manifest.check_files(DEMO_BUNDLE)
    assert any("synthetic" in note for note in manifest.notes)
    assert sum(p.stat().st_size for p in DEMO_BUNDLE.iterdir()) < 10 * 10**6  # the issue: under ~10 MB


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_planted_sounds_are_found_within_a_hop_and_nothing_starts_without_them(tmp_path: Path, seed: int) -> None:
    stream = make_demo_stream(seed=seed)  # a seed the demo model never trained on
    wav = stream.write_wav(tmp_path / "demo.wav")
    config = {
        "model": {"bundle": str(DEMO_BUNDLE), "providers": ["cpu"]},
        "windows": {"window_seconds": WINDOW_S, "hop_seconds": HOP_S},
        "streams": {"demo": {"type": "file", "path": str(wav), "realtime": False}},
        "detections": {name: {"prompts": [prompt], **DEMO_EVENT_SETTINGS} for name, prompt in DEMO_DETECTIONS.items()},
        "outputs": {"stdout": True},
        "state_dir": str(tmp_path / "state"),
    }
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_clapd("run", "-c", str(path), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    starts = [e for e in map(json.loads, result.stdout.splitlines()) if e["kind"] == "start"]
    planted = [e for e in stream.events if e.class_name in DEMO_DETECTIONS]
    assert len(planted) >= 6
    for event in planted:
        found = [s for s in starts if s["detection"] == event.class_name]
        assert any(abs(s["start_offset_seconds"] - event.start_s) <= HOP_S for s in found), (event, found)
    # Outside the planted sounds (from a hop before each to a window length after it, while windows still hold
    # its end) nothing may start.
    in_silence = [
        s
        for s in starts
        if not any(e.start_s - HOP_S <= s["start_offset_seconds"] <= e.end_s + WINDOW_S for e in stream.events)
    ]
    assert not in_silence, in_silence
    wrong = [s for s in starts if not any(_matches(s, e) for e in planted)]
    print(json.dumps(wrong), file=sys.stderr)  # another class's name during a sound: reported, not a failure


def _matches(start: dict, event: PlannedEvent) -> bool:
    return (
        start["detection"] == event.class_name and event.start_s - HOP_S <= start["start_offset_seconds"] <= event.end_s
    )
