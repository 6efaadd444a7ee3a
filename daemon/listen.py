"""`clapd listen`: a live terminal view of what the daemon's own pipeline hears, refreshed every hop.

Not a copy of the daemon: the config is assembled as `clapd run` assembles it (`clapd.daemon.assembly.assemble`),
with the everyday sound descriptions added as hidden detections (`clapd.daemon.everyday`), and the Runner's records
go to one output, `ListenView`, which renders instead of publishing: no MQTT, no stdout lines, no metrics. Each
stream shows a bar per configured detection (the window's score, before smoothing) with its threshold marks (those
of the smoothed score that starts and ends events), its state (ON from an event's start to its end), the three
everyday descriptions that match the window best, and the input level.

The view is drawn with rich's `Live` in the outputs' thread, at most every `MIN_REFRESH_SECONDS` (a file read faster
than real time would otherwise spend its time drawing); log lines go through the same console, above the view.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.logging import RichHandler
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from clapd.daemon.assembly import assemble
from clapd.daemon.config import ClapdConfig, ConfigError, DetectionConfig, load_config
from clapd.daemon.control import CONTROL_FILE, ControlError, ControlStore
from clapd.daemon.demo import default_config, default_state_dir
from clapd.daemon.everyday import everyday_description, with_everyday
from clapd.daemon.manifest import BundleError
from clapd.daemon.output import Output, OutputStats
from clapd.daemon.records import AnomalyReading, DetectionEvent, LevelReading, Scores, StateChange
from clapd.daemon.sources import SourceError

logger = logging.getLogger(__name__)

EXIT_CONFIG = 2  # as `clapd run`: a bad configuration, nothing started
EXIT_STARTUP = 1  # bundle, device or model problems at start-up
EXIT_CRASHED = 3  # the inference loop died
POLL_SECONDS = 0.1  # the main thread's reaction time to Ctrl-C and to the end of every (finite) source
MIN_REFRESH_SECONDS = 0.05  # the view is drawn at most 20 times a second
TOP_MATCHES = 3  # everyday descriptions shown per stream
BAR_CELLS = 40  # a score bar's width: 0 to 1 in steps of 0.025
LEVEL_CELLS = 20  # the level bar's width, LEVEL_FLOOR_DBFS to 0 dBFS
LEVEL_FLOOR_DBFS = -90.0  # the level bar's left end: a quiet room through a good microphone is about -60
FILLED, EMPTY, ON_MARK, OFF_MARK = "█", "·", "┃", "╎"


class ListenView(Output):
    """Renders the records `clapd run` would publish: the latest scores, states and level of every stream."""

    name = "listen"
    wants_scores = True

    def __init__(self, console: Console, header: str = "") -> None:
        self._header = header
        self._live = Live(console=console, auto_refresh=False, transient=False, redirect_stderr=False)
        self._lock = threading.Lock()  # the outputs' thread draws; the main thread announces and stops
        self._streams: list[str] = []
        self._detections: dict[str, DetectionConfig] = {}  # the configured ones, shown as bars
        self._latest: dict[str, Scores] = {}  # stream -> its newest window's scores
        self._on: set[tuple[str, str]] = set()  # (stream, detection) pairs with an event in progress
        self._levels: dict[str, float] = {}  # stream -> dBFS, from level readings when the scores carry none
        self._anomaly: dict[str, float] = {}  # stream -> its latest published anomaly score
        self._next_draw = 0.0  # monotonic
        self._drawn = 0
        self._started = self._stopped = False

    def start(self) -> None:
        with self._lock:
            self._live.start()
            self._started = True
            self._draw(force=True)

    def stop(self, timeout: float = 2.0) -> None:
        """The last view stays on the terminal."""
        with self._lock:
            if self._stopped or not self._started:
                return
            self._draw(force=True)
            self._stopped = True
            self._live.stop()

    def publish_event(self, event: DetectionEvent) -> None:
        """Nothing to draw: the state shows an event in progress."""

    def publish_state(self, change: StateChange) -> None:
        with self._lock:
            pair = (change.stream, change.detection)
            (self._on.add if change.on else self._on.discard)(pair)
            if change.detection in self._detections:
                self._draw(force=True)  # rare; it follows its window's scores: shown now, not a hop later

    def publish_level(self, reading: LevelReading) -> None:
        with self._lock:
            self._levels[reading.stream] = reading.dbfs

    def publish_anomaly(self, reading: AnomalyReading) -> None:
        with self._lock:
            self._anomaly[reading.stream] = reading.score

    def publish_scores(self, scores: Scores) -> None:
        with self._lock:
            self._latest[scores.stream] = scores
            if scores.level_dbfs is not None:
                self._levels[scores.stream] = scores.level_dbfs
            self._draw()

    def announce(self, streams: Sequence[str], detections: Mapping[str, DetectionConfig]) -> None:
        """The streams and the detections to draw (the everyday ones are ranked, not drawn as bars)."""
        with self._lock:
            self._streams = list(streams)
            self._detections = {n: c for n, c in detections.items() if everyday_description(n) is None}
            self._draw(force=True)

    def stats(self) -> OutputStats:
        with self._lock:
            return OutputStats(sent=self._drawn, dropped=0)

    def _draw(self, *, force: bool = False) -> None:
        """Under the lock."""
        now = time.monotonic()
        if not self._started or self._stopped or (now < self._next_draw and not force):
            return
        self._next_draw = now + MIN_REFRESH_SECONDS
        self._live.update(self._render(), refresh=True)
        self._drawn += 1

    def _render(self) -> RenderableType:
        panels: list[RenderableType] = [Text(self._header, style="bold")] if self._header else []
        for stream in self._streams:
            latest = self._latest.get(stream)
            detections = {n: c for n, c in self._detections.items() if c.streams is None or stream in c.streams}
            on = {d for s, d in self._on if s == stream}
            body = stream_table(latest, detections, on) if latest is not None else Text("waiting for audio…")
            title = stream_title(stream, self._levels.get(stream), self._anomaly.get(stream))
            panels.append(Panel(body, title=title, title_align="left", expand=False))
        return Group(*panels)


def stream_title(stream: str, level_dbfs: float | None, anomaly: float | None = None) -> Text:
    """The stream's name, input level and (with anomaly scores on) anomaly: `kitchen  level -41.5 dBFS ███···`."""
    title = Text(f" {stream}  ", style="bold")
    if level_dbfs is None:
        title.append("level —")
    else:
        share = (max(level_dbfs, LEVEL_FLOOR_DBFS) - LEVEL_FLOOR_DBFS) / -LEVEL_FLOOR_DBFS
        filled = min(LEVEL_CELLS, round(share * LEVEL_CELLS))
        title.append(f"level {level_dbfs:6.1f} dBFS ")
        title.append(FILLED * filled, style="cyan").append(EMPTY * (LEVEL_CELLS - filled), style="dim")
    if anomaly is not None:
        title.append(f"  anomaly {anomaly:.2f}")
    return title.append(" ")


