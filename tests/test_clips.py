"""Event clips (issue 13, item 1): `clapd run` on a planted demo stream writes each event's audio with its pre-roll
and post-roll, checked sample by sample against the source; the end payload on a real broker names the file;
retention deletes the oldest; a file system that refuses every write larger than a few KB loses no event; privacy
prompts withhold a clip."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml
from helpers import run_clapd

import clapd
from clapd.daemon.clip_files import ClipJob, ClipWriter, list_clips, parse_clip_name
from clapd.daemon.config import ClipsConfig
from clapd.daemon.demo import DEMO_DETECTIONS, DEMO_WINDOWS, demo_detections
from clapd.models.demo_stream import PlannedEvent, make_demo_stream

DEMO_BUNDLE = Path(clapd.__file__).parent / "demo_bundle"
RATE = 48_000
PREFIX = "clips-test"
PRE_ROLL, POST_ROLL = 3.0, 2.0
GLASS = PlannedEvent("glass_breaking", 9.0, 11.0)
FSIZE_LIMIT = 12_000  # bytes: RLIMIT_FSIZE of the daemon in the full-disk test; a clip is hundreds of KB


def write_config(tmp_path: Path, wav: Path, **sections: object) -> Path:
    """The demo detections on one file stream read as fast as possible; clips for glass_breaking only."""
    detections = demo_detections()
    detections["glass_breaking"]["clips"] = {"pre_roll_seconds": PRE_ROLL, "post_roll_seconds": POST_ROLL}
    config = {
        "model": {"bundle": str(DEMO_BUNDLE), "providers": ["cpu"], "threads": 1},
        "windows": DEMO_WINDOWS,
        "streams": {"kitchen": {"type": "file", "path": str(wav), "realtime": False}},
        "detections": detections,
        "state_dir": str(tmp_path / "state"),
        **sections,
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "clapd.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def glass_stream(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, Path]:
    stream = make_demo_stream(seed=21, seconds=16.0, events=[GLASS])
    return stream.audio, stream.write_wav(tmp_path_factory.mktemp("audio") / "glass.wav")


def ends_of(lines: list[str]) -> list[dict]:
    return [e for e in map(json.loads, lines) if e["kind"] == "end"]


def test_a_clip_holds_the_event_with_its_pre_roll_and_the_end_payload_names_it(
    tmp_path: Path, glass_stream: tuple[np.ndarray, Path], broker, subscribers
) -> None:
    source, wav = glass_stream
    mqtt = {"mqtt": {"host": "127.0.0.1", "port": broker.port, "topic_prefix": PREFIX, "qos": 1}}
    config = write_config(tmp_path, wav, outputs=mqtt, history={"enabled": True, "flush_seconds": 0.5})
    events = subscribers(broker.port, f"{PREFIX}/+/+/event")
    result = run_clapd("run", "-c", str(config), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    got = events.wait_for(lambda m: any(json.loads(x.payload)["kind"] == "end" for x in m), 10, "an end event")
    ends = ends_of([m.payload.decode() for m in got])
    glass = [e for e in ends if e["detection"] == "glass_breaking"]
    assert len(glass) == 1, ends
    assert all(e["clip"] is None for e in ends if e["detection"] != "glass_breaking")  # no clips asked for
    end = glass[0]
    clip = Path(end["clip"])
    assert clip.parent == tmp_path / "state" / "clips" and clip.is_file()  # written before the daemon exited
    stream, detection, started, event_id = parse_clip_name(clip)
    assert (stream, detection, event_id) == ("kitchen", "glass_breaking", end["event_id"])
    event_start = round(end["start_offset_seconds"] * RATE)
    first = event_start - round(PRE_ROLL * RATE)
    last = round(end["end_offset_seconds"] * RATE) + round(POST_ROLL * RATE)
    assert first <= round(GLASS.start_s * RATE) and round(GLASS.end_s * RATE) <= last  # the sound, all of it
    from datetime import datetime

    assert abs((datetime.fromisoformat(end["start_utc"]) - started).total_seconds() - PRE_ROLL) < 1e-3
    audio, rate = soundfile.read(clip, dtype="float32")
    assert rate == RATE and audio.shape == (last - first,)
    assert best_lag(audio, source, first) == 0  # sample-aligned with the source
    assert np.corrcoef(audio, source[first:last])[0, 1] > 0.999  # 16-bit FLAC of the same samples
    assert np.max(np.abs(audio - source[first:last])) < 2 / 32768
    found = run_clapd("search", DEMO_DETECTIONS["glass_breaking"], "--json", "--top", "3", "-c", str(config))
    assert found.returncode == 0, found.stderr[-3000:]
    assert json.loads(found.stdout)[0]["clip"] == str(clip)  # the best range, with the event's clip
    table = run_clapd("search", DEMO_DETECTIONS["glass_breaking"], "--top", "1", "-c", str(config)).stdout
    assert str(clip) in table and "kitchen" in table, table


def best_lag(clip: np.ndarray, source: np.ndarray, first: int, search: int = RATE // 2) -> int:
    """The shift of the source (samples, within ±search of `first`) whose cross-correlation with the clip peaks."""
    segment = source[first - search : first + clip.size + search].astype(np.float64)
    n = segment.size + clip.size
    correlation = np.fft.irfft(np.fft.rfft(segment, n) * np.conj(np.fft.rfft(clip.astype(np.float64), n)), n)
    return int(np.argmax(correlation[: 2 * search + 1])) - search


def run_limited(config: Path, fsize: int) -> subprocess.CompletedProcess[str]:
    """`clapd run` whose every file write beyond `fsize` bytes fails (EFBIG: Python ignores SIGXFSZ), as on a full
    disk."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run(
        [sys.executable, "-m", "clapd", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        preexec_fn=limit,
    )


