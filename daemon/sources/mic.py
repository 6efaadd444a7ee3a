"""A PortAudio input device (sounddevice's `InputStream`) feeding a stream's ring.

The PortAudio callback only copies the raw interleaved frames into a small preallocated ring and wakes the capture
thread; that thread selects or downmixes the channels, resamples to the model's rate (see `clapd.daemon.resample`
for why not in the callback) and writes to the stream's ring.

A device is lost when its stream ends on its own (PortAudio reports a driver error) or when no audio has come for
`STALL_SECONDS` (a few blocks at least): a device that goes away can also leave PortAudio's ALSA callback thread
waiting for data that never comes, or looping in its error handling, with the stream still "active". The capture
thread then closes the stream and reopens the device with exponential back-off (1 s doubling to 30 s), re-scanning
the devices each time because PortAudio only sees devices that existed when it was initialised. An outage is
logged once when it starts and once when it ends, not per retry.

A stalled stream is closed in the background: PortAudio's abort waits for the callback thread, which may be stuck
until the kernel wakes its read (or forever). Until it is closed it still counts as open. The re-scan needs
PortAudio re-initialised, which would close every stream of the process, so it is skipped while another microphone
stream is open (a device that is already listed can still be reopened then).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
import sounddevice as sd

from clapd.daemon.config import MicSource
from clapd.daemon.resample import Conditioner
from clapd.daemon.ring import Overrun, RingBuffer
from clapd.daemon.sources import Backoff, SourceError, SourceStatus, StatusTracker

logger = logging.getLogger(__name__)

RAW_RING_SECONDS = 2.0  # raw audio the callback may get ahead of the capture thread
DRAIN_SECONDS = 0.25  # most raw audio conditioned per step
MAX_AUTO_CHANNELS = 2  # channels opened when the config does not say
WAKE_SECONDS = 0.5  # the capture thread looks at the stream at least this often
JOIN_SECONDS = 5.0
STALL_SECONDS = 2.0  # no audio for this long (and for STALL_BLOCKS blocks) means the device is lost
STALL_BLOCKS = 4
CLOSE_SECONDS = 2.0  # waited for a stream to close (a stalled one: not at all) before leaving it to close later

# PortAudio's API is not thread-safe: one caller at a time; counts this process's open streams.
_portaudio_lock = threading.RLock()
_open_streams = 0


class DeviceNotFoundError(SourceError):
    """No input device matches; the message lists the ones there are."""


@dataclass(frozen=True, slots=True)
class InputDevice:
    """One PortAudio device that can capture, as `clapd devices` lists it."""

    index: int  # PortAudio's device index (changes when devices come and go)
    name: str
    channels: int  # most input channels it offers
    default_rate: int  # Hz
    host_api: str  # e.g. "ALSA", "JACK Audio Connection Kit"


def list_input_devices() -> list[InputDevice]:
    with _portaudio_lock:
        devices = sd.query_devices()
        apis = sd.query_hostapis()
    return [
        InputDevice(
            d["index"], d["name"], d["max_input_channels"], round(d["default_samplerate"]), apis[d["hostapi"]]["name"]
        )
        for d in devices
        if d["max_input_channels"] > 0
    ]


def describe_device(device: InputDevice) -> str:
    return f"[{device.index}] {device.name} ({device.channels} ch, {device.default_rate} Hz, {device.host_api})"


def find_input_device(spec: str | int | None) -> InputDevice:
    """By index, by case-insensitive name substring (an exact name wins), or the default input when None."""
    devices = list_input_devices()
    if spec is None:
        with _portaudio_lock:
            try:
                default = sd.query_devices(kind="input")["index"]
            except sd.PortAudioError:
                default = -1
        matches = [d for d in devices if d.index == default]
    elif isinstance(spec, int):
        matches = [d for d in devices if d.index == spec]
    else:
        wanted = spec.lower()
        matches = [d for d in devices if d.name.lower() == wanted] or [d for d in devices if wanted in d.name.lower()]
    if not matches:
        what = "no default input device" if spec is None else f"no input device {spec!r}"
        listed = "; ".join(describe_device(d) for d in devices)
        raise DeviceNotFoundError(f"{what}; available input devices: {listed or 'none'}")
    if len(matches) > 1:
        logger.info("%d input devices match %r; using [%d] %s", len(matches), spec, matches[0].index, matches[0].name)
    return matches[0]


def _close_stream(name: str, stream: sd.InputStream, stalled: bool) -> None:
    """Abort and close a stream; it counts as closed afterwards even if that failed.

    Aborts hold the PortAudio lock (two aborts of one stream at once can hang PortAudio), except a stalled
    stream's: it touches only that stream, and it may wait a long time for a callback thread stuck on a dead device,
    which must not hold up every other PortAudio call.
    """
    global _open_streams
    began = time.monotonic()
    try:
        if stalled:
            stream.abort(ignore_errors=True)
        else:
            with _portaudio_lock:
                stream.abort(ignore_errors=True)
    finally:
        with _portaudio_lock:
            try:
                stream.close(ignore_errors=True)
            finally:
                _open_streams -= 1
    logger.debug("%s: stream closed after %.1f s", name, time.monotonic() - began)


class _Feed:
    """What one stream's PortAudio callbacks write to: a stalled stream that wakes up late writes only here."""

    __slots__ = ("raw", "ended", "overflows", "_wake")

    def __init__(self, capacity: int, wake: threading.Event) -> None:
        self.raw = RingBuffer(capacity)
        self.ended = threading.Event()  # set by PortAudio when the stream stops (on its own, or aborted)
        self.overflows = 0  # blocks PortAudio flagged as input overflow
        self._wake = wake

    def callback(self, indata: np.ndarray, frames: int, time_info: object, status: sd.CallbackFlags) -> None:
        if status.input_overflow:
            self.overflows += 1
        self.raw.write(indata.reshape(-1))
        self._wake.set()

    def finished(self) -> None:
        self.ended.set()
        self._wake.set()