def stream_table(scores: Scores, detections: Mapping[str, DetectionConfig], on: set[str]) -> RenderableType:
    """A row per configured detection that scores this stream, then the best everyday matches."""
    table = Table.grid(padding=(0, 1))
    for column in ("detection", "score", "bar", "state"):
        table.add_column(column, no_wrap=True, justify="right" if column == "score" else "left")
    for name, config in detections.items():
        score = scores.values.get(name)
        if score is None:
            continue
        state = Text("ON", style="bold red") if name in on else Text("off", style="dim")
        table.add_row(name, f"{score:.2f}", score_bar(score, config), state)
    return Group(table, top_matches(scores))


def score_bar(score: float, config: DetectionConfig) -> Text:
    """0 to 1 in BAR_CELLS cells, with threshold_off (`╎`) and threshold_on (`┃`) marked where they fall (an `auto`
    threshold is drawn as calibrated: the view is given the detections as tracked)."""
    filled = round(min(max(score, 0.0), 1.0) * BAR_CELLS)
    marks = {}
    for threshold, mark in ((config.threshold_off, OFF_MARK), (config.threshold_on, ON_MARK)):
        if isinstance(threshold, float):
            marks[min(BAR_CELLS - 1, int(threshold * BAR_CELLS))] = mark  # threshold_on wins a shared cell
    on = config.threshold_on if isinstance(config.threshold_on, float) else 1.0
    colour = "red" if score >= on else "yellow" if score >= config.threshold_off else "green"
    bar = Text()
    for cell in range(BAR_CELLS):
        if cell in marks:
            bar.append(marks[cell], style="bold magenta")
        else:
            bar.append(FILLED if cell < filled else EMPTY, style=colour if cell < filled else "dim")
    return bar


