"""The level gate and level detections (issue 11, item 4), both inside the Detector: quiet windows skip the model
(counted, and ending events as silence would), and "any loud sound" fires through the ordinary event lifecycle."""

from __future__ import annotations

import json
import math
import re
import subprocess
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml
from helpers import CountingModel, run_clapd, start_daemon, stop_daemon
from mqtt_broker import free_port

import clapd
from clapd.daemon.config import ConfigError, DetectionConfig, parse_config
from clapd.daemon.demo import DEMO_DETECTIONS, DEMO_EVENT_SETTINGS, DEMO_WINDOWS
from clapd.daemon.detector import DetectionSet, Detector
from clapd.daemon.events import StreamClock
from clapd.daemon.loudness import LevelWatch, block_levels_dbfs, rms_dbfs
from clapd.daemon.matcher import DetectionPrompts, Matcher
from clapd.daemon.records import Window
from clapd.daemon.windows import clip_windows
from clapd.models.synthetic import smoke_alarm

DEMO_BUNDLE = Path(clapd.__file__).parent / "demo_bundle"
RATE = 48_000
WINDOW, HOP = 2 * RATE, RATE // 2  # samples: the demo model's 2 s windows every 0.5 s
START_TIMEOUT = 90.0  # s: model load and warm-up on a busy 2-core machine
SCRAPE_TIMEOUT = 60.0  # s: for the first gated windows to be counted


def noise(rng: np.random.Generator, seconds: float, dbfs: float) -> np.ndarray:
    return (10 ** (dbfs / 20) * rng.standard_normal(int(seconds * RATE))).astype(np.float32)


def with_bursts(rng: np.random.Generator, seconds: float, bursts: list[tuple[float, float]]) -> np.ndarray:
    """Noise at -50 dBFS, with bursts (start s, length s) of noise at -10 dBFS."""
    audio = noise(rng, seconds, -50.0)
    for start, length in bursts:
        loud = noise(rng, length, -10.0)
        audio[int(start * RATE) : int(start * RATE) + loud.size] = loud
    return audio


# --- levels ---------------------------------------------------------------------------------------------------------


def test_levels_in_dbfs() -> None:
    t = np.arange(RATE) / RATE
    assert rms_dbfs(np.sin(2 * np.pi * 1000 * t)) == pytest.approx(-3.01, abs=0.01)
    assert rms_dbfs(np.zeros(10)) == rms_dbfs(np.zeros(0)) == -120.0
    blocks = block_levels_dbfs(np.concatenate([np.full(100, 0.1), np.full(50, 1.0)]), 100)
    assert blocks == pytest.approx([-20.0, 0.0])


def level_detection(above: float, seconds: float, **fields: object) -> DetectionConfig:
    return DetectionConfig(level={"above_dbfs": above, "min_seconds": seconds}, **fields)


def test_a_loud_run_is_timed_across_windows_from_its_first_block() -> None:
    audio = with_bursts(np.random.default_rng(0), 12.0, [(4.0, 1.2), (9.0, 0.3)])
    watch = LevelWatch(RATE)
    watch.update({"long": level_detection(-30, 1.0), "any": level_detection(-30, 0.0)})
    fired: dict[str, list[tuple[float, float]]] = {"long": [], "any": []}
    for window in clip_windows("s", audio, WINDOW, HOP, WINDOW):
        for name, level in watch.feed(window).items():
            assert level.span.end_sample == window.end_sample
            assert level.span.start_sample == (0 if window.start_sample == 0 else window.end_sample - HOP)
            if level.score == 1.0:
                fired[name].append((level.span.onset / RATE, window.end_sample / RATE))
    # "long" needs 1 s: heard from the window whose new audio completes it (ends at 5.0 s), dated from 4.0 s.
    assert fired["long"] == [(4.0, 5.0), (4.0, 5.5)]
    assert [onset for onset, _ in fired["any"]] == [4.0, 4.0, 4.0, 9.0]
    assert [end for _, end in fired["any"]] == [4.5, 5.0, 5.5, 9.5]


