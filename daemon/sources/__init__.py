"""Capture sources: each delivers one stream's audio, mono float32 at the model's rate, into that stream's ring.

The rate is the model bundle's (`Manifest.sample_rate`), given to `build_source`; each source resamples to it.

A source owns its own thread(s) and recovers on its own: a lost or stalled microphone is reopened, a dead or
stalled pipe command is restarted, both with exponential back-off, counted in `status()` (each loss is one outage,
and the state leaves "running" until audio flows again). Start-up problems (no such device, file or command) raise
`SourceError` from `start()`, so the daemon fails fast with the message; `command_problems` finds the pipe commands
that cannot run without starting anything (`clapd check-config`).

A pipe's command runs in `child_environment`: the daemon's environment less its secrets.

The concrete sources are imported lazily by `build_source`, so a daemon without a microphone never loads
PortAudio.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from clapd.daemon.config import FileSource, MicSource, PipeSource

if TYPE_CHECKING:
    from clapd.daemon.ring import RingBuffer

SourceState = Literal["stopped", "running", "restarting", "finished", "failed"]

OWN_ENV_PREFIX = "CLAPD_"  # clapd's own variables (its secrets among them) are not handed to commands
SYSTEMD_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")  # systemd's messages are the daemon's to send


class SourceError(RuntimeError):
    """A source that cannot start: the message says what is missing and what exists instead."""


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """One source's health, for logs, the status topic and tests."""

    name: str
    state: SourceState  # "finished": a file source reached its end; "failed": gave up, last_error says why
    restarts: int  # attempts to reopen the device / respawns of the command since start()
    outages: int  # separate times the source was lost (a microphone gone, a command dead)
    last_error: str | None
    overruns: int  # times audio was dropped: device overflows and ring overruns
    samples_written: int  # samples at the model's rate delivered to the ring since start


class Source(Protocol):
    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def status(self) -> SourceStatus: ...


class Backoff:
    """Exponential back-off: `initial`, doubling up to `maximum` seconds; `reset()` after a healthy run."""

    __slots__ = ("initial", "maximum", "_next")

    def __init__(self, initial: float = 1.0, maximum: float = 30.0) -> None:
        if not 0 < initial <= maximum:
            raise ValueError(f"need 0 < initial ({initial}) <= maximum ({maximum})")
        self.initial = initial
        self.maximum = maximum
        self._next = initial

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._next * 2.0, self.maximum)
        return delay

    def reset(self) -> None:
        self._next = self.initial


class StatusTracker:
    """The mutable side of `SourceStatus`, shared by a source's threads (one short lock)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._state: SourceState = "stopped"
        self._restarts = 0
        self._outages = 0
        self._last_error: str | None = None

    @property
    def state(self) -> SourceState:
        return self._state

    def set_state(self, state: SourceState, error: str | None = None) -> None:
        with self._lock:
            self._state = state
            if error is not None:
                self._last_error = error

    def outage(self, error: str) -> None:
        with self._lock:
            self._state = "restarting"
            self._outages += 1
            self._last_error = error

    def restarted(self) -> None:
        with self._lock:
            self._restarts += 1

    def snapshot(self, overruns: int, samples_written: int) -> SourceStatus:
        with self._lock:
            return SourceStatus(
                self.name, self._state, self._restarts, self._outages, self._last_error, overruns, samples_written
            )


def find_command(program: str) -> str | None:
    """The executable a command's first word names (looked up on PATH unless it holds a `/`); None if there is none."""
    return shutil.which(program)


def command_problems(streams: Mapping[str, MicSource | FileSource | PipeSource]) -> list[str]:
    """The pipe commands that cannot be run (not found on PATH, or not executable), one line each, key path first."""
    return [
        f"streams.{name}.command: {config.command[0]!r} not found on PATH, or not executable"
        for name, config in streams.items()
        if isinstance(config, PipeSource) and find_command(config.command[0]) is None
    ]


def child_environment(hidden: Collection[str] = ()) -> dict[str, str]:
    """The environment a source's command runs in: the daemon's, less the variables named in `hidden` (the one
    `mqtt.password_env` names), every `CLAPD_*` variable, and systemd's notification variables."""
    return {
        key: value
        for key, value in os.environ.items()
        if key not in hidden and not key.startswith(OWN_ENV_PREFIX) and key not in SYSTEMD_ENV
    }


def build_source(
    name: str,
    config: MicSource | FileSource | PipeSource,
    ring: RingBuffer,
    sample_rate: int,
    *,
    hidden_env: Collection[str] = (),
) -> Source:
    """The source for one configured stream, not yet started.

    It writes mono float32 to `ring` at `sample_rate` (Hz): the model's rate, `Manifest.sample_rate`. A pipe's
    command runs without the environment variables named in `hidden_env` (see `child_environment`).
    """
    if isinstance(config, MicSource):
        from clapd.daemon.sources.mic import MicInput

        return MicInput(name, config, ring, sample_rate)
    if isinstance(config, FileSource):
        from clapd.daemon.sources.file import FileInput

        return FileInput(name, config, ring, sample_rate)
    if isinstance(config, PipeSource):
        from clapd.daemon.sources.pipe import PipeInput

        return PipeInput(name, config, ring, sample_rate, hidden_env=hidden_env)
    raise TypeError(f"no source for {type(config).__name__}")
