"""Daemon-only tests pass without torch or transformers, as on a device that has only the daemon's install.

A sitecustomize on PYTHONPATH puts an import hook first in every Python process of the run (pytest, and the `clapd`
commands the tests start) that refuses both as if they were not installed; pytest then runs daemon-only test modules.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent
# Fast modules that need no reference model: the daemon's stages, its config and CLI, its logs, its imports.
DAEMON_ONLY = (
    "test_ring.py",
    "test_windows.py",
    "test_events.py",
    "test_config.py",
    "test_logs.py",
    "test_daemon_imports.py",
)
REFUSED = ("torch", "transformers")
REFUSE_IMPORTS = f"""
import sys


class RefuseImports:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {REFUSED!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (refused: a run without torch)", name=name)
        return None


sys.meta_path.insert(0, RefuseImports())
"""


def test_daemon_only_tests_pass_without_torch(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(REFUSE_IMPORTS)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    for name in REFUSED:
        probe = subprocess.run(
            [sys.executable, "-c", f"import {name}"], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert probe.returncode != 0 and "refused: a run without torch" in probe.stderr, probe.stderr[-2000:]

    modules = [str(TESTS / name) for name in DAEMON_ONLY]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", *modules, "-q", "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'tmp'}"],
        cwd=TESTS.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-5000:]
    passed = re.search(r"(\d+) passed", output)
    assert passed is not None and int(passed.group(1)) > 0, output[-5000:]
