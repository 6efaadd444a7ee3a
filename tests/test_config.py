"""Configuration: the examples load; every problem is reported with key path, value and reason."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import annotated_types
import pytest
from helpers import run_clapd
from pydantic.fields import FieldInfo

from clapd.daemon.config import ConfigError, load_config, parse_config
from clapd.daemon.config_docs import config_sections
from clapd.daemon.control import DetectionChanges
from clapd.daemon.sources import command_problems

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MINIMAL = {"streams": {"kitchen": {"type": "mic"}}, "detections": {"alarm": {"prompts": ["an alarm"]}}}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_load(path: Path) -> None:
    config = load_config(path)
    assert config.streams and config.detections
    missing = command_problems(config.streams)  # check-config names the pipe commands this machine lacks (ffmpeg)
    result = run_clapd("check-config", str(path), timeout=60)
    assert result.returncode == (2 if missing else 0) and all(p in result.stderr for p in missing), result.stderr


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
        ({"detections": {"alarm": {"prompts": []}}}, "detections.alarm: Value error, give prompts (text), examples"),
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
    path.write_text("streams: {kitchen: {type: mic}}\ndetections: {alarm: {examples: [/no.wav], threshold_on: 7}}\n")
    result = run_clapd("check-config", str(path), timeout=60)
    assert result.returncode == 2
    assert "detections.alarm.examples.0 = '/no.wav'" in result.stderr, result.stderr
    assert "detections.alarm.threshold_on = 7" in result.stderr
    missing = run_clapd("check-config", str(tmp_path / "nope.yaml"), timeout=60)
    assert missing.returncode == 2 and "cannot read the file" in missing.stderr


# --- every number finite and in range (issue 10, item 1) ---

INF, NAN = float("inf"), float("nan")
PIPE = {"type": "pipe", "command": ["ffmpeg"], "sample_rate": 16000}
MQTT = {"host": "h"}


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        (
            {"detections": {"alarm": {"prompts": ["x"], "cooldown_seconds": INF}}},
            "cooldown_seconds = inf: Input should be a finite number",
        ),
        (
            {"detections": {"alarm": {"prompts": ["x"], "min_duration_seconds": -INF}}},
            "min_duration_seconds = -inf: Input should be a finite",
        ),
        (
            {"detections": {"alarm": {"prompts": ["x"], "threshold_on": NAN}}},
            "threshold_on = nan: Input should be a finite number",
        ),
        (
            {"detections": {"alarm": {"prompts": ["x"], "threshold_off": "nan"}}},
            "threshold_off = 'nan': Input should be a finite",
        ),
        (
            {"detections": {"alarm": {"prompts": ["x"], "cooldown_seconds": 1e9}}},
            "cooldown_seconds = 1000000000.0: Input should be less",
        ),
        ({"windows": {"hop_seconds": NAN}}, "windows.hop_seconds = nan: Input should be a finite number"),
        (
            {"streams": {"cam": {**PIPE, "restart_max_seconds": 1e-9}}},
            "restart_max_seconds = 1e-09: Input should be greater than or equal to 0.1",
        ),
        (
            {"streams": {"cam": {**PIPE, "restart_max_seconds": INF}}},
            "restart_max_seconds = inf: Input should be a finite",
        ),
        (
            {"streams": {"cam": {**PIPE, "channel": 10**30}}},
            "streams.cam.pipe.channel = 1000000000000000000000000000000",
        ),
        (
            {"streams": {"k": {"type": "mic", "block_seconds": NAN}}},
            "streams.k.mic.block_seconds = nan: Input should be a finite",
        ),
        (
            {"outputs": {"mqtt": {**MQTT, "level_interval_seconds": INF}}},
            "level_interval_seconds = inf: Input should be a finite",
        ),
        (
            {"outputs": {"mqtt": {**MQTT, "level_interval_seconds": 0.01}}},
            "level_interval_seconds = 0.01: Value error, must be 0 (never)",
        ),
        (
            {"outputs": {"mqtt": {**MQTT, "queue_max_events": 10**30}}},
            "outputs.mqtt.queue_max_events = 1000000000000000000000000000000",
        ),
        ({"outputs": {"mqtt": {**MQTT, "control": {"max_detections": 0}}}}, "outputs.mqtt.control.max_detections = 0"),
    ],
)
def test_numbers_must_be_finite_and_in_range(patch: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({**MINIMAL, **patch})
    assert any(expected in problem for problem in caught.value.problems), caught.value.problems


def _numeric_fields() -> list[tuple[str, str, FieldInfo]]:
    """(section, field, info) of every int or float field (optional or not) of every section of the file."""
    found = []
    for section in config_sections():
        for name, info in section.model.model_fields.items():
            kinds = set(get_args(info.annotation)) - {type(None)} or {info.annotation}
            if kinds and kinds <= {int, float}:
                found.append((section.model.__name__, name, info))
    return found


def test_every_numeric_field_is_finite_and_bounded_on_both_sides() -> None:
    """One definition: the sections share `allow_inf_nan=False`, and no number is left without a floor and a
    ceiling (the control channel's `DetectionChanges` shares DetectionConfig's config and bounds)."""
    fields = _numeric_fields()
    assert len(fields) > 20
    for section in config_sections():
        assert section.model.model_config.get("allow_inf_nan") is False, section.path
    assert DetectionChanges.model_config.get("allow_inf_nan") is False
    for section, name, info in fields:
        kinds = {type(m) for m in info.metadata}
        assert kinds & {annotated_types.Ge, annotated_types.Gt}, f"{section}.{name} has no lower bound"
        assert kinds & {annotated_types.Le, annotated_types.Lt}, f"{section}.{name} has no upper bound"


def test_check_config_refuses_infinity_nan_and_a_restart_storm(tmp_path: Path) -> None:
    path = tmp_path / "inf.yaml"
    path.write_text(
        "streams:\n"
        "  cam: {type: pipe, command: [ffmpeg], sample_rate: 16000, restart_max_seconds: 1.0e-9}\n"
        "detections:\n"
        "  alarm: {prompts: [an alarm], cooldown_seconds: .inf, threshold_on: .nan, min_duration_seconds: 1.0e+999}\n"
    )
    result = run_clapd("check-config", str(path), timeout=60)
    assert result.returncode == 2, result.stderr
    for expected in (
        "streams.cam.pipe.restart_max_seconds = 1e-09",
        "detections.alarm.cooldown_seconds = inf: Input should be a finite number",
        "detections.alarm.threshold_on = nan: Input should be a finite number",
        "detections.alarm.min_duration_seconds = inf: Input should be a finite number",
    ):
        assert expected in result.stderr, result.stderr
