"""The daemon's install has no torch: no daemon module may import torch or transformers."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import clapd.daemon


def test_daemon_modules_do_not_import_torch() -> None:
    modules = [f"clapd.daemon.{m.name}" for m in pkgutil.walk_packages(clapd.daemon.__path__)]
    assert "clapd.daemon.config" in modules and len(modules) >= 8
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "bad = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == ""
