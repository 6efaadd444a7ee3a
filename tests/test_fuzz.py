"""Fuzzing the two places that read untrusted documents: the config loader and the MQTT control payloads.

Whatever comes in, the answer is a clear error, never a crash: the config loader raises only `ConfigError`, each
problem naming a key path; the control parser returns a request or a refusal listing its problems.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from clapd.daemon.config import ClapdConfig, ConfigError, DetectionConfig, load_config, parse_config
from clapd.daemon.control import ControlError, ControlRequest, ControlResult, apply_request, parse_request

FUZZ = settings(max_examples=200, deadline=None, database=None)

VALID_CONFIG: dict = {
    "model": {"precision": "auto", "providers": ["cuda", "cpu"], "tensorrt": {"fp16": False}, "threads": 2},
    "windows": {"window_seconds": 5, "hop_seconds": 1},
    "streams": {
        "kitchen": {"type": "mic", "device": "default", "channels": 1},
        "door": {"type": "file", "path": "/tmp/door.wav", "realtime": False},
        "cam": {"type": "pipe", "command": ["ffmpeg", "-i", "rtsp://cam"], "sample_rate": 16000},
    },
    "detections": {
        "smoke": {"prompts": ["a smoke alarm"], "threshold_on": 0.6, "threshold_off": 0.4, "streams": ["kitchen"]},
        "dog": {"prompts": ["a dog barking"], "negative_prompts": ["a cat"], "cooldown_seconds": 5},
    },
    "background_prompts": ["silence"],
    "outputs": {
        "mqtt": {
            "host": "broker",
            "username": "clapd",
            "password_env": "PW",
            "tls": {"ca_file": "/etc/ca.pem"},
            "home_assistant": {"enabled": True, "node_id": "den"},
            "control": {"enabled": True},
            "level_interval_seconds": 5,
        },
        "stdout": False,
    },
    "state_dir": "/var/lib/clapd",
    "metrics": {"enabled": True, "port": 9847},
    "logging": {"level": "info", "format": "json"},
}
TOP_KEYS = list(ClapdConfig.model_fields)

WEIRD_STRINGS = st.sampled_from(
    ["", " ", "a/b", "+", "#", "$SYS", "\0", "é", "💥", "../..", "true", "null", "1e999", "-0", "x" * 300, "a\nb"]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | WEIRD_STRINGS
)
KEYS = st.text(max_size=12) | st.sampled_from([*TOP_KEYS, "type", "prompts", "mqtt", "host", "streams", "kitchen"])
DOCUMENTS = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=25,
)


def check_problems(problems: list[str], first_keys: list[str]) -> None:
    """Each problem names a key path that starts at a key of the document (or the top level) and gives a reason."""
    assert problems
    for problem in problems:
        assert problem == "the top level must be a mapping" or any(
            problem.startswith(f"{key}.") or problem.startswith(f"{key} = ") or problem.startswith(f"{key}: ")
            for key in [*first_keys, "(top level)"]
        ), problem


def parse_or_problems(data: object) -> None:
    try:
        parse_config(data)
    except ConfigError as e:
        keys = [str(k) for k in data] if isinstance(data, dict) else []
        check_problems(e.problems, [*keys, *TOP_KEYS])


@FUZZ
@given(DOCUMENTS)
def test_random_documents(data: object) -> None:
    parse_or_problems(data)
    parse_or_problems({**VALID_CONFIG, "detections": data})
    parse_or_problems({**VALID_CONFIG, "streams": data})


@st.composite
def mutated_configs(draw: st.DrawFn) -> tuple[dict, list[str]]:
    """The valid config with one value replaced, one key deleted or one unknown key added, somewhere in it."""
    config = copy.deepcopy(VALID_CONFIG)
    node, path = config, []
    while True:
        keys = sorted(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = draw(st.sampled_from(keys))
        if not isinstance(node[key], dict | list) or draw(st.booleans()):
            break
        node, path = node[key], [*path, str(key)]
    change = draw(st.sampled_from(["replace", "delete", "add"]))
    if change == "replace" and keys:
        node[key] = draw(DOCUMENTS)
    elif change == "delete" and keys:
        del node[key]
    elif isinstance(node, dict):
        node[draw(st.text(min_size=1, max_size=10))] = draw(SCALARS)
    return config, path


@FUZZ
@given(mutated_configs())
def test_mutated_configs(mutation: tuple[dict, list[str]]) -> None:
    config, _ = mutation
    parse_or_problems(config)


@FUZZ
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode) | DOCUMENTS.map(lambda d: yaml.dump(d).encode()))
def test_random_files(tmp_path_factory: pytest.TempPathFactory, content: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz", numbered=True) / "config.yaml"
    path.write_bytes(content)
    try:
        load_config(path)
    except ConfigError as e:
        assert e.source == str(path) and e.problems and all(p.strip() for p in e.problems)


def test_hostile_files(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    for content in [
        b"\xff\xfe\x00",
        b"[" * 1000,
        b"a: " + b"1" * 5000,
        b"&a [*a, *a]",
        b"a: !!python/name:os.system",
    ]:
        path.write_bytes(content)
        with pytest.raises(ConfigError):
            load_config(path)


# --- control payloads ---

VALID_REQUESTS = [
    {"request_id": "r1", "action": "set", "detection": "glass", "config": {"prompts": ["glass"], "threshold_on": 0.7}},
    {"action": "update", "detection": "smoke", "config": {"threshold_off": 0.2, "streams": None}},
    {"action": "remove", "detection": "dog"},
]
DETECTIONS = {
    "smoke": DetectionConfig(prompts=["a smoke alarm"], threshold_on=0.6, threshold_off=0.4),
    "dog": DetectionConfig(prompts=["a dog barking"], streams=["kitchen"]),
}
STREAMS = ["kitchen", "hall"]


def answer(payload: bytes, *, retained: bool = False) -> ControlRequest | ControlResult:
    outcome = parse_request(payload, retained=retained)
    if isinstance(outcome, ControlResult):
        assert not outcome.ok and outcome.errors and all(e.strip() for e in outcome.errors)
        json.loads(outcome.to_json())  # publishable
    else:
        try:  # what the daemon then does with it: applied, or refused with every problem
            apply_request(DETECTIONS, outcome, STREAMS)
        except ControlError as e:
            assert e.problems and all(p.strip() for p in e.problems)
    return outcome


@FUZZ
@given(st.binary(max_size=400), st.booleans())
def test_random_control_bytes(payload: bytes, retained: bool) -> None:
    assert isinstance(answer(payload, retained=retained), ControlResult)


@st.composite
def mutated_requests(draw: st.DrawFn) -> dict:
    request = copy.deepcopy(draw(st.sampled_from(VALID_REQUESTS)))
    node = request
    if "config" in request and draw(st.booleans()):
        node = request["config"]
    change = draw(st.sampled_from(["replace", "delete", "add"]))
    keys = sorted(node)
    if change == "replace":
        node[draw(st.sampled_from(keys))] = draw(DOCUMENTS)
    elif change == "delete":
        del node[draw(st.sampled_from(keys))]
    else:
        node[draw(st.text(max_size=10) | st.sampled_from(sorted(DetectionConfig.model_fields)))] = draw(DOCUMENTS)
    return request


@FUZZ
@given(mutated_requests())
def test_mutated_control_requests(request: dict) -> None:
    outcome = answer(json.dumps(request).encode())  # NaN and Infinity included: Python's JSON reads them
    if isinstance(outcome, ControlResult):
        keys = ["(payload)", "(message)", *ControlRequest.model_fields, *map(str, request)]
        for error in outcome.errors:
            assert any(error.startswith(k) for k in keys), error


@FUZZ
@given(DOCUMENTS)
def test_random_json_documents(document: object) -> None:
    answer(json.dumps(document).encode())


@FUZZ
@given(
    st.sampled_from(["set", "update"]),
    st.dictionaries(st.text(max_size=8) | st.sampled_from(sorted(DetectionConfig.model_fields)), DOCUMENTS, max_size=5),
)
def test_requests_built_in_code(action: str, config: dict) -> None:
    """A request that skipped `parse_request` is still only ever applied or refused with its problems."""
    try:
        apply_request(DETECTIONS, ControlRequest(action=action, detection="dog", config=config), STREAMS)
    except ControlError as e:
        assert e.problems and all(p.startswith(("config", "detection")) for p in e.problems), e.problems