def test_a_gap_in_the_windows_ends_a_run_and_changed_detections_start_afresh() -> None:
    audio = with_bursts(np.random.default_rng(1), 10.0, [(2.0, 6.0)])
    windows = clip_windows("s", audio, WINDOW, HOP, WINDOW)
    watch = LevelWatch(RATE)
    watch.update({"long": level_detection(-30, 2.0)})
    for window in windows[:4]:  # up to 3.5 s: 1.5 s loud so far
        assert watch.feed(window)["long"].score == 0.0
    later = [w for w in windows if 4 * RATE <= w.start_sample and w.end_sample <= 7 * RATE]  # 3.5-4.0 s lost
    heard = [(w.end_sample / RATE, watch.feed(w)["long"]) for w in later]
    assert [(end, level.score, level.span.onset) for end, level in heard] == [
        (6.0, 1.0, 4 * RATE),  # the run counts from where the audio is known again, not from 2.0 s
        (6.5, 1.0, 4 * RATE),
        (7.0, 1.0, 4 * RATE),
    ]
    watch.update({"long": level_detection(-30, 0.5)})  # changed: its run starts afresh, from 7.0 s
    level = watch.feed(Window("s", int(5.5 * RATE), int(7.5 * RATE), audio[int(5.5 * RATE) : int(7.5 * RATE)]))
    assert (level["long"].score, level["long"].span.onset) == (1.0, 7 * RATE)


def detector(model: CountingModel, configs: dict[str, DetectionConfig], gates: dict[str, float | None]) -> Detector:
    alarm = DetectionPrompts("alarm", np.array([1.0, 0.0, 0.0], np.float32), np.zeros((0, 3), np.float32), None)
    matcher = Matcher([alarm] if "alarm" in configs else [], np.array([[0.0, 1.0, 0.0]], np.float32), 20.0)
    clock = datetime(2026, 1, 1, tzinfo=timezone.utc)
    clocks = {name: StreamClock(clock, RATE) for name in gates}
    return Detector(model, DetectionSet(configs, matcher), clocks, HOP, gates=gates)


