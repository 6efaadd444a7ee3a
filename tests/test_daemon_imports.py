"""The daemon's install has no torch: no daemon module may import torch or transformers."""

from __future__ import annotations

import sys
from pathlib import Path

from helpers import import_daemon_modules, modules_on_disk

import clapd.daemon


def test_every_daemon_module_imports_without_torch() -> None:
    found = import_daemon_modules(sys.executable)
    folder = Path(clapd.daemon.__file__).parent
    on_disk = modules_on_disk(folder, "clapd.daemon")
    assert found.folder == folder
    assert {"clapd.daemon", "clapd.daemon.config", "clapd.daemon.sources.mic"} <= on_disk
    # A walk that misses a module (no prefix, a subpackage without __init__.py) cannot pass for one that found all.
    assert sorted(on_disk - set(found.modules)) == []
    assert found.import_failures() == {}
    assert found.heavy == []
