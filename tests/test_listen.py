"""`clapd listen` in a real terminal (tmux): the bars with their threshold marks, the level, the right everyday match
while a planted demo sound plays, and a clean exit on Ctrl-C; and the everyday detections it adds leave the
configured detections' scores as they were."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import run_clapd

import clapd
from clapd.daemon.classify import classify, scoring_from
from clapd.daemon.config import parse_config
from clapd.daemon.control import ControlStore
from clapd.daemon.demo import DEMO_EVENT_SETTINGS, DEMO_WINDOWS
from clapd.daemon.everyday import DEMO_CLASS_SOUNDS, EVERYDAY_SOUNDS, with_everyday
from clapd.daemon.listen import OFF_MARK, ON_MARK
from clapd.daemon.listen import _config as listen_config
from clapd.models.demo_stream import PlannedEvent, make_demo_stream

DEMO_BUNDLE = Path(clapd.__file__).parent / "demo_bundle"
TMUX = ("tmux", "-u", "-f", "/dev/null")  # no user config; UTF-8 whatever the locale
SIREN = PlannedEvent("siren", 6.0, 14.0)  # the demo model's most certain sound: top match in every window of it
SECONDS = 16.0  # looped in real time
DETECTIONS = {"siren": "an ambulance siren", "smoke_alarm": "a smoke detector going off"}
WAIT_SECONDS = 120  # for the model to load and the siren to play (each loop of the recording plays it once)


def write_config(tmp_path: Path) -> Path:
    wav = make_demo_stream(seed=31, seconds=SECONDS, events=[SIREN]).write_wav(tmp_path / "siren.wav")
    config = {
        "model": {"bundle": str(DEMO_BUNDLE), "providers": ["cpu"], "threads": 1},
        "windows": DEMO_WINDOWS,
        "streams": {"hall": {"type": "file", "path": str(wav), "loop": True}},
        "detections": {name: {"prompts": [prompt], **DEMO_EVENT_SETTINGS} for name, prompt in DETECTIONS.items()},
        "state_dir": str(tmp_path / "state"),
    }
    path = tmp_path / "clapd.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[tuple[str, ...]]:
    """A tmux server of this test's own (its own socket); killed at the end, whatever happened."""
    if subprocess.run(["which", "tmux"], capture_output=True, check=False).returncode != 0:
        pytest.fail("tmux is not installed (scripts/setup.sh installs it)")
    name = f"clapd-test-{os.getpid()}-{tmp_path.name}"  # a short socket path, whatever TMPDIR is
    command = (*TMUX, "-L", name)
    try:
        yield command
    finally:
        subprocess.run([*command, "kill-server"], capture_output=True, timeout=10, check=False)
        (Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}" / name).unlink(missing_ok=True)


def capture(tmux: tuple[str, ...]) -> str:
    return subprocess.run(
        [*tmux, "capture-pane", "-p", "-t", "listen"], capture_output=True, text=True, timeout=10, check=False
    ).stdout


