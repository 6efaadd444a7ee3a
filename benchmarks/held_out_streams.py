"""Demo streams through `clapd run` for bench_demo_accuracy.py --held-out: planted sounds found, and starts of
another class during a planted sound (issue 15: there must be none).

A stream is played offline as a file with the daemon's demo detections, windows and event settings
(`clapd.daemon.demo`), as `tests/test_demo_detection.py` does; its start events are read from stdout.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from clapd.daemon.demo import DEMO_DETECTIONS, DEMO_WINDOWS, demo_detections
from clapd.models.demo_stream import CLASS_SOUNDS, DemoStream, PlannedEvent, make_demo_stream
from clapd.models.synthetic import Generator
from clapd.models.synthetic_methods import METHOD_CLASSES, methods_of

WINDOW_S, HOP_S = float(DEMO_WINDOWS["window_seconds"]), float(DEMO_WINDOWS["hop_seconds"])
RUN_TIMEOUT_S = 900.0
# Every class with methods once, each as long as a typical occurrence, 8 s apart: 140 s.
HELD_OUT_LAYOUT = (
    PlannedEvent("siren", 10.0, 18.0),
    PlannedEvent("smoke_alarm", 28.0, 36.0),
    PlannedEvent("phone_ringing", 46.0, 54.0),
    PlannedEvent("knocking", 64.0, 67.0),
    PlannedEvent("clock_ticking", 77.0, 85.0),
    PlannedEvent("running_water", 95.0, 102.0),
    PlannedEvent("engine_hum", 112.0, 120.0),
    PlannedEvent("glass_breaking", 130.0, 132.0),
)
HELD_OUT_STREAM_S = 140.0


def held_out_sounds() -> dict[str, Generator]:
    """Each class's held-out method (the first, where a class has several); the generator's own for the rest."""
    return {**CLASS_SOUNDS, **{name: methods_of(name, held_out=True)[0].make for name in METHOD_CLASSES}}


@dataclass(frozen=True, slots=True)
class StreamResult:
    name: str
    planted: int  # planted sounds of a class the demo detects
    found: int  # of them, started within a hop of the planted onset
    cross_class: list[tuple[str, str, float]]  # (planted class, started detection, offset s)
    in_silence: int  # starts away from every planted sound


def cross_class_starts(starts: list[dict], events: tuple[PlannedEvent, ...]) -> list[tuple[str, str, float]]:
    """Starts of a detection during a planted sound of another class (from a hop before it to a window length
    after it, while windows still hold its end)."""
    wrong = []
    for s in starts:
        offset = float(s["start_offset_seconds"])
        for e in events:
            if e.start_s - HOP_S <= offset <= e.end_s + WINDOW_S and s["detection"] != e.class_name:
                wrong.append((e.class_name, str(s["detection"]), offset))
    return wrong


def run_stream(bundle: Path, precision: str, stream: DemoStream, name: str) -> StreamResult:
    with tempfile.TemporaryDirectory(prefix="clapd-bench-held-out-") as folder:
        starts = _starts(bundle, precision, stream, Path(folder))
    planted = [e for e in stream.events if e.class_name in DEMO_DETECTIONS]
    found = sum(
        any(s["detection"] == e.class_name and abs(s["start_offset_seconds"] - e.start_s) <= HOP_S for s in starts)
        for e in planted
    )
    in_silence = sum(
        not any(e.start_s - HOP_S <= s["start_offset_seconds"] <= e.end_s + WINDOW_S for e in stream.events)
        for s in starts
    )
    return StreamResult(name, len(planted), found, cross_class_starts(starts, stream.events), in_silence)


def _starts(bundle: Path, precision: str, stream: DemoStream, folder: Path) -> list[dict]:
    wav = stream.write_wav(folder / "stream.wav")
    config = {
        "model": {"bundle": str(bundle), "providers": ["cpu"], "precision": precision},
        "windows": DEMO_WINDOWS,
        "streams": {"demo": {"type": "file", "path": str(wav), "realtime": False}},
        "detections": demo_detections(),
        "outputs": {"stdout": True},
        "state_dir": str(folder / "state"),
    }
    path = folder / "clapd.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "clapd", "run", "-c", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"clapd run failed on {wav}: {result.stderr[-2000:]}")
    return [e for e in map(json.loads, result.stdout.splitlines()) if e.get("kind") == "start"]


def stream_sets(seeds: Mapping[str, list[int]]) -> list[tuple[str, DemoStream]]:
    """("held-out methods", seed) streams of HELD_OUT_LAYOUT, ("generator's own", seed) of the default layout."""
    streams = []
    for name, values in seeds.items():
        for seed in values:
            if name == "held-out methods":
                stream = make_demo_stream(seed, HELD_OUT_STREAM_S, HELD_OUT_LAYOUT, sounds=held_out_sounds())
            else:
                stream = make_demo_stream(seed)
            streams.append((f"{name}, seed {seed}", stream))
    return streams


def summary(results: list[StreamResult]) -> tuple[int, int, int, int]:
    """(planted, found, cross-class starts, starts in silence) over `results`."""
    return (
        sum(r.planted for r in results),
        sum(r.found for r in results),
        sum(len(r.cross_class) for r in results),
        sum(r.in_silence for r in results),
    )


def confusions(results: list[StreamResult]) -> str:
    """'planted -> started xN' pairs, most frequent first."""
    pairs: dict[tuple[str, str], int] = {}
    for r in results:
        for planted, started, _ in r.cross_class:
            pairs[planted, started] = pairs.get((planted, started), 0) + 1
    order = sorted(pairs.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{p} -> {s} x{k}" for (p, s), k in order) or "none"
