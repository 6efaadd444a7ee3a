"""State files (issue 10, items 2 and 9): written atomically and private whatever the umask, and a prompt cache that
is read defensively, so a damaged entry is recomputed with a warning instead of stopping the daemon or scoring NaN.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import run_clapd

import clapd
from clapd.daemon.demo import DEMO_DETECTIONS, DEMO_WINDOWS, demo_detections, demo_recording
from clapd.daemon.manifest import Manifest
from clapd.daemon.prompts import PromptCache
from clapd.daemon.state_files import private_folder, write_atomically, write_json_atomically
from clapd.models.demo_stream import PlannedEvent, make_demo_stream

DEMO_BUNDLE = Path(clapd.__file__).parent / "demo_bundle"
DIM = 8


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The most permissive umask: whatever is private afterwards was made private on purpose."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def test_state_files_are_written_private_and_whole_whatever_the_umask(tmp_path: Path, open_umask: None) -> None:
    folder = tmp_path / "state" / "deeper"
    write_atomically(folder / "a.bin", b"\x00\x01")
    write_json_atomically(folder / "b.json", {"x": 1})
    assert (folder / "a.bin").read_bytes() == b"\x00\x01" and json.loads((folder / "b.json").read_text()) == {"x": 1}
    assert mode(folder / "a.bin") == mode(folder / "b.json") == 0o600
    assert mode(folder) == 0o700
    assert sorted(p.name for p in folder.iterdir()) == ["a.bin", "b.json"]  # no temporary file left behind
    write_atomically(folder / "a.bin", b"new")  # replaced whole
    assert (folder / "a.bin").read_bytes() == b"new" and mode(folder / "a.bin") == 0o600
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    private_folder(shared)
    assert mode(shared) == 0o755  # a folder that exists (systemd's StateDirectory, say) is not changed


def test_the_demo_recording_is_a_private_state_file(tmp_path: Path, open_umask: None) -> None:
    state = tmp_path / "state"
    wav = demo_recording(state)
    assert mode(state) == 0o700
    assert mode(wav) == mode(state / "demo-stream.json") == 0o600
    assert json.loads((state / "demo-stream.json").read_text())["seconds"] > 0


class CountingEmbedder:
    """A text model stand-in: a fixed unit vector per prompt, and a record of every prompt it was asked for."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def embed(self, prompts: list[str]) -> np.ndarray:
        self.asked += prompts
        vectors = np.stack([np.random.default_rng(list(p.encode())).standard_normal(DIM) for p in prompts])
        return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def cache_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.npy"))


