"""The local web page (issue 13, item 4) on real parts: `clapd run` on a planted demo stream serves the page, and a
real headless Chromium (Debian's, driven by playwright) loads it: the live scores change, the planted sound's event
appears with a clip the browser plays, a search finds the planted sound's time range, and the per-event buttons
enrol the audio of its two events through the daemon's control path (MQTT control off): the older one's from its clip
file, the latest one's from the ring. Beyond loopback a token is required; clip
URLs serve nothing outside the clips folder; a config that would listen beyond loopback without a token is refused.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
import yaml
from helpers import run_clapd, stop_daemon

import clapd
from clapd.daemon.config import DetectionConfig
from clapd.daemon.control import ControlRequest, ControlResult, parse_request
from clapd.daemon.demo import DEMO_DETECTIONS, DEMO_WINDOWS, demo_detections
from clapd.daemon.records import DetectionEvent
from clapd.daemon.web.app import event_json
from clapd.daemon.web.channel import WebControlChannel
from clapd.daemon.web.live import LiveEvent, LiveView
from clapd.daemon.web.queries import Clips
from clapd.models.demo_stream import PlannedEvent, make_demo_stream

try:
    from playwright import sync_api as playwright
except ImportError:  # a dev dependency: only the browser test needs it
    playwright = None

CHROMIUM = Path("/usr/bin/chromium")  # Debian's chromium (scripts/setup.sh); playwright never downloads one
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DEMO_BUNDLE = Path(clapd.__file__).parent / "demo_bundle"
GLASS = PlannedEvent("glass_breaking", 10.0, 12.0)  # late enough for the browser to be up before it sounds
GLASS_AGAIN = PlannedEvent("glass_breaking", 20.0, 22.0)  # a second event: the first is then no longer the latest
GLASSES = (GLASS, GLASS_AGAIN)
STREAM_SECONDS = 60.0  # read in real time: the daemon runs while the browser looks (the test stops it sooner)
TOKEN = "web-test-token-0123456789abcdef"
START_SECONDS = 60.0  # model load and warm-up on a busy machine
EVENT_SECONDS = 45.0  # the planted sound is heard 10 s in; its clip is written 1 s after its end
SCREENSHOTS = os.environ.get("CLAPD_WEB_SCREENSHOTS")  # a folder (docs/) to copy the screenshots into
T = TypeVar("T")

needs_browser = pytest.mark.skipif(
    playwright is None or not CHROMIUM.exists(), reason="needs playwright and Debian's chromium (scripts/setup.sh)"
)


def write_config(tmp_path: Path, web: dict, wav: Path, **sections: object) -> Path:
    """The demo detections on one file stream read in real time; clips for glass_breaking; the page on `web`."""
    detections = demo_detections()
    detections["glass_breaking"]["clips"] = {"pre_roll_seconds": 1.0, "post_roll_seconds": 1.0}
    config = {
        "model": {"bundle": str(DEMO_BUNDLE), "providers": ["cpu"], "threads": 1},
        "windows": DEMO_WINDOWS,
        "streams": {"kitchen": {"type": "file", "path": str(wav), "realtime": True}},
        "detections": detections,
        "state_dir": str(tmp_path / "state"),
        "outputs": {"stdout": True},
        "web": {"enabled": True, "port": 0, **web},
        **sections,
    }
    path = tmp_path / "clapd.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def glass_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    stream = make_demo_stream(seed=21, seconds=STREAM_SECONDS, events=list(GLASSES))
    return stream.write_wav(tmp_path_factory.mktemp("audio") / "glass.wav")


def wait_for(what: str, seconds: float, probe: Callable[[], T | None]) -> T:
    """`probe()` until it gives something other than None (or False), at most `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = probe()
        if found is not None and found is not False:
            return found
        time.sleep(0.1)
    raise AssertionError(f"no {what} within {seconds:g} s")


class Daemon:
    """`clapd run` with stdout and stderr in files; `port`: the page's, from the log line that names it."""

    def __init__(self, config: Path, tmp_path: Path, **env: str) -> None:
        self.out, self.log = tmp_path / "stdout.jsonl", tmp_path / "clapd.log"
        with self.out.open("w") as out, self.log.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "clapd", "-v", "run", "-c", str(config)],
                stdout=out,
                stderr=log,
                env=dict(os.environ, **env),
                text=True,
            )

    def port(self) -> int:
        def listening() -> int | None:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            found = re.search(r"web page on http://\S+:(\d+)/", self.log.read_text())
            return int(found[1]) if found else None

        return wait_for("web page", START_SECONDS, listening)

    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.out.read_text().splitlines() if line.startswith("{")]

    def stop(self) -> str:
        if self.process.poll() is not None:
            return self.log.read_text()
        stop_daemon(self.process)
        return self.log.read_text()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait(10)


def get(port: int, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    """A request with the path sent exactly as given (no client-side normalisation of `..` or escapes)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    response.body = response.read()  # type: ignore[attr-defined]
    connection.close()
    return response


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text)


@needs_browser
def test_the_page_in_a_browser(tmp_path: Path, glass_wav: Path, daemons: list[Daemon]) -> None:
    config = write_config(tmp_path, {}, glass_wav, history={"enabled": True, "flush_seconds": 1})
    daemon = Daemon(config, tmp_path)
    daemons.append(daemon)
    port = daemon.port()
    shots = tmp_path / "shots"
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/")
            check_live_scores_change(page)
            if glass_is_on(page):  # a picture of the page while the sound is heard, if the poll shows it ON
                page.screenshot(path=shots / "web-live.png", full_page=True)
            clip_url = check_event_with_playable_clip(page, port)
            check_search_finds_the_glass(page, daemon, tmp_path / "state")
            check_buttons_enrol_the_event(page, tmp_path / "state")
            page.screenshot(path=shots / "web-page.png", full_page=True)
        finally:
            browser.close()
    assert get(port, f"/{clip_url}").status == 200
    check_clip_urls_serve_only_clips(port)
    log = daemon.stop()
    assert daemon.process.returncode == 0, log[-3000:]
    ends = [e for e in daemon.events() if e.get("kind") == "end" and e.get("detection") == "glass_breaking"]
    assert ends and ends[0]["clip_url"] == f"http://127.0.0.1:{port}/{clip_url}"  # the end event links the page
    assert (shots / "web-page.png").exists()
    for shot in shots.glob("*.png"):
        assert shot.stat().st_size > 10_000
        if SCREENSHOTS:
            shutil.copy(shot, Path(SCREENSHOTS) / shot.name)


def check_live_scores_change(page: playwright.Page) -> None:
    """The bars are drawn for every detection, and the scores shown change from hop to hop."""
    page.wait_for_selector('.stream[data-stream="kitchen"] .detection[data-detection="glass_breaking"]')
    assert page.locator(".stream .detection").count() == len(DEMO_DETECTIONS)
    scores = page.locator(".stream .detection .score")
    seen: set[str] = set()

    def changed() -> bool:
        shown = " ".join(scores.all_text_contents())
        if "–" not in shown:  # every detection scored
            seen.add(shown)
        return len(seen) >= 2

    wait_for("change of the live scores", 40, changed)  # at the latest when the glass sounds
    first = int(page.evaluate("document.body.dataset.windows"))
    wait_for("window scored", 10, lambda: int(page.evaluate("document.body.dataset.windows")) > first)


def glass_is_on(page: playwright.Page) -> bool:
    """Whether the page showed the glass detection ON (its event lasts about a second: a slow poll may miss it)."""
    try:
        page.wait_for_selector('.detection[data-detection="glass_breaking"] .state.on', timeout=EVENT_SECONDS * 1000)
    except playwright.TimeoutError:
        return False
    return True


def check_event_with_playable_clip(page: playwright.Page, port: int) -> str:
    """The planted glass's event is listed with an audio player whose clip the browser decodes (duration > 0),
    served as FLAC."""
    page.wait_for_selector("#events tbody tr audio", timeout=EVENT_SECONDS * 1000)
    row = page.locator("#events tbody tr").filter(has=page.locator("audio")).first
    assert "glass_breaking" in (row.text_content() or "")
    duration = page.evaluate(
        """() => new Promise((resolve) => {
            const audio = document.querySelector('#events tbody tr audio');
            if (audio.readyState >= 1) resolve(audio.duration);
            audio.addEventListener('loadedmetadata', () => resolve(audio.duration));
            audio.addEventListener('error', () => resolve(-1));
            audio.load();
        })"""
    )
    assert duration > 1.0, duration  # pre-roll 1 s + the event + post-roll 1 s
    url = row.locator("audio").get_attribute("src")
    assert url is not None and url.startswith("clips/kitchen.glass_breaking.")
    response = get(port, f"/{url}")
    assert response.status == 200 and response.getheader("content-type") == "audio/flac"
    assert response.body.startswith(b"fLaC")  # type: ignore[attr-defined]
    return url


def history_reaches(path: Path, when: datetime) -> bool:
    """The daemon's history holds windows starting after `when` (its writer flushes every second)."""
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)) as db:
            (last,) = db.execute("SELECT max(last_utc) FROM batches").fetchone()
    except sqlite3.Error:  # not created yet
        return False
    return last is not None and last > when.timestamp()


def check_search_finds_the_glass(page: playwright.Page, daemon: Daemon, state: Path) -> None:
    """The best time range for "glass breaking" holds one of the planted sounds (placed by the stream's own clock)."""
    end = next(e for e in daemon.events() if e["kind"] == "end" and e["detection"] == "glass_breaking")
    anchor = utc(end["start_utc"]) - timedelta(seconds=end["start_offset_seconds"])  # the stream's sample 0
    planted = [(anchor + timedelta(seconds=g.start_s), anchor + timedelta(seconds=g.end_s)) for g in GLASSES]
    wait_for("history past the glass", 30, lambda: history_reaches(state / "history.sqlite3", planted[-1][1]))
    page.fill("#q", "glass breaking")
    page.select_option("#since", "1h")
    page.click("#search-form button[type=submit]")
    page.wait_for_selector("#results tbody tr", timeout=30_000)
    first = page.locator("#results tbody tr").first.locator("td")
    start, stop = (utc(first.nth(i).text_content().replace(" ", "T") + "+00:00") for i in (0, 1))
    assert any(start < until and stop > since for since, until in planted), (start, stop, planted)
    assert first.nth(2).text_content() == "kitchen"


def check_buttons_enrol_the_event(page: playwright.Page, state: Path) -> None:
    """ "mark as a false alarm" on the older glass event (its audio from its clip file) and "use as an example" on
    the latest (from the ring): each answered ok by the control path, its example file written and kept in
    control.json (MQTT control is off in this config)."""
    rows = page.locator("#events tbody tr").filter(has=page.locator("audio"))
    wait_for("both glass events with clips", EVENT_SECONDS, lambda: rows.count() >= 2)
    latest, older = rows.nth(0), rows.nth(1)  # newest first
    for row, button, label in ((older, "false-alarm", "false alarm"), (latest, "enrol", "use as an example")):
        assert row.locator(f"button.{button}").is_visible(), label
        row.locator(f"button.{button}").click()
        result = row.locator(".result")
        answer = wait_for(f"{label} result", 30, lambda result=result: _answered(result.text_content() or ""))
        assert answer.startswith(f"{label}: done"), answer
    folder = state / "examples" / "glass_breaking"
    assert len(list(folder.glob("kitchen-*-positive.flac"))) == 1
    assert len(list(folder.glob("kitchen-*-negative.flac"))) == 1
    saved = json.loads((state / "control.json").read_text())["detections"]["glass_breaking"]
    assert len(saved["examples"]) == 1 and len(saved["negative_examples"]) == 1


def _answered(text: str) -> str | None:
    return text if text and not text.endswith("…") else None


def check_clip_urls_serve_only_clips(port: int) -> None:
    """Paths out of the clips folder, escaped or not, and files there that clapd did not name, are not served."""
    for path in (
        "/clips/..%2Fclapd.yaml",
        "/clips/..%2F..%2Fclapd.yaml",
        "/clips/%2e%2e%2fcontrol.json",
        "/clips/../state/control.json",
        "/clips/..%5Ccontrol.json",
        "/clips/control.json",
        "/static/..%2F..%2Fconfig%2Fweb.py",
        "/static/../app.py",
    ):
        response = get(port, path)
        assert response.status == 404, (path, response.status)
        assert b"glass_breaking" not in response.body and b"prompts" not in response.body  # type: ignore[attr-defined]


def test_beyond_loopback_a_token_is_required(tmp_path: Path, glass_wav: Path, daemons: list[Daemon]) -> None:
    """Bound to every address: no token, or a wrong one, is refused; the header and the cookie (from ?token=) are
    taken; the token never reaches the log."""
    config = write_config(tmp_path, {"host": "0.0.0.0", "token_env": "CLAPD_WEB_TOKEN"}, glass_wav)
    daemon = Daemon(config, tmp_path, CLAPD_WEB_TOKEN=TOKEN)
    daemons.append(daemon)
    port = daemon.port()
    for path in ("/", "/api/live", "/api/events", "/static/app.js"):
        assert get(port, path).status == 401, path
        assert get(port, path, {"Authorization": "Bearer wrong-token-0123456789"}).status == 401, path
        assert get(port, path, {"Authorization": f"Bearer {TOKEN}"}).status == 200, path
    assert get(port, "/?token=wrong-token-0123456789").status == 401
    visit = get(port, f"/?token={TOKEN}")
    assert visit.status == 303 and visit.getheader("location") == "/"
    cookie = visit.getheader("set-cookie")
    assert cookie is not None and "HttpOnly" in cookie and "SameSite=strict" in cookie
    live = get(port, "/api/live", {"Cookie": cookie.split(";")[0]})
    assert live.status == 200 and json.loads(live.body)["streams"][0]["stream"] == "kitchen"  # type: ignore[attr-defined]
    control = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    control.request("POST", "/api/control", body=b"{}", headers={"Content-Type": "application/json"})
    assert control.getresponse().status == 401
    control.close()
    log = daemon.stop()
    assert daemon.process.returncode == 0, log[-3000:]
    assert re.search(r"web page on http://0\.0\.0\.0:\d+/", log)
    assert TOKEN not in log


def test_listening_beyond_loopback_without_a_token_is_a_config_error(tmp_path: Path, glass_wav: Path) -> None:
    config = write_config(tmp_path, {"host": "0.0.0.0"}, glass_wav)
    result = run_clapd("run", "-c", str(config), timeout=120)
    assert result.returncode == 2, result.stderr
    assert "web: Value error, host = '0.0.0.0' listens beyond loopback: set token_file or token_env" in result.stderr


def test_an_unset_token_variable_stops_the_start(tmp_path: Path, glass_wav: Path) -> None:
    config = write_config(tmp_path, {"host": "0.0.0.0", "token_env": "CLAPD_WEB_TOKEN_UNSET"}, glass_wav)
    env = {k: v for k, v in os.environ.items() if k != "CLAPD_WEB_TOKEN_UNSET"}
    result = subprocess.run(
        [sys.executable, "-m", "clapd", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "web.token_env: the environment variable CLAPD_WEB_TOKEN_UNSET is not set" in result.stderr


def test_a_port_in_use_stops_the_start_naming_the_keys(tmp_path: Path, glass_wav: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, {"port": port}, glass_wav)
        result = run_clapd("run", "-c", str(config), timeout=120)
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"web: cannot listen on 127.0.0.1:{port} (web.host, web.port)" in result.stderr


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"action": "enrol", "detection": "d", "stream": "s", "event_id": "e1"}, None),
        ({"action": "false_alarm", "detection": "d", "stream": "s", "event_id": "e1"}, None),
        (
            {"action": "enrol", "detection": "d", "stream": "s", "event_id": "e1", "last_seconds": 3},
            "last_seconds: enrol takes last_seconds or event_id, not both",
        ),
        ({"action": "enrol", "detection": "d", "stream": "s"}, "last_seconds: enrol needs last_seconds"),
        ({"action": "forget_example", "detection": "d", "file": "f", "event_id": "e1"}, "event_id: forget_example"),
    ],
)
def test_an_event_id_names_the_audio_of_enrol_and_false_alarm(fields: dict, problem: str | None) -> None:
    outcome = parse_request(json.dumps(fields).encode())
    if problem is None:
        assert isinstance(outcome, ControlRequest) and outcome.event_id == "e1"
    else:
        assert isinstance(outcome, ControlResult) and any(e.startswith(problem) for e in outcome.errors), outcome


def test_the_web_channel_takes_only_the_buttons_actions() -> None:
    channel = WebControlChannel()
    channel.listen(lambda request: channel.answer(ControlResult.success(request, "x.flac")))
    assert channel.submit({"action": "remove", "detection": "d"}).errors == [
        "action = 'remove': the web page takes only enrol, false_alarm"
    ]
    refused = channel.submit({"action": "enrol", "detection": "d", "stream": "s"})
    assert not refused.ok and refused.errors == ["last_seconds: enrol needs last_seconds"]
    answered = channel.submit({"action": "false_alarm", "detection": "d", "event_id": "e1"})
    assert answered.ok and answered.example == "x.flac"
    channel.close()
    assert channel.submit({"action": "false_alarm", "detection": "d"}).errors[0].startswith("(daemon): not accepting")


def test_only_each_pairs_latest_event_can_be_taught() -> None:
    """The buttons show on each (stream, detection)'s latest event of this run, of a detection that takes examples."""
    view = LiveView(max_events=10)
    detections = {
        "glass": DetectionConfig(prompts=["glass breaking"]),
        "loud": DetectionConfig(level={"above_dbfs": -20}),
    }
    view.announce(["kitchen", "hall"], detections)

    def event(event_id: str, stream: str, detection: str, start: str) -> DetectionEvent:
        start_utc = f"2026-12-01T10:00:{start}.000+00:00"
        return DetectionEvent(event_id, "start", stream, detection, 0, None, start_utc, None, 0.9, 0.9, 48_000)

    for args in [("a", "kitchen", "glass", "01"), ("b", "kitchen", "glass", "05"), ("c", "hall", "glass", "03")]:
        view.publish_event(event(*args))
    view.publish_event(event("d", "kitchen", "loud", "07"))
    view.publish_event(event("e", "kitchen", "rumble", "08"))  # an anomaly event: no detection of that name
    assert view.teachable() == {"b", "c"}
    assert view.taking_examples() == {"glass"}
    assert [e.event_id for e in view.events()] == ["e", "d", "c", "b", "a"]


def test_an_older_event_with_a_clip_file_can_be_taught(tmp_path: Path) -> None:
    """Beyond each pair's latest event (whose audio the ring holds), the buttons show on every event whose clip file
    is kept, of a detection that takes examples: the daemon reads its audio there."""
    clips = Clips(tmp_path)
    kinds = {"0a": "glass", "0b": "glass", "0c": "loud"}
    names = {event_id: f"kitchen.{kind}.20261201T100001.000Z.{event_id}.flac" for event_id, kind in kinds.items()}
    for event_id in ("0a", "0c"):  # 0b's clip is not (or no longer) on disk
        (tmp_path / names[event_id]).write_bytes(b"fLaC")

    def shown(event_id: str, latest: set[str]) -> dict:
        clip = str(tmp_path / names[event_id])
        event = LiveEvent(event_id, "kitchen", kinds[event_id], "2026-12-01T10:00:02.000+00:00", None, 0.9, clip)
        return event_json(event, clips, latest, {"glass"})

    assert shown("0a", set())["teachable"] and shown("0a", set())["clip_url"] == f"clips/{names['0a']}"
    assert not shown("0b", set())["teachable"] and shown("0b", {"0b"})["teachable"]  # the latest: from the ring
    assert not shown("0c", set())["teachable"]  # a level detection takes no examples