def top_matches(scores: Scores, count: int = TOP_MATCHES) -> Text:
    """The everyday descriptions this window matches best: `hears  a siren wailing 0.97 · ...`."""
    everyday = [(d, s) for n, s in scores.values.items() if (d := everyday_description(n)) is not None]
    best = sorted(everyday, key=lambda item: (-item[1], item[0]))[:count]
    line = Text("hears  ", style="bold")
    for i, (description, score) in enumerate(best):
        line.append(" · " if i else "").append(description, style="bold" if i == 0 else "").append(f" {score:.2f}")
    return line


def listening_config(config: ClapdConfig, stream: str | None) -> ClapdConfig:
    """The config with the everyday sounds added as hidden detections; with `stream`, that stream only (and the
    detections that watch it)."""
    if stream is not None:
        if stream not in config.streams:
            raise ConfigError("--stream", [f"{stream!r} is not a stream of the config ({', '.join(config.streams)})"])
        detections = {
            name: detection.model_copy(update={"streams": None if detection.streams is None else [stream]})
            for name, detection in config.detections.items()
            if detection.streams is None or stream in detection.streams
        }
        config = config.model_copy(update={"streams": {stream: config.streams[stream]}, "detections": detections})
    return with_everyday(config)


def listen(config_path: Path | None, stream: str | None = None, *, verbose: bool = False) -> int:
    """Assemble the config as `clapd run` does, with a `ListenView` as the only output; until Ctrl-C (exit 0) or the
    end of every (finite) source."""
    console = Console()
    _log_through(console, verbose)
    try:
        config = listening_config(_config(config_path), stream)
    except ConfigError as e:
        print(f"{e.source}: {len(e.problems)} problem(s); nothing started", file=sys.stderr)
        for problem in e.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    view = ListenView(console, _header(config))
    try:
        assembly = assemble(config, outputs=[view])
    except (BundleError, SourceError, OSError, ValueError) as e:
        print(f"clapd listen: {e}", file=sys.stderr)
        return EXIT_STARTUP
    except KeyboardInterrupt:  # Ctrl-C while the model loads
        return 0
    runner = assembly.runner
    view.announce(list(config.streams), runner.tracked_detections)
    stop = _stop_on_signals()
    runner.start()
    try:
        while runner.running() and not stop.is_set():
            stop.wait(POLL_SECONDS)
    finally:
        runner.stop()
    return EXIT_CRASHED if runner.crashed else 0


def _config(path: Path | None) -> ClapdConfig:
    """The config file with the detection changes saved over MQTT or from the web page laid over it, as `clapd run`
    has them (only while one of those is on); none: the embedded demo, as `clapd run` without a config."""
    if path is None:
        return default_config(default_state_dir())
    config = load_config(path)
    if config.takes_control_requests:
        try:
            merged = ControlStore(config.state_dir / CONTROL_FILE).merge(dict(config.detections), list(config.streams))
        except ControlError as e:
            raise ConfigError(e.source, e.problems) from e
        config = config.model_copy(update={"detections": merged})
    return config


def _header(config: ClapdConfig) -> str:
    shown = sum(everyday_description(name) is None for name in config.detections)
    windows = config.windows
    return (
        f"clapd listen: {len(config.streams)} stream(s), {shown} detection(s), "
        f"{windows.window_seconds:g} s windows every {windows.hop_seconds:g} s. Ctrl-C quits"
    )


def _log_through(console: Console, verbose: bool) -> None:
    """Log lines above the live view, through its console (a plain handler would write across it)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(RichHandler(console=console, show_path=False, markup=False))
    root.setLevel(logging.INFO if verbose else logging.WARNING)


def _stop_on_signals() -> threading.Event:
    """SIGINT (Ctrl-C) and SIGTERM set the event; the main loop stops the runner."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    return stop
