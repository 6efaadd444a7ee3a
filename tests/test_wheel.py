"""The wheel: built from this checkout, installed in a fresh virtual environment and run from there, as a user would.

pyproject.toml lists the packages by hand, so a subpackage left out of it is missing from the wheel while the
editable install still finds it. The fresh environment sees the project's dependencies, and nothing from the network,
through a .pth file naming this environment's site-packages: a plain directory line adds the folder without
processing the .pth files in it, so the editable install's import hook there stays off and the checkout out of sight.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from helpers import import_daemon_modules, modules_on_disk

from clapd.cli import CONFIG_FILE, JETSON_DROP_IN, UNIT_FILE
from clapd.models.demo_stream import make_demo_stream

CHECKOUT = Path(__file__).resolve().parent.parent
# Build from a clean copy: setuptools keeps a build/ folder in the source tree whose stale files would be packed.
NOT_COPIED = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "bundles")
PIP = (sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input")
STREAM_SECONDS = 20.0  # the demo stream's first planted sound, a smoke alarm from 10 s to 16 s


@dataclass(frozen=True, slots=True)
class Installed:
    """The wheel and the fresh virtual environment it is installed in."""

    wheel: Path
    python: Path  # the environment's interpreter
    clapd: Path  # the console script the wheel installed
    site_packages: Path  # the environment's own
    work: Path  # a folder outside the checkout, to run commands in

    def shipped(self, name: str) -> str:
        """A file of the wheel, e.g. "clapd/configs/home.yaml"."""
        with zipfile.ZipFile(self.wheel) as wheel:
            return wheel.read(name).decode()


def run(command: list[str | Path], **options: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, timeout=300, check=False, **options
    )
    assert done.returncode == 0, f"{command}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    work = tmp_path_factory.mktemp("wheel")
    source, dist, venv = work / "source", work / "dist", work / "venv"
    shutil.copytree(CHECKOUT, source, ignore=NOT_COPIED)
    run([*PIP, "wheel", "--no-deps", "--no-build-isolation", "--no-index", source, "-w", dist])
    (wheel,) = dist.glob("clapd-*.whl")
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    run([*PIP, "--python", python, "install", "--no-deps", "--no-index", wheel])
    purelib = run([python, "-I", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip()
    # Written after the install, so that pip does not find this environment's editable clapd through it.
    dependencies = dict.fromkeys(sysconfig.get_path(name) for name in ("purelib", "platlib"))
    (Path(purelib) / "clapd-test-dependencies.pth").write_text("".join(f"{folder}\n" for folder in dependencies))
    return Installed(wheel, python, venv / "bin" / "clapd", Path(purelib), work)


def test_clapd_comes_from_the_wheel(installed: Installed) -> None:
    code = "import json, sys, clapd; print(json.dumps([clapd.__file__, sys.path]))"
    imported_from, path = json.loads(run([installed.python, "-I", "-c", code], cwd=installed.work).stdout)
    assert Path(imported_from) == installed.site_packages / "clapd" / "__init__.py"
    assert str(CHECKOUT) not in path


def test_every_daemon_module_imports_from_the_wheel(installed: Installed) -> None:
    found = import_daemon_modules(installed.python, cwd=installed.work)
    assert found.folder == installed.site_packages / "clapd" / "daemon"
    # What the checkout has and the wheel lacks: a subpackage missing from pyproject.toml's `packages`.
    assert sorted(modules_on_disk(CHECKOUT / "daemon", "clapd.daemon") - set(found.modules)) == []
    assert found.import_failures() == {}
    assert found.heavy == []


def test_clapd_run_on_the_demo_stream(installed: Installed, tmp_path: Path) -> None:
    wav = make_demo_stream(seed=0, seconds=STREAM_SECONDS).write_wav(tmp_path / "demo.wav")
    config = {  # no model.bundle: the demo bundle embedded in the wheel
        "windows": {"window_seconds": 2, "hop_seconds": 0.5},
        "streams": {"demo": {"type": "file", "path": str(wav), "realtime": False}},
        "detections": {
            "smoke_alarm": {
                "prompts": ["a smoke detector going off"],
                "threshold_on": 0.7,
                "threshold_off": 0.3,
                "smoothing_windows": 3,
            }
        },
        "outputs": {"stdout": True},
        "state_dir": str(tmp_path / "state"),
    }
    path = tmp_path / "clapd.yaml"
    path.write_text(yaml.safe_dump(config))
    done = run([installed.clapd, "run", "-c", path], cwd=installed.work)
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [e["detection"] for e in events if e.get("kind") == "start"] == ["smoke_alarm"], done.stdout


def test_install_service_writes_the_shipped_files(installed: Installed, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/nv_tegra_release").touch()  # a Jetson: the drop-in for its GPU device nodes is written too
    run([installed.clapd, "install-service", "--root", root, "--no-systemctl"], cwd=installed.work)

    unit = (root / UNIT_FILE).read_text().splitlines()
    template = installed.shipped("clapd/systemd/clapd.service").splitlines()
    assert len(unit) == len(template)
    changed = [(line, shipped) for line, shipped in zip(unit, template, strict=True) if line != shipped]
    assert len(changed) == 1 and changed[0][1].startswith("ExecStart=")
    assert changed[0][0].startswith(f"ExecStart={installed.clapd} run -c ")  # the wheel's console script
    assert (root / CONFIG_FILE).read_text() == installed.shipped("clapd/configs/home.yaml")
    assert (root / JETSON_DROP_IN).read_text() == installed.shipped("clapd/systemd/jetson.conf")
