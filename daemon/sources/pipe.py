"""A command writing raw PCM to its stdout, e.g. `ffmpeg -i rtsp://cam/stream -f s16le -ac 1 -ar 48000 -`.

One thread reads stdout and restarts the command when it dies or stalls: exponential back-off from 1 s, doubling
up to `restart_max_seconds`, reset once a run has lasted `healthy_after` seconds. Another thread per run logs the
command's stderr at WARNING, prefixed by the stream name and rate-limited, so a crash loop cannot flood the log.
The command runs in its own process group, so `stop()` ends a shell and its children alike: SIGTERM, then
SIGKILL after a bounded wait. Its environment is the daemon's less the daemon's secrets (`child_environment`).

A command that stops writing without exiting, or trickles (a camera gone, a network that hangs), is stalled: each
second of audio it delivers earns it `1 / MIN_SPEED` seconds of wall time, at most `STALL_SECONDS` banked (a new
run gets `FIRST_AUDIO_SECONDS` for its first audio), and a command whose time runs out is killed and restarted
like a dead one: an outage, logged and counted. So a command that keeps up with real time on average, in bursts
up to `STALL_SECONDS` apart, runs on, and one that falls below `MIN_SPEED` of real time for good is restarted.
"""

from __future__ import annotations

import io
import logging
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Collection
from typing import IO

import numpy as np

from clapd.daemon.config import PipeSource
from clapd.daemon.resample import Conditioner
from clapd.daemon.ring import RingBuffer
from clapd.daemon.sources import (
    Backoff,
    SourceError,
    SourceStatus,
    StatusTracker,
    child_environment,
    find_command,
)

logger = logging.getLogger(__name__)

