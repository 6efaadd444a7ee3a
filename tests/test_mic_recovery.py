"""A microphone taken away mid-capture and put back, through real PortAudio on a virtual ALSA device.

The device is ALSA's `file` plugin reading a FIFO on a `null` slave; a thread fills the FIFO with a tone in real
time, which paces the capture. Taking it away does to PortAudio what an unplugged USB microphone does: the feed
stops, so PortAudio's callback thread waits in its read and no callback comes while the stream stays "active", and
the device leaves the ALSA configuration, so a re-scan no longer lists it and opening it fails. Then the FIFO's
writer is closed (the kernel waking a dead device's reader), which lets the abandoned stream close. Putting it back
defines the device again on a new FIFO with a tone of another frequency, so the audio after the return is
recognisable.

The capture runs in a child process (this file run as a script) because PortAudio reads the ALSA configuration
when it initialises and must see the test's, not the machine's.
"""

from __future__ import annotations

import ctypes.util
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

RATE = 44_100  # Hz, the virtual device's rate
CHUNK = 2_205  # frames per FIFO write (0.05 s): whole periods of both tones
MODEL_RATE = 48_000
BEFORE_HZ = 1_000.0  # the tone before the device goes away
AFTER_HZ = 1_500.0  # the tone after it is back
LEVEL = 0.75 * 0.5  # left at half scale, right at a quarter, downmixed
BACKOFF = (0.2, 1.6)  # first and longest reopen delay, seconds
STALL_SECONDS = 2.0  # mic.STALL_SECONDS, the default this test runs with

ALSA_DEVICE = """\
pcm.clapd_test {
  type plug
  slave {
    pcm { type file slave.pcm "null" file "/dev/null" infile "%s" format "raw" }
    format S16_LE rate 44100 channels 2
  }
  hint { show on description "clapd test microphone" }
}
"""


# --- the child: capture, take the device away, put it back ----------------------------------------------------------