def exit_status(tmux: tuple[str, ...]) -> str | None:
    """How clapd ended once tmux knows (the pane remains): "exit N" or "signal N"; None while it runs.

    tmux marks the pane dead when its terminal closes and learns the exit status when it reaps the child on SIGCHLD. A
    tmux built with libutempter (Debian's) can miss that SIGCHLD and leave the child a zombie for good (tmux issues
    311 and 4559); a SIGCHLD sent to the server makes it reap."""
    shown = "#{pid},#{pane_dead},#{pane_dead_status},#{pane_dead_signal}"
    server, dead, status, signum = (
        subprocess.run(
            [*tmux, "display-message", "-p", "-t", "listen", shown],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        .stdout.strip()
        .split(",")
    )
    if dead != "1":
        return None
    if not (status or signum):
        os.kill(int(server), signal.SIGCHLD)
        return None
    return f"exit {status}" if status else f"signal {signum}"


def bar_line(screen: str, detection: str) -> str | None:
    """The detection's row: its name, its score, then a bar holding both threshold marks."""
    for line in screen.splitlines():
        match = re.search(rf"\b{detection}\s+(\d\.\d\d)\s+([█·{OFF_MARK}{ON_MARK}]+)\s+(ON|off)", line)
        if match and OFF_MARK in match[2] and ON_MARK in match[2]:
            return line
    return None


def hears(screen: str) -> list[str]:
    """The everyday descriptions in the `hears` line, best first."""
    line = next((line for line in screen.splitlines() if "hears" in line), "")
    return re.findall(r"([a-z][a-z ,'-]*[a-z]) \d\.\d\d", line.split("hears", 1)[-1])


def test_listen_in_a_terminal_shows_bars_level_and_what_plays_and_exits_on_ctrl_c(
    tmp_path: Path, tmux: tuple[str, ...]
) -> None:
    listen = (sys.executable, "-m", "clapd", "listen", "-c", str(write_config(tmp_path)))
    env = dict(os.environ, LANG="C.UTF-8", TERM="xterm-256color")
    subprocess.run([*tmux, "new-session", "-d", "-s", "listen", "-x", "160", "-y", "50", *listen], env=env, check=True)
    # The pane stays when clapd exits, to tell its exit status (clapd takes seconds to load: set in time).
    subprocess.run([*tmux, "set-option", "-t", "listen", "remain-on-exit", "on"], check=True, timeout=10)
    siren = EVERYDAY_SOUNDS[DEMO_CLASS_SOUNDS["siren"]]
    seen = {"bars": False, "level": False, "siren heard": False}
    screen = ""
    deadline = time.monotonic() + WAIT_SECONDS
    while not all(seen.values()) and time.monotonic() < deadline and exit_status(tmux) is None:
        screen = capture(tmux)
        seen["bars"] |= all(bar_line(screen, name) for name in DETECTIONS)
        seen["level"] |= re.search(r"level\s+-\d+\.\d dBFS", screen) is not None
        siren_row = bar_line(screen, "siren") or ""
        # While the siren plays (its detection is ON), its everyday description is among the top three.
        seen["siren heard"] |= siren_row.rstrip(" │").endswith("ON") and siren in hears(screen)[:3]
        time.sleep(0.2)
    assert all(seen.values()), (seen, screen)
    subprocess.run([*tmux, "send-keys", "-t", "listen", "C-c"], check=True, timeout=10)
    deadline = time.monotonic() + 30
    while (status := exit_status(tmux)) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status == "exit 0", (status, capture(tmux))


def test_an_unknown_stream_is_named_and_nothing_starts(tmp_path: Path) -> None:
    result = run_clapd("listen", "-c", str(write_config(tmp_path)), "--stream", "kitchen", timeout=60)
    assert result.returncode == 2
    assert "'kitchen' is not a stream of the config (hall)" in result.stderr


def test_everyday_detections_leave_the_configured_scores_unchanged(tmp_path: Path) -> None:
    config = parse_config(yaml.safe_load(write_config(tmp_path).read_text()))
    plain = classify(tmp_path / "siren.wav", scoring_from(config))
    listening = classify(tmp_path / "siren.wav", scoring_from(with_everyday(config)))
    assert len(listening.prompts) == len(DETECTIONS) + len(EVERYDAY_SOUNDS)
    columns = [listening.prompts.index(name) for name in plain.prompts]
    np.testing.assert_array_equal(listening.scores[:, columns], plain.scores)
    assert [(e.detection, e.kind, e.start_sample) for e in plain.events] == [
        (e.detection, e.kind, e.start_sample) for e in listening.events if e.detection in DETECTIONS
    ]


def test_listen_lays_saved_control_changes_over_the_file_when_the_web_page_alone_takes_them(tmp_path: Path) -> None:
    """As `clapd run` does: changes saved from the web page's buttons (no MQTT) apply; with no channel on, not."""
    config = {
        "model": {"bundle": str(DEMO_BUNDLE), "providers": ["cpu"]},
        "streams": {"room": {"type": "file", "path": str(tmp_path / "room.wav")}},
        "detections": {"siren": {"prompts": ["an ambulance siren"]}},
        "state_dir": str(tmp_path / "state"),
        "web": {"enabled": True},
    }
    path = tmp_path / "clapd.yaml"
    path.write_text(yaml.safe_dump(config))
    base = parse_config(config).detections
    changed = {"siren": base["siren"].model_copy(update={"threshold_on": 0.91})}
    (tmp_path / "state").mkdir()
    ControlStore(tmp_path / "state" / "control.json").save(changed, base)
    assert listen_config(path).detections["siren"].threshold_on == 0.91
    path.write_text(yaml.safe_dump({**config, "web": {"enabled": False}}))
    assert listen_config(path).detections["siren"].threshold_on != 0.91
