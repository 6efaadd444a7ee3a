"""A bundle's example margin: measured when it is built, declared in its manifest, the default of its detections'
`example_margin` and `negative_example_margin`, and part of what a calibration is made with."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import soundfile
from helpers import run_clapd

import clapd
from clapd.daemon.calibration import fingerprint
from clapd.daemon.config import EXAMPLE_MARGIN, NEGATIVE_EXAMPLE_MARGIN, DetectionConfig
from clapd.daemon.examples import ExampleEmbedder
from clapd.daemon.manifest import Manifest
from clapd.daemon.matcher import build_detections
from clapd.export.example_margin import REFERENCE_RECORDINGS, sound_gap

DEMO_BUNDLE = Path(clapd.__file__).parent / "demo_bundle"
ROOT = Path(__file__).resolve().parents[1]
RATE = 16_000


class ToneModel:
    """Embeds a window by its loudness: enough for a detection to have an example embedding."""

    def embed(self, windows: np.ndarray) -> np.ndarray:
        rms = np.sqrt(np.mean(windows**2, axis=1))
        vectors = np.stack([rms, 1 - rms, np.full_like(rms, 0.2)], axis=1)
        return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def embedder(bundle_margin: float | None) -> ExampleEmbedder:
    return ExampleEmbedder(
        ToneModel(),
        sample_rate=RATE,
        window=RATE,
        hop=RATE,
        model_window=RATE,
        cache_dir=None,
        model_sha256="tone",
        bundle_margin=bundle_margin,
    )


@pytest.fixture(scope="module")
def tone(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("examples") / "tone.wav"
    soundfile.write(path, 0.3 * np.sin(np.arange(RATE) / 7).astype(np.float32), RATE)
    return str(path)


def margins(tone: str, bundle_margin: float | None, **configured: float) -> tuple[float, float]:
    config = DetectionConfig(examples=[tone], negative_examples=[tone], **configured)
    (built,) = build_detections({"d": config}, cache=None, examples=embedder(bundle_margin))  # type: ignore[arg-type]
    return built.margin, built.negative_margin


def test_a_detection_takes_the_bundles_margin_unless_it_sets_its_own(tone: str) -> None:
    assert margins(tone, 0.45) == (0.45, 0.45)
    assert margins(tone, 0.45, example_margin=0.2) == (0.2, 0.45)
    assert margins(tone, 0.45, negative_example_margin=0.1) == (0.45, 0.1)
    assert margins(tone, None) == (EXAMPLE_MARGIN, NEGATIVE_EXAMPLE_MARGIN)


def test_the_gap_is_how_much_closer_recordings_come_to_each_other_than_to_their_caption() -> None:
    recording = np.array([1.0, 0.0, 0.0])
    caption = np.array([0.25, np.sqrt(1 - 0.25**2), 0.0])
    assert sound_gap(np.tile(recording, (5, 1)), caption) == pytest.approx(0.75)
    spread = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]] * 3)  # two kinds under one caption: they are far apart
    assert sound_gap(spread, caption) < sound_gap(np.tile(recording, (6, 1)), caption)
    with pytest.raises(ValueError, match="needs more than"):
        sound_gap(np.tile(recording, (REFERENCE_RECORDINGS, 1)), caption)


def test_a_calibration_with_examples_belongs_to_the_bundles_margin_one_without_does_not(tone: str) -> None:
    text_only = DetectionConfig(prompts=["a kettle whistling"])
    as_before = DetectionConfig(prompts=["a kettle whistling"], example_margin=0.3, negative_example_margin=0.3)
    # a text-only detection's calibration does not move with the bundle's margin (calibrations stored before
    # bundles declared one still apply)
    assert (
        fingerprint(text_only, ["room"], 0.51) == fingerprint(text_only, ["room"]) == fingerprint(as_before, ["room"])
    )
    taught = DetectionConfig(examples=[tone])
    assert fingerprint(taught, ["room"], 0.32) != fingerprint(taught, ["room"], 0.51)
    own = DetectionConfig(examples=[tone], example_margin=0.51, negative_example_margin=0.51)
    assert fingerprint(taught, ["room"], 0.51) == fingerprint(own, ["room"], 0.32)  # what it scores with counts


def build_script(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """scripts/build_demo_model.py as a module."""
    spec = importlib.util.spec_from_file_location("build_demo_model", ROOT / "scripts" / "build_demo_model.py")
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, build)  # its dataclasses look their module up there
    spec.loader.exec_module(build)
    return build


def test_the_demo_bundle_declares_the_margin_its_build_measures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build = build_script(monkeypatch)
    copy = shutil.copytree(DEMO_BUNDLE, tmp_path / "bundle")
    shipped = Manifest.read(DEMO_BUNDLE)
    build.measure_example_margin(copy)
    assert shipped.example_margin is not None
    assert Manifest.read(copy).example_margin == shipped.example_margin


def write_labelled(folder: Path, sounds: dict) -> Path:
    """Each sound's recordings as files in a subfolder named by its caption."""
    for sound in sounds.values():
        subfolder = folder / sound.caption.replace(" ", "_")
        subfolder.mkdir(parents=True)
        for i, recording in enumerate(sound.recordings):
            soundfile.write(subfolder / f"{i}.wav", recording, 48_000, subtype="FLOAT")
    return folder


