"""Configuration: the examples load; every problem is reported with key path, value and reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run_clapd

from clapd.daemon.config import ConfigError, load_config, parse_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MINIMAL = {"streams": {"kitchen": {"type": "mic"}}, "detections": {"alarm": {"prompts": ["an alarm"]}}}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_load(path: Path) -> None:
    config = load_config(path)
    assert config.streams and config.detections
    assert run_clapd("check-config", str(path), timeout=60).returncode == 0


def test_defaults() -> None:
    config = parse_config(MINIMAL)
    assert (config.windows.window_seconds, config.windows.hop_seconds) == (10.0, 1.0)
    assert config.model.providers == ["tensorrt", "cuda", "cpu"] and config.outputs.mqtt is None
    assert config.detections["alarm"].threshold_off < config.detections["alarm"].threshold_on


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"detections": {"a/b": {"prompts": ["x"]}}}, "detections.a/b.[key] = 'a/b'"),
        ({"detections": {"fire#": {"prompts": ["x"]}}}, "detections.fire#.[key]"),
        ({"detections": {"alarm": {"prompts": []}}}, "detections.alarm.prompts = []"),
        ({"detections": {"alarm": {"prompts": ["x"], "threshold_on": 1.5}}}, "detections.alarm.threshold_on = 1.5"),
        ({"detections": {"alarm": {"prompts": ["x"], "threshold_on": 0.3, "threshold_off": 0.5}}}, "threshold_off"),
        ({"detections": {"alarm": {"prompts": ["x"], "streams": ["attic"]}}}, "unknown streams ['attic']"),
        ({"streams": {"kitchen": {"type": "mic", "devcie": 2}}}, "streams.kitchen.mic.devcie = 2: Extra inputs"),
        ({"streams": {"kitchen": {"type": "radio"}}}, "streams.kitchen"),
        ({"windows": {"window_seconds": 2, "hop_seconds": 3}}, "hop_seconds must not exceed"),
        ({"windows": {"window_seconds": 20}}, "windows.window_seconds = 20"),
        ({"outputs": {"mqtt": {"host": "h", "topic_prefix": "home/+"}}}, "outputs.mqtt.topic_prefix = 'home/+'"),
        ({"outputs": {"mqtt": {"host": "h", "port": 70000}}}, "outputs.mqtt.port = 70000"),
        ({"outputs": {"mqtt": {"host": "h", "password_file": "/a", "password_env": "B"}}}, "not both"),
        ({"unknown_section": 1}, "unknown_section = 1: Extra inputs are not permitted"),
    ],
)
def test_each_problem_names_its_key(patch: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({**MINIMAL, **patch})
    assert any(expected in problem for problem in caught.value.problems), caught.value.problems


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            {"streams": {"k": {"type": "mic", "channels": 0}}, "detections": {"a": {"prompts": ["x"], "x": 1}}}
        )
    assert len(caught.value.problems) == 2


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("streams: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    assert not (tmp_path / "pwned").exists()


def test_check_config_cli_lists_problems_and_exits_non_zero(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("streams: {kitchen: {type: mic}}\ndetections: {alarm: {prompts: [], threshold_on: 7}}\n")
    result = run_clapd("check-config", str(path), timeout=60)
    assert result.returncode == 2
    assert "detections.alarm.prompts = []" in result.stderr and "detections.alarm.threshold_on = 7" in result.stderr
    missing = run_clapd("check-config", str(tmp_path / "nope.yaml"), timeout=60)
    assert missing.returncode == 2 and "cannot read the file" in missing.stderr
