"""The configuration reference: generated from the schema, never stale, every field described."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel

from clapd.daemon import config
from clapd.daemon.config_docs import REGENERATE, config_sections, render

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def all_subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub, *all_subclasses(sub)}
    return found


def test_the_reference_is_what_the_schema_gives_now() -> None:
    assert REFERENCE.read_text(encoding="utf-8") == render(), f"docs/configuration.md is stale: run `{REGENERATE}`"


def test_every_field_of_every_config_section_has_a_description() -> None:
    documented = {section.model for section in config_sections()}
    defined = {cls for cls in all_subclasses(config.Section) if cls.__module__.startswith(config.__name__)}
    assert defined <= documented, f"sections the reference does not reach: {sorted(c.__name__ for c in defined)}"
    missing = [
        f"{model.__name__}.{name}"
        for model in sorted(documented, key=lambda m: m.__name__)
        for name, field in model.model_fields.items()
        if not (field.description or "").strip()
    ]
    assert missing == []


def test_the_reference_covers_every_key_path() -> None:
    text = render()
    for section in config_sections():
        for name in section.model.model_fields:
            key = f"{section.path}.{name}" if section.path else name
            assert f"| `{key}` |" in text
    assert "`streams.<name>` with `type: pipe`" in text and "| `outputs.mqtt.tls.ca_file` |" in text


def test_each_row_shows_type_default_and_bounds() -> None:
    rows = {line.split(" | ")[0]: line for line in render().splitlines() if line.startswith("| `")}
    assert rows["| `windows.window_seconds`"].split(" | ")[1:4] == ["number", "`10.0`", "≥ 1.0, ≤ 10.0"]
    assert rows["| `streams.<name>.path`"].split(" | ")[1:3] == ["path", "required"]
    assert rows["| `model.providers`"].split(" | ")[2] == '`["tensorrt", "cuda", "cpu"]`'
    assert rows["| `state_dir`"].split(" | ")[2] == "`/var/lib/clapd`"
    assert "`0` or `1` or `2`" in rows["| `outputs.mqtt.qos`"]


def test_the_generator_runs_as_a_module_without_torch() -> None:
    code = (
        "import runpy, sys\n"
        "runpy.run_module('clapd.daemon.config_docs', run_name='__main__')\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout == render()


def test_the_sections_are_the_config_models() -> None:
    assert all(issubclass(section.model, BaseModel) for section in config_sections())
    paths = [section.path for section in config_sections()]
    assert paths[0] == "" and "outputs.mqtt.home_assistant" in paths and paths.count("streams.<name>") == 3