class Feeder:
    """Writes a stereo S16LE tone into a FIFO in real time until stopped; keeps the writer end open until closed."""

    def __init__(self, path: Path, hz: float) -> None:
        os.mkfifo(path)
        self.path = path
        self._fd = os.open(path, os.O_RDWR)  # read-write: neither side blocks opening it
        left = np.round(16384 * np.sin(2 * np.pi * hz * np.arange(CHUNK) / RATE)).astype("<i2")
        self._chunk = np.stack([left, left // 2], axis=1).tobytes()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._feed, daemon=True)
        self._thread.start()

    def _feed(self) -> None:
        began, frames = time.monotonic(), 0
        while not self._done.is_set():
            os.write(self._fd, self._chunk)
            frames += CHUNK
            time.sleep(max(0.0, frames / RATE - (time.monotonic() - began)))

    def stop(self) -> None:
        self._done.set()
        self._thread.join(5.0)

    def close(self) -> None:
        os.close(self._fd)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[float, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((time.monotonic(), record.levelname, record.getMessage()))


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not condition():
        time.sleep(0.02)
    return condition()


def define_device(work: Path, fifo: Path | None) -> None:
    (work / "asound.conf").write_text(ALSA_DEVICE % fifo if fifo else "")


def child(work: Path) -> dict[str, object]:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    records = Records()
    logging.getLogger("clapd.daemon.sources.mic").addHandler(records)
    logging.getLogger("clapd.daemon.sources.mic").setLevel(logging.DEBUG)
    before = Feeder(work / "before.fifo", BEFORE_HZ)
    define_device(work, before.path)

    from clapd.daemon.config import MicSource  # PortAudio initialises here, after the device is defined
    from clapd.daemon.ring import RingBuffer
    from clapd.daemon.sources import Backoff, mic

    class RecordingBackoff(Backoff):
        delays: list[float] = []

        def next_delay(self) -> float:
            self.delays.append(super().next_delay())
            return self.delays[-1]

    ring = RingBuffer(30 * MODEL_RATE)  # the whole run: read back at the end
    backoff = RecordingBackoff(*BACKOFF)
    source = mic.MicInput("attic", MicSource(type="mic", device="clapd_test"), ring, backoff=backoff)
    result: dict[str, object] = {"stall_seconds": mic.STALL_SECONDS}
    source.start()
    result["tone"] = wait_for(lambda: ring.total_written >= 1.5 * MODEL_RATE, 10)

    before.stop()  # taken away: no more audio, and no such device any more
    define_device(work, None)
    away_at = time.monotonic()
    result["lost"] = wait_for(lambda: source.status().state == "restarting", 10)
    result["detected_after"] = time.monotonic() - away_at
    written_at_loss = ring.total_written
    result["last_error"] = source.status().last_error
    result["retried_while_stalled"] = wait_for(lambda: source.status().restarts >= 2, 5)
    result["open_while_stalled"] = mic._open_streams  # the abandoned stream: its abort waits for the read
    before.close()  # the kernel wakes the dead device's reader: the abandoned stream can close now
    result["abandoned_closed"] = wait_for(lambda: mic._open_streams == 0, 5)
    result["retrying"] = wait_for(lambda: source.status().restarts >= 4, 10)
    result["listed_while_away"] = [d.name for d in mic.list_input_devices()]
    written_at_return = ring.total_written  # where the audio after the return begins

    after = Feeder(work / "after.fifo", AFTER_HZ)  # put back
    define_device(work, after.path)
    back_at = time.monotonic()
    result["resumed"] = wait_for(lambda: source.status().state == "running", 10)
    result["resumed_after"] = time.monotonic() - back_at
    result["away_for"] = time.monotonic() - away_at
    result["flowing"] = wait_for(lambda: ring.total_written >= written_at_return + 1.5 * MODEL_RATE, 10)
    running = source.status().state
    source.stop()
    after.stop()
    after.close()
    np.save(work / "before.npy", ring.read(4800, written_at_loss - 2 * 4800))  # away from the filter's edges
    np.save(work / "after.npy", ring.read(written_at_return + 4800, ring.total_written - written_at_return - 9600))
    result.update(
        written_at_loss=written_at_loss,
        written_at_return=written_at_return,
        ring_total=ring.total_written,
        running=running,
        stopped=source.status().state,
        outages=source.status().outages,
        restarts=source.status().restarts,
        samples_written=source.status().samples_written,
        delays=backoff.delays,
        log=[(t - away_at, level, message) for t, level, message in records.lines],
    )
    return result


# --- the test -------------------------------------------------------------------------------------------------------


def share_of_tone(samples: np.ndarray, hz: float, block: int = 1200) -> float:
    """Share of 25 ms blocks that one sinusoid of `hz` (best amplitude and phase) explains to within 1 %."""
    t = np.arange(block) / MODEL_RATE
    basis = np.stack([np.sin(2 * np.pi * hz * t), np.cos(2 * np.pi * hz * t)], axis=1)
    blocks = samples[: samples.shape[0] // block * block].reshape(-1, block).astype(np.float64)
    fit, *_ = np.linalg.lstsq(basis, blocks.T, rcond=None)
    residual = np.std(blocks - (basis @ fit).T, axis=1) / np.maximum(np.std(blocks, axis=1), 1e-9)
    return float(np.mean(residual < 0.01))


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))


@pytest.fixture(scope="module")
def recovery(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    work = tmp_path_factory.mktemp("mic_recovery")
    env = dict(os.environ, ALSA_CONFIG_PATH=f"/usr/share/alsa/alsa.conf:{work / 'asound.conf'}")
    done = subprocess.run(
        [sys.executable, __file__, str(work)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout), work


pytestmark = pytest.mark.skipif(
    ctypes.util.find_library("portaudio") is None, reason="PortAudio is not installed (libportaudio2)"
)


def test_a_stalled_microphone_is_reported_lost(recovery: tuple[dict, Path]) -> None:
    result, _ = recovery
    assert result["tone"] and result["lost"]
    assert result["stall_seconds"] == STALL_SECONDS
    # From the last audio heard, which can come a block before the feed stops; looked at every block or so.
    assert STALL_SECONDS - 0.2 <= result["detected_after"] < STALL_SECONDS + 1.5
    assert re.fullmatch(r"no audio from \[\d+\] clapd_test for [\d.]+ s", result["last_error"])
    warnings = [message for _, level, message in result["log"] if level == "WARNING"]
    assert [w for w in warnings if "reopening with back-off" in w] == [
        f"attic: {result['last_error']} (device lost?); reopening with back-off"
    ]
    # The stalled stream's abort waits for its callback thread, blocked in a read, so it is left to close in the
    # background: the reopen attempts go on meanwhile, and it closes once the read returns.
    assert result["retried_while_stalled"] and result["open_while_stalled"] == 1
    assert result["abandoned_closed"]
    closed = [
        float(re.fullmatch(r"attic: stream closed after ([\d.]+) s", m).group(1))
        for _, _, m in result["log"]
        if "closed after" in m
    ]
    assert len(closed) == 2 and closed[0] > 0.5  # the abandoned stream; then the one stop() closed
    assert "clapd_test" not in result["listed_while_away"]  # re-scanned: the device is gone from the list


def test_reopen_attempts_back_off(recovery: tuple[dict, Path]) -> None:
    result, _ = recovery
    assert result["retrying"]
    assert result["delays"][:5] == [0.2, 0.4, 0.8, 1.6, 1.6]
    failed = [(t, m) for t, level, m in result["log"] if level == "DEBUG" and "reopen attempt" in m]
    assert [m.split(" failed")[0] for _, m in failed] == [
        f"attic: reopen attempt {i}" for i in range(1, len(failed) + 1)
    ]
    assert len(failed) == result["restarts"] - 1  # every attempt but the last failed
    # The first attempts open the device PortAudio still lists (no re-scan while a stream is open) and fail in
    # ALSA; once the abandoned stream has closed, a re-scan finds no such device.
    assert "cannot open [" in failed[0][1] and "no input device 'clapd_test'" in failed[-1][1]
    gaps = np.diff([t for t, _ in failed])
    expected = np.array(result["delays"][1 : len(failed)])
    assert np.all(gaps >= expected - 0.02) and np.all(gaps < expected + 0.5)  # waited each delay, no tight loop


def test_capture_resumes_when_the_microphone_is_back(recovery: tuple[dict, Path]) -> None:
    result, work = recovery
    assert result["resumed"] and result["flowing"]
    assert result["resumed_after"] < BACKOFF[1] + 1.0  # within one longest delay of its return
    assert (result["running"], result["outages"], result["stopped"]) == ("running", 1, "stopped")
    recovered = [m for _, level, m in result["log"] if level == "WARNING" and "capturing again" in m]
    assert len(recovered) == 1
    outage, attempts = re.fullmatch(
        r"attic: capturing again after ([\d.]+) s \((\d+) attempts\)", recovered[0]
    ).groups()
    assert int(attempts) == result["restarts"]
    assert float(outage) == pytest.approx(result["away_for"], abs=0.5)  # from the last audio heard to the return

    before, after = np.load(work / "before.npy"), np.load(work / "after.npy")
    # The file plugin fills a read the FIFO cannot fully serve with stale frames: a rare glitch, not a lost tone.
    assert share_of_tone(before, BEFORE_HZ) > 0.9 and share_of_tone(before, AFTER_HZ) == 0
    assert share_of_tone(after, AFTER_HZ) > 0.9 and share_of_tone(after, BEFORE_HZ) == 0
    assert rms(after) == pytest.approx(LEVEL / np.sqrt(2), rel=0.01)


def test_the_sample_counter_stays_consistent(recovery: tuple[dict, Path]) -> None:
    result, _ = recovery
    assert result["samples_written"] == result["ring_total"]  # the status counts what reached the ring
    assert result["written_at_return"] == result["written_at_loss"]  # no audio is made up for the time away
    assert result["ring_total"] - result["written_at_return"] >= 1.5 * MODEL_RATE


if __name__ == "__main__":
    print(json.dumps(child(Path(sys.argv[1]))))