def test_damaged_cache_entries_are_recomputed_with_a_warning_and_rewritten(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "prompt-cache"
    prompts = ["zero", "short", "matrix", "nan", "float64", "long", "garbage", "pickle"]
    expected = CountingEmbedder().embed(prompts)
    PromptCache(CountingEmbedder(), directory, "sha", DIM).embed(prompts)
    files = cache_files(directory)
    path = {p: next(f for f in files if np.array_equal(np.load(f), expected[i])) for i, p in enumerate(prompts)}
    path["zero"].write_bytes(b"")  # what a power cut during np.save leaves
    np.save(path["short"], expected[1][:-1])
    np.save(path["matrix"], expected[2][None, :])
    np.save(path["nan"], np.full(DIM, np.nan, dtype=np.float32))
    np.save(path["float64"], expected[4].astype(np.float64))
    np.save(path["long"], 10 * expected[5])  # not a unit vector
    path["garbage"].write_bytes(b"\x93NUMPY garbage")
    np.save(path["pickle"], np.array([{"a": 1}], dtype=object), allow_pickle=True)
    caplog.set_level(logging.WARNING, logger="clapd.daemon.prompts")
    embedder = CountingEmbedder()
    got = PromptCache(embedder, directory, "sha", DIM).embed(prompts)
    np.testing.assert_array_equal(got, expected)
    assert sorted(embedder.asked) == sorted(prompts)  # every damaged entry recomputed
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == len(prompts) and all("recomputing it" in w for w in warnings), warnings
    for prompt in prompts:  # and written again, whole
        np.testing.assert_array_equal(np.load(path[prompt]), expected[prompts.index(prompt)])
    embedder.asked.clear()
    PromptCache(embedder, directory, "sha", DIM).embed(prompts)
    assert embedder.asked == []


def test_a_request_reads_only_new_prompts_and_memory_is_bounded_by_the_prompts_in_use(tmp_path: Path) -> None:
    directory = tmp_path / "prompt-cache"
    embedder = CountingEmbedder()
    cache = PromptCache(embedder, directory, "sha", DIM)
    first = cache.embed(["a dog", "a cat", "silence"])
    for file in cache_files(directory):
        file.write_bytes(b"")  # damaged on disk: reading it would warn and recompute
    embedder.asked.clear()
    np.testing.assert_array_equal(cache.embed(["silence", "a dog", "a cat"]), first[[2, 0, 1]])
    assert embedder.asked == []  # from memory: no file read, nothing recomputed
    cache.embed(["a bird", "a dog"])
    assert embedder.asked == ["a bird"]
    cache.retain({"a bird", "silence"})
    embedder.asked.clear()
    cache.embed(["a dog", "a bird"])
    assert embedder.asked == ["a dog"]  # forgotten once out of use, its file (damaged above) read again


def test_an_embedding_of_the_wrong_size_from_the_text_model_is_an_error(tmp_path: Path) -> None:
    cache = PromptCache(CountingEmbedder(), tmp_path, "sha", DIM + 1)
    with pytest.raises(RuntimeError, match="embedding size"):
        cache.embed(["x"])


# --- clapd run on a damaged prompt cache ------------------------------------------------------------------------


def run_demo(config_path: Path) -> tuple[list[tuple], str]:
    result = run_clapd("run", "-c", str(config_path), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    events = sorted(
        (e["kind"], e["detection"], e["start_offset_seconds"], e["end_offset_seconds"])
        for e in map(json.loads, result.stdout.splitlines())
    )
    return events, result.stderr


def test_clapd_run_recomputes_a_damaged_prompt_cache_and_finds_the_same_events(
    tmp_path: Path, open_umask: None
) -> None:
    """A zero-length entry stopped start-up for good; a wrong-shape one crashed the first window; NaN gave false
    events. The first run fills the cache (private files in a private folder); the second finds it damaged."""
    stream = make_demo_stream(seed=12, seconds=15.0, events=[PlannedEvent("glass_breaking", 6.0, 8.0)])
    wav = stream.write_wav(tmp_path / "glass.wav")
    state = tmp_path / "state"
    config = {
        "model": {"bundle": str(DEMO_BUNDLE), "providers": ["cpu"]},
        "windows": DEMO_WINDOWS,
        "streams": {"demo": {"type": "file", "path": str(wav), "realtime": False}},
        "detections": demo_detections(),
        "outputs": {"stdout": True},
        "state_dir": str(state),
    }
    path = tmp_path / "clapd.yaml"
    path.write_text(yaml.safe_dump(config))
    clean, _ = run_demo(path)
    assert ("start", "glass_breaking") in [e[:2] for e in clean], clean
    cache = state / "prompt-cache"
    files = cache_files(cache)
    assert len(files) == len(DEMO_DETECTIONS) + 3  # and the three default background prompts
    assert mode(state) == mode(cache) == 0o700
    assert {mode(f) for f in files} == {0o600}
    size = Manifest.read(DEMO_BUNDLE).embedding_size
    files[0].write_bytes(b"")
    np.save(files[1], np.ones((2, size), dtype=np.float32) / np.sqrt(size))
    np.save(files[2], np.full(size, np.nan, dtype=np.float32))
    np.save(files[3], np.zeros(size + 1, dtype=np.float32))
    again, stderr = run_demo(path)
    assert again == clean
    warned = [line for line in stderr.splitlines() if "prompt cache entry" in line and "recomputing it" in line]
    assert len(warned) == 4, stderr[-3000:]
    for file in files[:4]:  # each warned about, and written again whole
        assert any(file.name in line for line in warned)
        value = np.load(file)
        assert value.shape == (size,) and np.isfinite(value).all() and mode(file) == 0o600