def open_stream_count() -> int:
    """Streams of this process not yet closed, a stalled one still closing in the background included."""
    with _portaudio_lock:
        return _open_streams


def refresh_devices() -> bool:
    """Re-scan the devices (re-initialise PortAudio) if no stream of this process is open; True if it did."""
    with _portaudio_lock:
        if _open_streams:
            return False
        sd._terminate()
        sd._initialize()
        return True


class MicInput:
    """Captures one input device into a ring at `sample_rate` (Hz, the model's); reopens it with back-off when it
    goes away."""

    def __init__(
        self, name: str, config: MicSource, ring: RingBuffer, sample_rate: int, *, backoff: Backoff | None = None
    ) -> None:
        self.name = name
        self.ring = ring
        self.sample_rate = sample_rate
        self._config = config
        self._backoff = backoff or Backoff(1.0, 30.0)
        self._status = StatusTracker(name)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stream: sd.InputStream | None = None
        self._device: InputDevice | None = None
        self._feed = _Feed(1, self._wake)
        self._raw_pos = 0  # next raw sample (frames x channels) to condition
        self._heard = 0  # raw samples the callback had written when last looked at
        self._heard_at = 0.0  # monotonic seconds when that count last grew (or the stream opened)
        self._stall_seconds = max(STALL_SECONDS, STALL_BLOCKS * config.block_seconds)
        self._scratch = np.zeros(0, dtype=np.float32)
        self._channels = 1
        self._conditioner: Conditioner | None = None
        self._past_overflows = 0  # device overflows of the streams closed before the current one
        self._raw_overruns = 0  # times the capture thread fell a whole raw ring behind
        self._delivered = 0  # samples at sample_rate written to the ring

    @property
    def device(self) -> InputDevice | None:
        return self._device

    def start(self) -> None:
        """Open the device now (a missing one raises `DeviceNotFoundError`), then capture in a thread."""
        self._open(find_input_device(self._config.device))
        self._status.set_state("running")
        self._thread = threading.Thread(target=self._run, name=f"clapd-mic-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(JOIN_SECONDS)
        else:
            self._close()
        self._status.set_state("stopped")

    def status(self) -> SourceStatus:
        overruns = self._past_overflows + self._feed.overflows + self._raw_overruns + self.ring.overruns
        return self._status.snapshot(overruns, self._delivered)

    def _open(self, device: InputDevice) -> None:
        channels = self._config.channels or min(device.channels, MAX_AUTO_CHANNELS)
        if self._config.channel is not None:
            channels = max(channels, self._config.channel + 1)
        rate = self._config.sample_rate or device.default_rate
        try:
            conditioner = Conditioner(rate, channels, self._config.channel, out_rate=self.sample_rate)
        except ValueError as e:
            raise SourceError(f"{self.name}: {e}") from e
        self._past_overflows += self._feed.overflows
        self._feed = feed = _Feed(max(1, round(rate * RAW_RING_SECONDS)) * channels, self._wake)
        self._raw_pos = self._heard = 0
        self._scratch = np.zeros(max(1, round(rate * DRAIN_SECONDS)) * channels, dtype=np.float32)
        self._channels = channels
        self._conditioner = conditioner
        self._stream = stream = self._new_stream(device, rate, channels, feed)
        try:
            with _portaudio_lock:
                stream.start()
        except sd.PortAudioError as e:
            self._close()
            raise SourceError(f"{self.name}: cannot start [{device.index}] {device.name}: {e}") from e
        self._heard_at = time.monotonic()
        self._device = device
        logger.info("%s: capturing [%d] %s, %d ch at %d Hz", self.name, device.index, device.name, channels, rate)

    def _new_stream(self, device: InputDevice, rate: int, channels: int, feed: _Feed) -> sd.InputStream:
        global _open_streams
        with _portaudio_lock:
            try:
                stream = sd.InputStream(
                    device=device.index,
                    channels=channels,
                    samplerate=rate,
                    blocksize=max(1, round(rate * self._config.block_seconds)),
                    dtype="float32",
                    callback=feed.callback,
                    finished_callback=feed.finished,
                )
            except (sd.PortAudioError, ValueError) as e:
                raise SourceError(f"{self.name}: cannot open [{device.index}] {device.name} at {rate} Hz: {e}") from e
            _open_streams += 1
        return stream

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self._wake.wait(WAKE_SECONDS)
                    self._wake.clear()
                    self._drain()
                    if not self._stop.is_set():
                        self._watch()
                except Exception:
                    logger.exception("%s: capture thread error", self.name)
                    self._stop.wait(1.0)
        finally:
            self._close()

    def _watch(self) -> None:
        """Recover when the stream has ended on its own or has delivered nothing for too long."""
        device = self._device
        where = f"[{device.index}] {device.name}" if device else "the device"
        now = time.monotonic()
        if self._feed.raw.total_written != self._heard:
            self._heard, self._heard_at = self._feed.raw.total_written, now
        if self._feed.ended.is_set():
            self._recover(f"input stream of {where} stopped", stalled=False)
        elif now - self._heard_at > self._stall_seconds:
            self._recover(f"no audio from {where} for {now - self._heard_at:.1f} s", stalled=True)

    def _drain(self) -> None:
        """Condition everything the callback has written since the last call."""
        raw, channels = self._feed.raw, self._channels
        while (available := raw.total_written - self._raw_pos) > 0:
            n = min(available, self._scratch.shape[0])
            try:
                block = raw.read(self._raw_pos, n, self._scratch)
            except Overrun:
                self._raw_overruns += 1
                # Skip to half a ring behind the writer (whole frames), leaving it room before it laps us again.
                self._raw_pos = raw.total_written - (raw.capacity // channels // 2) * channels
                continue
            self._raw_pos += n
            self._deliver(self._conditioner.process(block.reshape(-1, channels)))

    def _deliver(self, samples: np.ndarray) -> None:
        self.ring.write(samples)
        self._delivered += samples.shape[0]

    def _close(self, stalled: bool = False) -> None:
        """Close the stream, keep what it delivered, and flush the resampler.

        A stalled stream's callback thread may be stuck in a read that returns late or never: it is left to close
        in the background, and its late callbacks write to its own `_Feed`, which nothing reads any more.
        """
        stream, self._stream = self._stream, None
        if stream is None:
            return
        closer = threading.Thread(
            target=_close_stream, args=(self.name, stream, stalled), name=f"clapd-mic-{self.name}-close", daemon=True
        )
        closer.start()
        if not stalled:
            closer.join(CLOSE_SECONDS)
            if closer.is_alive():
                logger.warning("%s: stream not closed after %.1f s; left to close later", self.name, CLOSE_SECONDS)
        self._drain()
        if self._conditioner is not None:
            self._deliver(self._conditioner.flush())

    def _recover(self, reason: str, stalled: bool) -> None:
        """The device is lost: reopen it with back-off until that works or stop() is called."""
        lost_at = self._heard_at  # the outage began with the last audio heard
        self._close(stalled)
        self._status.outage(reason)
        logger.warning("%s: %s (device lost?); reopening with back-off", self.name, reason)
        attempts = 0
        while not self._stop.wait(self._backoff.next_delay()):
            attempts += 1
            self._status.restarted()
            try:
                refresh_devices()
                self._open(find_input_device(self._config.device))
            except (SourceError, sd.PortAudioError) as e:
                logger.debug("%s: reopen attempt %d failed: %s", self.name, attempts, e)
                self._status.set_state("restarting", str(e))
                continue
            self._backoff.reset()
            self._status.set_state("running")
            outage = time.monotonic() - lost_at
            logger.warning("%s: capturing again after %.1f s (%d attempts)", self.name, outage, attempts)
            return