def event_keys(stdout: str) -> list[tuple]:
    return [
        (e["kind"], e["detection"], e["start_offset_seconds"], e["end_offset_seconds"])
        for e in map(json.loads, stdout.splitlines())
    ]


def test_a_full_file_system_drops_clips_and_history_but_no_event(
    tmp_path: Path, glass_stream: tuple[np.ndarray, Path]
) -> None:
    _, wav = glass_stream
    history = {"enabled": True, "flush_seconds": 0.2}
    clean = run_clapd("run", "-c", str(write_config(tmp_path / "clean", wav, history=history)), timeout=300)
    assert clean.returncode == 0, clean.stderr[-3000:]
    assert len(list_clips(tmp_path / "clean" / "state" / "clips")) == 1
    full = run_limited(write_config(tmp_path / "full", wav, history=history), FSIZE_LIMIT)
    assert full.returncode == 0, full.stderr[-3000:]
    assert event_keys(full.stdout) == event_keys(clean.stdout) and event_keys(clean.stdout)  # every event
    ends = [e for e in map(json.loads, full.stdout.splitlines()) if e["kind"] == "end" and e["clip"]]
    assert len(ends) == 1 and not Path(ends[0]["clip"]).exists()  # named, but it could not be written
    assert list_clips(tmp_path / "full" / "state" / "clips") == []
    assert "dropped_write_failed 1" in full.stderr, full.stderr[-3000:]
    assert "windows_written 0" in full.stderr and "history: cannot be kept" in full.stderr, full.stderr[-3000:]


def test_privacy_prompts_withhold_a_clip_and_the_event_is_published(
    tmp_path: Path, glass_stream: tuple[np.ndarray, Path]
) -> None:
    _, wav = glass_stream
    privacy = {"privacy_prompts": [DEMO_DETECTIONS["glass_breaking"]], "privacy_threshold": 0.5}
    result = run_clapd("run", "-c", str(write_config(tmp_path, wav, clips=privacy, outputs={"stdout": True})))
    assert result.returncode == 0, result.stderr[-3000:]
    ends = [e for e in map(json.loads, result.stdout.splitlines()) if e["kind"] == "end"]
    assert [e["detection"] for e in ends if e["clip"]] == ["glass_breaking"]
    assert list_clips(tmp_path / "state" / "clips") == []
    assert "withheld_privacy 1" in result.stderr and "privacy score" in result.stderr, result.stderr[-3000:]


def test_retention_deletes_the_oldest_clips_first(tmp_path: Path) -> None:
    """By size: the writer keeps the newest clips within max_total_mb; by age: older than max_age_days go at start."""
    folder = tmp_path / "clips"
    folder.mkdir()
    ancient = folder / "kitchen.smoke.20200101T000000.000Z.0a.flac"
    soundfile.write(ancient, np.zeros(RATE, np.float32), RATE)
    old = time.time() - 40 * 86_400
    os.utime(ancient, (old, old))
    foreign = folder / "notes.txt"  # not a clip: never touched
    foreign.write_text("mine")
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, 2 * RATE).astype(np.float32)  # ~150 KB as FLAC
    writer = ClipWriter(ClipsConfig(max_age_days=30, max_total_mb=0.4, queue_size=8), folder)
    names = [f"kitchen.glass.20261201T00000{i}.000Z.{i:02x}.flac" for i in range(4)]
    for name in names:
        writer.put(ClipJob(folder / name, noise, RATE))
    writer.finish()
    writer.work()  # on this thread: writes the queue, prunes after each clip, returns at finish
    left = [c.path.name for c in list_clips(folder)]
    assert writer.deleted_age == 1 and not ancient.exists() and foreign.exists()
    assert writer.written == 4 and writer.deleted_size >= 1
    assert left == names[-len(left) :] and sum(c.size for c in list_clips(folder)) <= 0.4e6


def test_opus_clips_are_written_and_read_back(tmp_path: Path) -> None:
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE)).astype(np.float32)
    writer = ClipWriter(ClipsConfig(format="opus"), tmp_path)
    path = tmp_path / "kitchen.siren.20261201T000000.000Z.ab.opus"
    writer.put(ClipJob(path, tone, RATE))
    writer.finish()
    writer.work()
    audio, rate = soundfile.read(path, dtype="float32")
    assert writer.written == 1 and rate == RATE and abs(audio.size - RATE) < RATE // 10
    assert [c.path for c in list_clips(tmp_path)] == [path] and path.stat().st_size < RATE  # compressed