def test_gated_windows_skip_the_model_score_zero_and_end_events() -> None:
    configs = {"alarm": DetectionConfig(prompts=["x"], smoothing_windows=1)}
    model = CountingModel()
    found = detector(model, configs, {"quiet_room": -40.0, "open": None})
    audio = with_bursts(np.random.default_rng(2), 8.0, [(0.0, 4.0)])  # loud, then -50 dBFS from 4 s
    windows = [w for s in ("quiet_room", "open") for w in clip_windows(s, audio, WINDOW, HOP, WINDOW)]
    result = found.process(windows)
    per_stream = {s: [x for x in result.scores if x.stream == s] for s in ("quiet_room", "open")}
    gated = [x for x in per_stream["quiet_room"] if x.values["alarm"] == 0.0]
    assert found.gated == {"quiet_room": len(gated), "open": 0} and len(gated) == 5  # windows starting at 4.0 to 6.0 s
    assert all(x.start_sample >= 4 * RATE for x in gated)
    assert model.windows == len(windows) - len(gated)  # the gated ones never reached the model
    assert all(x.values["alarm"] > 0.99 for x in per_stream["open"])  # no gate: the model heard every window
    ends = [e for e in result.events if e.kind == "end"]
    assert [(e.stream, e.end_sample) for e in ends] == [("quiet_room", int(3.5 * RATE) + HOP // 2)]


def test_level_detections_need_no_model_and_use_the_same_event_lifecycle() -> None:
    configs = {"loud": level_detection(-30, 0.5, cooldown_seconds=5.0, min_duration_seconds=0.5)}
    model = CountingModel()
    found = detector(model, configs, {"s": None})
    audio = with_bursts(np.random.default_rng(3), 16.0, [(2.0, 1.0), (4.0, 1.0), (10.0, 0.3), (12.0, 2.0)])
    result = found.process(clip_windows("s", audio, WINDOW, HOP, WINDOW))
    assert model.windows == 0
    events = [(e.kind, e.start_sample / RATE) for e in result.events]
    # 2.0 s fires; 4.0 s falls in its cooldown; 10.0 s is too short; 12.0 s fires again.
    assert events == [("start", 2.0), ("end", 2.0), ("start", 12.0), ("end", 12.0)], events
    first_end = result.events[1].end_sample / RATE  # the burst ends at 3.0 s: half a hop, the resolution
    assert abs(first_end - 3.0) <= HOP / 2 / RATE, first_end
    assert found.close("s", audio.size) == []


def test_the_level_config_is_checked() -> None:
    base = {"streams": {"room": {"type": "mic", "min_level_dbfs": -55}}}
    config = parse_config({**base, "detections": {"bang": {"level": {"above_dbfs": -12, "min_seconds": 0.2}}}})
    assert config.streams["room"].min_level_dbfs == -55.0
    for bad, expected in [
        ({"level": {"above_dbfs": 3}}, "detections.bang.level.above_dbfs = 3"),
        ({"level": {"min_seconds": 1}}, "detections.bang.level.above_dbfs: Field required"),
        ({"level": {"above_dbfs": -20}, "examples": ["x.wav"]}, "detections.bang.examples.0 = 'x.wav'"),
    ]:
        with pytest.raises(ConfigError) as caught:
            parse_config({**base, "detections": {"bang": bad}})
        assert any(p.startswith(expected) for p in caught.value.problems), caught.value.problems
    with pytest.raises(ConfigError, match="streams.room.mic.min_level_dbfs = -200"):
        parse_config(
            {"streams": {"room": {"type": "mic", "min_level_dbfs": -200}}, "detections": {"d": {"prompts": ["x"]}}}
        )


# --- whole runs -----------------------------------------------------------------------------------------------------


def run_events(config: dict, tmp_path: Path) -> list[dict]:
    path = tmp_path / "clapd.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_clapd("run", "-c", str(path), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_a_level_detection_fires_on_a_loud_burst_and_not_on_quiet_audio(tmp_path: Path) -> None:
    audio = with_bursts(np.random.default_rng(4), 20.0, [(8.0, 1.5), (14.0, 0.2)])
    wav = tmp_path / "bursts.wav"
    soundfile.write(wav, audio, RATE, subtype="FLOAT")
    config = {
        "model": {"bundle": str(DEMO_BUNDLE), "providers": ["cpu"]},
        "windows": DEMO_WINDOWS,
        "streams": {"room": {"type": "file", "path": str(wav), "realtime": False}},
        "detections": {
            "loud": {"level": {"above_dbfs": -30, "min_seconds": 0.5}},
            "bang": {"level": {"above_dbfs": -30}},
            "very_loud": {"level": {"above_dbfs": -3}},
        },
        "outputs": {"stdout": True},
        "state_dir": str(tmp_path / "state"),
    }
    events = run_events(config, tmp_path)
    loud = [(e["kind"], e["start_offset_seconds"], e["end_offset_seconds"]) for e in events if e["detection"] == "loud"]
    assert len(loud) == 2 and loud[0][:2] == ("start", 8.0) and loud[1][0] == "end", loud
    assert 9.5 - 0.5 <= loud[1][2] <= 9.5 + 0.5
    bangs = [e["start_offset_seconds"] for e in events if e["detection"] == "bang" and e["kind"] == "start"]
    assert bangs == [8.0, 14.0]  # the 0.2 s bang too: no minimum time
    assert not [e for e in events if e["detection"] == "very_loud"]
    assert {e["event_type"] for e in events} == {"start", "end"} and all(e["stream"] == "room" for e in events)


def test_the_gate_ends_an_event_when_the_stream_goes_quiet(tmp_path: Path) -> None:
    """A smoke alarm at -25 dBFS for 8 s that goes on at -75 dBFS: the model still hears it (the stream without a
    gate keeps its event), but below the gate of -60 dBFS the windows skip the model and the event ends."""
    rng = np.random.default_rng(5)
    alarm = smoke_alarm(rng, 20.0).astype(np.float64)
    loud, faint = alarm[: 8 * RATE], alarm[8 * RATE :]
    audio = 10 ** (-90 / 20) * rng.standard_normal(30 * RATE)
    audio[4 * RATE : 12 * RATE] += loud * 10 ** (-25 / 20) / math.sqrt(np.mean(loud**2))
    audio[12 * RATE : 24 * RATE] += faint * 10 ** (-75 / 20) / math.sqrt(np.mean(faint**2))
    wav = tmp_path / "alarm.wav"
    soundfile.write(wav, audio.astype(np.float32), RATE, subtype="FLOAT")
    stream = {"type": "file", "path": str(wav), "realtime": False}
    config = {
        "model": {"bundle": str(DEMO_BUNDLE), "providers": ["cpu"], "precision": "fp32"},
        "windows": DEMO_WINDOWS,
        "streams": {"gated": {**stream, "min_level_dbfs": -60}, "open": stream},
        "detections": {"smoke_alarm": {"prompts": [DEMO_DETECTIONS["smoke_alarm"]], **DEMO_EVENT_SETTINGS}},
        "outputs": {"stdout": True, "stdout_scores": True},
        "state_dir": str(tmp_path / "state"),
    }
    records = run_events(config, tmp_path)
    ends = {e["stream"]: e["end_offset_seconds"] for e in records if e["kind"] == "end"}
    starts = {e["stream"]: e["start_offset_seconds"] for e in records if e["kind"] == "start"}
    assert starts["gated"] == starts["open"] and 4.0 - 0.5 <= starts["gated"] <= 4.5, starts
    assert ends["gated"] <= 12.0 < 20.0 <= ends["open"], ends  # the last loud beep ends at ~10.7 s
    gated = [r for r in records if r["kind"] == "scores" and r["stream"] == "gated" and r["start_offset_seconds"] > 12]
    assert gated and all(r["scores"] == {"smoke_alarm": 0.0} for r in gated)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def windows_metric(text: str, stream: str, outcome: str) -> float:
    found = re.search(rf'clapd_windows_total{{outcome="{outcome}",stream="{stream}"}} (\S+)', text) or re.search(
        rf'clapd_windows_total{{stream="{stream}",outcome="{outcome}"}} (\S+)', text
    )
    return float(found.group(1)) if found else math.nan


def test_gated_windows_are_counted_in_the_metrics(tmp_path: Path, small_bundle_dir: Path) -> None:
    wav = tmp_path / "quiet.wav"
    soundfile.write(wav, noise(np.random.default_rng(6), 3.0, -70.0), RATE)
    port = free_port()
    config = {
        "model": {"bundle": str(small_bundle_dir), "providers": ["cpu"], "threads": 1},
        "windows": {"window_seconds": 1, "hop_seconds": 0.5},
        "streams": {"room": {"type": "file", "path": str(wav), "loop": True, "min_level_dbfs": -60}},
        "detections": {"alarm": {"prompts": ["a loud alarm"]}},
        "outputs": {"stdout": True},
        "metrics": {"enabled": True, "port": port},
        "state_dir": str(tmp_path / "state"),
    }
    path = tmp_path / "clapd.yaml"
    path.write_text(yaml.safe_dump(config))
    daemon = start_daemon(path, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_TIMEOUT + SCRAPE_TIMEOUT
        gated = processed = math.nan
        while time.monotonic() < deadline and not gated >= 2:
            try:
                text = scrape(port)
                gated, processed = windows_metric(text, "room", "gated"), windows_metric(text, "room", "processed")
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        assert gated >= 2, f"no gated windows counted: {gated}"
        assert processed >= gated  # gated windows are among those processed
        assert daemon.poll() is None
    finally:
        _, stderr = stop_daemon(daemon)
    assert daemon.returncode == 0, stderr[-3000:]