def test_example_margin_measures_a_bundle_on_a_users_recordings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`clapd example-margin` on the build's own recordings, as files in a folder per caption, measures what the
    build declared; --dry-run leaves the manifest alone; without it the margin and a note are written."""
    labelled = write_labelled(tmp_path / "sounds", build_script(monkeypatch).margin_sounds())
    copy = shutil.copytree(DEMO_BUNDLE, tmp_path / "bundle")
    Manifest.read(copy).model_copy(update={"example_margin": None}).write(copy)  # as an exported bundle
    assert Manifest.read(copy).example_margin is None
    dry = run_clapd("example-margin", str(copy), str(labelled), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    shipped = Manifest.read(DEMO_BUNDLE).example_margin
    assert f"example margin: {shipped:g} (median over 10 sounds, 80 recordings)" in dry.stdout
    assert Manifest.read(copy).example_margin is None
    written = run_clapd("example-margin", str(copy), str(labelled), "--window-seconds", "2", "--hop-seconds", "0.5")
    assert written.returncode == 0, written.stderr
    measured = Manifest.read(copy)
    assert measured.example_margin == shipped
    assert measured.notes[-1].startswith(f"example_margin {shipped:g}: measured by clapd example-margin on 10 sounds")


def test_example_margin_names_what_is_wrong_and_writes_nothing(tmp_path: Path) -> None:
    copy = shutil.copytree(DEMO_BUNDLE, tmp_path / "bundle")
    before = (copy / "manifest.json").read_bytes()

    def refusal(folder: Path, *options: str) -> str:
        result = run_clapd("example-margin", str(copy), str(folder), *options)
        assert result.returncode == 2, result.stdout
        return result.stderr

    sounds = tmp_path / "sounds"
    sounds.mkdir()
    assert "no subfolders (one folder of recordings per sound, named by its caption)" in refusal(sounds)
    kettle = sounds / "a_kettle_whistling"
    kettle.mkdir()
    tone = 0.3 * np.sin(np.arange(RATE) / 7).astype(np.float32)
    for i in range(REFERENCE_RECORDINGS):
        soundfile.write(kettle / f"{i}.wav", tone, RATE)
    too_few = f"{kettle}: {REFERENCE_RECORDINGS} recordings; a sound needs more than {REFERENCE_RECORDINGS}"
    assert too_few in refusal(sounds)
    soundfile.write(kettle / "quiet.wav", tone * 1e-4, RATE)
    assert f"{kettle / 'quiet.wav'}: silent" in refusal(sounds)
    (kettle / "quiet.wav").unlink()
    soundfile.write(kettle / "3.wav", tone, RATE)
    shutil.copytree(kettle, sounds / "a kettle whistling")
    assert "another subfolder names the same caption, 'a kettle whistling'" in refusal(sounds)
    assert "windows.window_seconds = 0.5: Input should be greater than or equal to 1" in refusal(
        sounds, "--window-seconds", "0.5"
    )
    assert (copy / "manifest.json").read_bytes() == before
