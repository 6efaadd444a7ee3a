"""A microphone taken away mid-capture and put back, through real PortAudio on a virtual ALSA device.

The device is tests/virtual_alsa.py's: ALSA's `file` plugin reading a FIFO on a `null` slave, which a thread fills
with a tone in real time, pacing the capture. Taking it away does to PortAudio what an unplugged USB microphone
does: the feed stops, so PortAudio's callback thread waits in its read and no callback comes while the stream stays
"active", and the device leaves the ALSA configuration, so a re-scan no longer lists it and opening it fails.
Then the FIFO's writer is closed (the kernel waking a dead device's reader), which lets the abandoned stream close.
Putting it back defines the device again on a new FIFO with a tone of another frequency, so the audio after the
return is recognisable.

The capture runs in a child process (this file run as a script) because PortAudio reads the ALSA configuration
when it initialises and must see the test's, not the machine's.
"""

from __future__ import annotations

import ctypes.util
import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from virtual_alsa import ToneFeeder, VirtualAlsaDevice, alsa_environment

MICROPHONE = VirtualAlsaDevice("clapd_test", rate=44_100, channels=2, description="clapd test microphone")
MODEL_RATE = 48_000
BEFORE_HZ = 1_000.0  # the tone before the device goes away
AFTER_HZ = 1_500.0  # the tone after it is back
LEVEL = 0.75 * 0.5  # left at half scale, right at a quarter, downmixed
BACKOFF = (0.2, 1.6)  # first and longest reopen delay, seconds
STALL_SECONDS = 2.0  # mic.STALL_SECONDS, the default this test runs with
LAST_HEARD_SECONDS = 0.2  # the last audio heard can come up to a capture block or so before the feed stops
FAILED_WHILE_AWAY = 4  # reopen attempts that fail before the device is put back


# --- the child: capture, take the device away, put it back ----------------------------------------------------------


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


def failed_attempts(records: Records) -> list[str]:
    return [message for _, level, message in records.lines if level == "DEBUG" and "reopen attempt" in message]


def gone_after_failures(records: Records, count: int) -> bool:
    """`count` reopen attempts have failed, the last of them because a re-scan no longer lists the device."""
    failed = failed_attempts(records)
    return len(failed) >= count and "no input device 'clapd_test'" in failed[-1]


def child(work: Path) -> dict[str, object]:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    records = Records()
    logging.getLogger("clapd.daemon.sources.mic").addHandler(records)
    logging.getLogger("clapd.daemon.sources.mic").setLevel(logging.DEBUG)
    config_file = work / "asound.conf"
    before = ToneFeeder(work / "before.fifo", MICROPHONE, BEFORE_HZ)
    MICROPHONE.define(config_file, before.fifo)

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
    source = mic.MicInput("attic", MicSource(type="mic", device="clapd_test"), ring, MODEL_RATE, backoff=backoff)
    result: dict[str, object] = {"stall_seconds": mic.STALL_SECONDS}
    source.start()
    result["tone"] = wait_for(lambda: ring.total_written >= 1.5 * MODEL_RATE, 10)

    away_at = time.monotonic()
    before.stop()  # taken away: no more audio, and no such device any more
    MICROPHONE.remove(config_file)
    result["lost"] = wait_for(lambda: source.status().state == "restarting", 10)
    result["lost_seen_at"] = time.monotonic() - away_at
    written_at_loss = ring.total_written
    result["last_error"] = source.status().last_error
    result["retried_while_stalled"] = wait_for(lambda: source.status().restarts >= 2, 5)
    result["open_while_stalled"] = mic._open_streams  # the abandoned stream: its abort waits for the read
    before.close()  # the kernel wakes the dead device's reader: the abandoned stream can close now
    result["abandoned_closed"] = wait_for(lambda: mic._open_streams == 0, 5)
    result["retrying"] = wait_for(lambda: gone_after_failures(records, FAILED_WHILE_AWAY), 15)
    result["listed_while_away"] = [d.name for d in mic.list_input_devices()]
    written_at_return = ring.total_written  # where the audio after the return begins

    result["returned_at"] = time.monotonic() - away_at  # put back:
    after = ToneFeeder(work / "after.fifo", MICROPHONE, AFTER_HZ)
    MICROPHONE.define(config_file, after.fifo)
    result["resumed"] = wait_for(lambda: source.status().state == "running", 10)
    result["running_seen_at"] = time.monotonic() - away_at
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
    env = alsa_environment(work / "asound.conf")
    done = subprocess.run(
        [sys.executable, __file__, str(work)], env=env, capture_output=True, text=True, timeout=90, check=False
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
    # Not before STALL_SECONDS from the last audio heard; how much later depends on the machine's load, so the
    # bounded wait for the loss is the only upper bound.
    assert result["lost_seen_at"] >= STALL_SECONDS - LAST_HEARD_SECONDS
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
    assert result["retrying"]  # FAILED_WHILE_AWAY attempts failed, then the fifth delay was drawn
    assert result["delays"][:5] == [0.2, 0.4, 0.8, 1.6, 1.6]
    failed = [(t, m) for t, level, m in result["log"] if level == "DEBUG" and "reopen attempt" in m]
    assert [m.split(" failed")[0] for _, m in failed] == [
        f"attic: reopen attempt {i}" for i in range(1, len(failed) + 1)
    ]
    assert len(failed) == result["restarts"] - 1  # every attempt but the last failed
    # The first attempts open the device PortAudio still lists (no re-scan while a stream is open) and fail in
    # ALSA; once the abandoned stream has closed, a re-scan finds no such device.
    assert "cannot open [" in failed[0][1] and "no input device 'clapd_test'" in failed[-1][1]
    # Each attempt waited its delay (no tight loop); an attempt's own duration depends on the machine's load.
    gaps = np.diff([t for t, _ in failed])
    assert np.all(gaps >= np.array(result["delays"][1 : len(failed)]) - 0.02)


def test_capture_resumes_when_the_microphone_is_back(recovery: tuple[dict, Path]) -> None:
    result, work = recovery
    assert result["resumed"] and result["flowing"]
    # The first attempt that starts after its return reopens it; one under way at the return may still fail.
    assert len([t for t, level, m in result["log"] if "reopen attempt" in m and t > result["returned_at"]]) <= 1
    assert (result["running"], result["outages"], result["stopped"]) == ("running", 1, "stopped")
    recovered = [m for _, level, m in result["log"] if level == "WARNING" and "capturing again" in m]
    assert len(recovered) == 1
    outage, attempts = re.fullmatch(
        r"attic: capturing again after ([\d.]+) s \((\d+) attempts\)", recovered[0]
    ).groups()
    assert int(attempts) == result["restarts"]
    # From the last audio heard (at most LAST_HEARD_SECONDS before the feed stopped, and STALL_SECONDS before the
    # loss was seen) to the reopening (after the return, before it was seen running); 0.05: the log's rounding.
    lowest = result["returned_at"] - result["lost_seen_at"] + STALL_SECONDS - 0.05
    assert lowest <= float(outage) <= result["running_seen_at"] + LAST_HEARD_SECONDS + 0.05

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