SAMPLE_BYTES = {"s16le": 2, "f32le": 4}
SAMPLE_DTYPES = {"s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}
S16_SCALE = 1.0 / 32768.0  # full scale of signed 16-bit PCM
READ_SECONDS = 0.05  # most audio taken from the pipe per read
HEALTHY_AFTER_SECONDS = 30.0  # a run this long resets the back-off
TERMINATE_SECONDS = 5.0  # SIGTERM grace before SIGKILL
EXIT_GRACE_SECONDS = 1.0  # how long a command that closed its stdout may take to exit on its own
STDERR_BURST = 10  # stderr lines logged per window; the rest are counted
STDERR_WINDOW_SECONDS = 10.0
JOIN_SECONDS = 5.0
STALL_SECONDS = 5.0  # silence allowed after steady audio: longer than the gaps of a command that sends in bursts
MIN_SPEED = 0.5  # audio seconds per wall-clock second: a command below this for good is stalled
FIRST_AUDIO_SECONDS = 10.0  # a new run's time for its first audio (ffmpeg connecting to a camera takes a while)
WAKE_SECONDS = 0.25  # the reader looks at the stall watchdog at least this often


class LineLimiter:
    """Lets `burst` lines through per `window` seconds and counts the ones it holds back."""

    def __init__(self, burst: int, window: float) -> None:
        self._burst = burst
        self._window = window
        self._window_start = time.monotonic()
        self._passed = 0
        self.suppressed = 0  # lines held back in the current window

    def allow(self) -> tuple[bool, int]:
        """(log this line?, lines suppressed in the window that just closed, to report once)."""
        now = time.monotonic()
        closed = 0
        if now - self._window_start >= self._window:
            closed, self.suppressed = self.suppressed, 0
            self._window_start = now
            self._passed = 0
        if self._passed < self._burst:
            self._passed += 1
            return True, closed
        self.suppressed += 1
        return False, closed


class StallWatch:
    """Whether a command keeps up: audio earns wall time (`1 / min_speed` s per second of audio, at most
    `stall_seconds` banked), wall time spends it, and a command that has spent it all has stalled.
    Times are `time.monotonic()` seconds."""

    def __init__(
        self,
        now: float,
        *,
        first_audio_seconds: float = FIRST_AUDIO_SECONDS,
        stall_seconds: float = STALL_SECONDS,
        min_speed: float = MIN_SPEED,
    ) -> None:
        self._stall_seconds = stall_seconds
        self._min_speed = min_speed
        self._deadline = now + first_audio_seconds  # stalled once the clock passes this with no more audio
        self._since = now  # when the bank was last full (or the run began)
        self._audio = 0.0  # seconds of audio heard since then

    def heard(self, audio_seconds: float, now: float) -> None:
        earned = max(self._deadline, now) + audio_seconds / self._min_speed
        full = now + self._stall_seconds
        if earned >= full:
            self._deadline, self._since, self._audio = full, now, 0.0
        else:
            self._deadline = earned
            self._audio += audio_seconds

    def stalled(self, now: float) -> str | None:
        """Why the command counts as stalled at `now`; None while it keeps up."""
        if now <= self._deadline:
            return None
        return (
            f"stalled: {self._audio:.2f} s of audio in the last {now - self._since:.1f} s "
            f"(under {self._min_speed:.0%} of real time)"
        )


class PipeInput:
    """Runs a PCM-producing command, restarting it with back-off, and feeds its audio to a ring at `sample_rate`
    (Hz, the model's). The command runs without the environment variables named in `hidden_env`."""

    def __init__(
        self,
        name: str,
        config: PipeSource,
        ring: RingBuffer,
        sample_rate: int,
        *,
        backoff_initial: float = 1.0,
        healthy_after: float = HEALTHY_AFTER_SECONDS,
        terminate_seconds: float = TERMINATE_SECONDS,
        hidden_env: Collection[str] = (),
    ) -> None:
        self.name = name
        self.ring = ring
        self.sample_rate = sample_rate
        self._config = config
        self._backoff = Backoff(min(backoff_initial, config.restart_max_seconds), config.restart_max_seconds)
        self._healthy_after = healthy_after
        self._terminate_seconds = terminate_seconds
        self._hidden_env = frozenset(hidden_env)
        self._status = StatusTracker(name)
        self._stderr_limit = LineLimiter(STDERR_BURST, STDERR_WINDOW_SECONDS)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._delivered = 0  # samples at sample_rate written to the ring
        self._frame_bytes = config.channels * SAMPLE_BYTES[config.sample_format]

    def start(self) -> None:
        program = self._config.command[0]
        if find_command(program) is None:
            raise SourceError(f"{self.name}: command {program!r} not found (not executable, or not on PATH)")
        channel = self._config.channel
        if channel is not None and channel >= self._config.channels:
            raise SourceError(f"{self.name}: channel {channel} requested, the pipe has {self._config.channels}")
        self._status.set_state("running")
        self._thread = threading.Thread(target=self._run, name=f"clapd-pipe-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            proc = self._proc
        if proc is not None:
            self._terminate(proc)
        if self._thread is not None:
            self._thread.join(JOIN_SECONDS)
        self._status.set_state("stopped")

    def status(self) -> SourceStatus:
        return self._status.snapshot(self.ring.overruns, self._delivered)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                reason = self._run_once()
            except Exception as e:
                logger.exception("%s: running the command failed", self.name)
                reason = f"running it failed ({e})"
            if self._stop.is_set():
                return
            ran = time.monotonic() - started
            if ran >= self._healthy_after:
                self._backoff.reset()
            delay = self._backoff.next_delay()
            self._status.outage(reason)
            logger.warning("%s: %s after %.1f s; restarting in %.2f s", self.name, reason, ran, delay)
            if self._stop.wait(delay):
                return
            self._status.restarted()

    def _run_once(self) -> str:
        """Run the command once; return why it ended."""
        try:
            proc = self._spawn()
        except OSError as e:
            return f"cannot start {self._config.command[0]!r}: {e}"
        config = self._config
        conditioner = Conditioner(config.sample_rate, config.channels, config.channel, out_rate=self.sample_rate)
        stalled: str | None = None
        try:
            assert isinstance(proc.stdout, io.FileIO)
            stalled = self._pump(proc.stdout, conditioner)
            self._deliver(conditioner.flush())
        except Exception as e:
            logger.exception("%s: reading the command's output failed", self.name)
            return f"reading its output failed ({e})"
        finally:
            if stalled is not None:
                self._terminate(proc)
            self._reap(proc)
        if stalled is not None:
            return f"{stalled}; command killed"
        return f"command exited with status {proc.returncode}"

    def _spawn(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            self._config.command,
            bufsize=0,  # stdout unbuffered: poll() on its descriptor sees all there is to read
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_environment(self._hidden_env),
            start_new_session=True,  # its own process group: stop() reaches the command's children too
        )
        with self._lock:
            self._proc = proc
        if self._stop.is_set():
            self._terminate(proc)
        assert isinstance(proc.stderr, io.FileIO)
        stderr = io.BufferedReader(proc.stderr)  # read by lines
        threading.Thread(
            target=self._log_stderr, args=(stderr,), name=f"clapd-pipe-{self.name}-stderr", daemon=True
        ).start()
        self._status.set_state("running")
        return proc

    def _pump(self, stdout: io.FileIO, conditioner: Conditioner) -> str | None:
        """Feed the command's output to the ring until it ends (None), it stalls, or stop() (why it stalled)."""
        rate = self._config.sample_rate
        chunk = max(1, int(READ_SECONDS * rate)) * self._frame_bytes
        buffer = bytearray(chunk + self._frame_bytes)
        view = memoryview(buffer)
        have = 0
        poller = select.poll()
        poller.register(stdout.fileno(), select.POLLIN)
        watch = StallWatch(time.monotonic())
        while not self._stop.is_set():
            if poller.poll(WAKE_SECONDS * 1000):
                n = stdout.readinto(view[have : have + chunk])
                if not n:
                    return None
                have += n
                usable = have - have % self._frame_bytes
                if usable:
                    self._deliver(conditioner.process(self._decode(view[:usable])))
                    view[: have - usable] = view[usable:have]
                    have -= usable
                    watch.heard(usable / self._frame_bytes / rate, time.monotonic())
            if (stalled := watch.stalled(time.monotonic())) is not None:
                return stalled
        return None

    def _decode(self, data: memoryview) -> np.ndarray:
        samples = np.frombuffer(data, dtype=SAMPLE_DTYPES[self._config.sample_format]).astype(np.float32)
        if self._config.sample_format == "s16le":
            samples *= S16_SCALE
        return samples.reshape(-1, self._config.channels)

    def _deliver(self, samples: np.ndarray) -> None:
        self.ring.write(samples)
        self._delivered += samples.shape[0]

    def _reap(self, proc: subprocess.Popen[bytes]) -> None:
        try:
            proc.wait(EXIT_GRACE_SECONDS)  # it closed its output: let it exit by itself first
        except subprocess.TimeoutExpired:
            self._terminate(proc)
        if proc.stdout is not None:
            proc.stdout.close()

    def _terminate(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM to the command's process group, SIGKILL if it is still there after the grace period."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if proc.poll() is not None:
                return
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(self._terminate_seconds)
                return
            except subprocess.TimeoutExpired:
                logger.warning("%s: command did not end on %s", self.name, sig.name)

    def _log_stderr(self, stream: IO[bytes]) -> None:
        with stream:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip()
                allowed, suppressed = self._stderr_limit.allow()
                if suppressed:
                    logger.warning("%s: %d stderr lines suppressed", self.name, suppressed)
                if allowed and line:
                    logger.warning("%s: %s", self.name, line)
