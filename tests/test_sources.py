"""Capture: the conditioner (downmix + resampling), and the file, pipe and microphone sources with real parts.

The microphone runs through real PortAudio on a virtual ALSA device (tests/virtual_alsa.py: the `file` plugin
reading a FIFO that a thread fills with a tone in real time) in a child process, because PortAudio reads the ALSA
configuration when it initialises and must see the test's configuration, not the machine's.
"""

from __future__ import annotations

import ctypes.util
import json
import logging
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from virtual_alsa import alsa_environment

from clapd.daemon.config import FileSource, PipeSource
from clapd.daemon.resample import Conditioner
from clapd.daemon.ring import RingBuffer
from clapd.daemon.sources import SourceError, build_source
from clapd.daemon.sources.file import FileInput
from clapd.daemon.sources.pipe import PipeInput

MODEL_RATE = 48_000  # Hz: the model's rate these tests give the sources and the conditioner
TONE_HZ = 1000.0


def tone(rate: int, seconds: float, amplitude: float = 0.5, hz: float = TONE_HZ) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def peak_hz(samples: np.ndarray, rate: int = MODEL_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.shape[0])))
    return float(np.argmax(spectrum) * rate / samples.shape[0])


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def condition_in_blocks(conditioner: Conditioner, frames: np.ndarray, sizes: list[int]) -> np.ndarray:
    out, i = [], 0
    for size in sizes:
        out.append(conditioner.process(frames[i : i + size]))
        i += size
    out.append(conditioner.process(frames[i:]))
    out.append(conditioner.flush())
    return np.concatenate(out)


# --- conditioner -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [44100, 16000, 48000])
def test_resampling_keeps_frequency_and_level(rate: int) -> None:
    out = condition_in_blocks(Conditioner(rate, 1, out_rate=MODEL_RATE), tone(rate, 2.0), [])
    assert abs(out.shape[0] - 2 * MODEL_RATE) <= 2
    middle = out[4800:-4800]  # away from the filter's start and end
    assert peak_hz(middle) == pytest.approx(TONE_HZ, abs=2.0)
    assert rms(middle) == pytest.approx(0.5 / np.sqrt(2), rel=0.005)


@pytest.mark.parametrize("rate", [44100, 16000, 48000])
def test_results_do_not_depend_on_the_block_sizes(rate: int) -> None:
    rng = np.random.default_rng(rate)
    frames = rng.uniform(-0.5, 0.5, size=(rate, 2)).astype(np.float32)
    whole = condition_in_blocks(Conditioner(rate, 2, out_rate=MODEL_RATE), frames, [])
    for max_block in (7, 160, 4096):
        sizes = list(rng.integers(1, max_block + 1, size=2 * rate // max_block))
        split = condition_in_blocks(Conditioner(rate, 2, out_rate=MODEL_RATE), frames, [int(size) for size in sizes])
        np.testing.assert_allclose(split, whole, rtol=0, atol=1e-6)


def test_channel_selection_and_downmix() -> None:
    left, right = tone(48000, 0.1), tone(48000, 0.1, amplitude=0.1)
    frames = np.stack([left, right], axis=1)
    np.testing.assert_array_equal(Conditioner(48000, 2, channel=1, out_rate=MODEL_RATE).process(frames), right)
    np.testing.assert_allclose(
        Conditioner(48000, 2, out_rate=MODEL_RATE).process(frames), (left + right) / 2, atol=1e-7
    )
    with pytest.raises(ValueError, match="channel 2 does not exist"):
        Conditioner(48000, 2, channel=2, out_rate=MODEL_RATE)


# --- file source -------------------------------------------------------------------------------------------------


@pytest.fixture
def stereo_wav(tmp_path: Path) -> Path:
    """1.5 s at 44.1 kHz: a 1 kHz tone on the left, the same at a fifth of the level on the right."""
    left = tone(44100, 1.5)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, left / 5], axis=1), 44100, subtype="FLOAT")
    return path


def drain(ring: RingBuffer, total: int, pause: float, timeout: float) -> np.ndarray:
    """A slow reader: takes what is there in small reads, releasing each, until `total` samples are read."""
    out, pos, deadline = [], 0, time.monotonic() + timeout
    while pos < total and time.monotonic() < deadline:
        n = min(ring.total_written - pos, 2400)
        if n > 0:
            out.append(ring.read(pos, n))
            pos += n
            ring.mark_consumed(pos)
        time.sleep(pause)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def test_file_arrives_at_48k_mono_with_the_right_length(stereo_wav: Path) -> None:
    ring = RingBuffer(5 * MODEL_RATE)
    source = build_source("file", FileSource(type="file", path=stereo_wav, realtime=False), ring, MODEL_RATE)
    source.start()
    try:
        assert isinstance(source, FileInput)
        assert source.finished.wait(10.0)
    finally:
        source.stop()
    assert abs(ring.total_written - 72000) <= 2  # 1.5 s at 48 kHz, the resampler's delay flushed at the end
    samples = ring.read(0, ring.total_written)
    assert peak_hz(samples[4800:-4800]) == pytest.approx(TONE_HZ, abs=2.0)
    assert rms(samples[4800:-4800]) == pytest.approx(0.6 * 0.5 / np.sqrt(2), rel=0.01)  # (1 + 1/5) / 2 downmix
    assert source.status().state == "finished"


def test_file_as_fast_as_possible_is_lossless_with_a_slow_reader(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    audio = rng.uniform(-0.5, 0.5, size=44100 * 3).astype(np.float32)
    path = tmp_path / "noise.wav"
    sf.write(path, audio, 44100, subtype="FLOAT")
    expected = condition_in_blocks(Conditioner(44100, 1, out_rate=MODEL_RATE), audio, [])
    ring = RingBuffer(MODEL_RATE // 2)  # a sixth of the file: the writer must wait for the reader
    source = FileInput("fast", FileSource(type="file", path=path, realtime=False), ring, MODEL_RATE)
    source.start()
    try:
        got = drain(ring, expected.shape[0], pause=0.002, timeout=20.0)
        assert source.finished.wait(5.0)
    finally:
        source.stop()
    np.testing.assert_array_equal(got, expected)
    assert ring.overruns == 0


class ManualClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_file_paced_by_the_clock(stereo_wav: Path) -> None:
    clock = ManualClock()
    ring = RingBuffer(5 * MODEL_RATE)
    source = FileInput("paced", FileSource(type="file", path=stereo_wav, realtime=True), ring, MODEL_RATE, clock=clock)
    source.start()
    try:
        time.sleep(0.2)
        assert ring.total_written == 0  # nothing is due before the clock moves
        for seconds in (0.3, 0.8, 1.2):
            clock.now = 100.0 + seconds
            due = seconds * MODEL_RATE
            assert wait_for(lambda due=due: ring.total_written >= due - 2 * 4800, 5.0)
            time.sleep(0.1)
            assert due - 2 * 4800 <= ring.total_written <= due  # a block is written once its last sample is due
        assert not source.finished.is_set()
        clock.now = 1000.0
        assert source.finished.wait(5.0)
    finally:
        source.stop()


def test_file_loops_and_missing_file_fails_fast(tmp_path: Path) -> None:
    path = tmp_path / "short.flac"
    sf.write(path, tone(16000, 0.2), 16000)
    ring = RingBuffer(MODEL_RATE)
    source = FileInput("loop", FileSource(type="file", path=path, realtime=False, loop=True), ring, MODEL_RATE)
    source.start()
    try:
        got = drain(ring, 3 * MODEL_RATE, pause=0.0, timeout=10.0)
    finally:
        source.stop()
    assert got.shape[0] >= 3 * MODEL_RATE  # fifteen times the file
    assert not source.finished.is_set()
    missing = FileInput("gone", FileSource(type="file", path=tmp_path / "nope.wav"), ring, MODEL_RATE)
    with pytest.raises(SourceError, match="cannot read sound file"):
        missing.start()


# --- pipe source -------------------------------------------------------------------------------------------------


def pipe_config(script: str, **overrides: object) -> PipeSource:
    fields: dict[str, object] = {"type": "pipe", "command": [sys.executable, "-c", textwrap.dedent(script)]}
    fields.update(sample_rate=48000, restart_max_seconds=1.0)
    fields.update(overrides)
    return PipeSource.model_validate(fields)


def test_pipe_s16le_arrives_intact() -> None:
    script = """
        import sys, time
        import numpy as np
        t = np.arange(48000) / 48000
        left = np.round(8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2")
        right = np.round(16000 * np.sin(2 * np.pi * 1000 * t)).astype("<i2")
        data = np.stack([left, right], axis=1).tobytes()
        for i in range(0, len(data), 999):  # odd-sized writes: frames split across reads
            sys.stdout.buffer.write(data[i : i + 999])
            sys.stdout.buffer.flush()
        time.sleep(30)
    """
    ring = RingBuffer(2 * MODEL_RATE)
    source = build_source("cam", pipe_config(script, channels=2, channel=1), ring, MODEL_RATE)
    source.start()
    try:
        assert wait_for(lambda: ring.total_written >= 48000, 10.0)
    finally:
        source.stop()
    t = np.arange(48000) / 48000
    expected = np.round(16000 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32) / 32768
    np.testing.assert_array_equal(ring.read(0, 48000), expected)
    assert source.status().restarts == 0


def test_pipe_restarts_with_growing_backoff_and_logs_stderr(caplog: pytest.LogCaptureFixture) -> None:
    script = """
        import sys, time
        print("camera unreachable", file=sys.stderr, flush=True)
        sys.stdout.buffer.write(bytes(9600))
        sys.stdout.flush()
        time.sleep(0.2)
        sys.exit(3)
    """
    caplog.set_level(logging.WARNING, logger="clapd.daemon.sources.pipe")

    def stderr_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage() == "door: camera unreachable"]

    ring = RingBuffer(MODEL_RATE)
    source = PipeInput("door", pipe_config(script, sample_rate=16000), ring, MODEL_RATE, backoff_initial=0.05)
    source.start()
    try:
        # Four runs have ended and their stderr is logged (by a thread of each run's own, so waited for too).
        assert wait_for(lambda: source.status().restarts >= 4 and len(stderr_lines()) >= 4, 15.0)
    finally:
        source.stop()
    status = source.status()
    assert status.outages >= 4 and status.last_error == "command exited with status 3"
    delays = [r.args[-1] for r in caplog.records if "restarting in" in r.getMessage()]
    assert delays[:5] == [0.05, 0.1, 0.2, 0.4, 0.8][: len(delays[:5])] and len(delays) >= 4
    assert ring.total_written >= 4 * 14000  # each run: 0.3 s of silence at 16 kHz -> 14400 samples at 48 kHz


def test_pipe_backoff_resets_after_a_healthy_run(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="clapd.daemon.sources.pipe")
    config = pipe_config("import time; time.sleep(0.3)")
    source = PipeInput("flaky", config, RingBuffer(MODEL_RATE), MODEL_RATE, backoff_initial=0.05, healthy_after=0.2)
    source.start()
    try:
        assert wait_for(lambda: source.status().restarts >= 3, 10.0)
    finally:
        source.stop()
    delays = [r.args[-1] for r in caplog.records if "restarting in" in r.getMessage()]
    assert len(delays) >= 3 and set(delays) == {0.05}


def test_pipe_stop_kills_a_command_that_ignores_sigterm(caplog: pytest.LogCaptureFixture) -> None:
    script = """
        import signal, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", file=sys.stderr, flush=True)
        time.sleep(60)
    """
    caplog.set_level(logging.WARNING, logger="clapd.daemon.sources.pipe")
    source = PipeInput("stubborn", pipe_config(script), RingBuffer(MODEL_RATE), MODEL_RATE, terminate_seconds=0.5)
    source.start()
    # Its handler is installed once it says so on stderr, which the source logs.
    assert wait_for(lambda: any(r.getMessage() == "stubborn: ready" for r in caplog.records), 10.0)
    proc = source._proc
    began = time.monotonic()
    source.stop()
    stopped_after = time.monotonic() - began
    assert proc is not None and proc.poll() is not None
    assert source.status().state == "stopped"
    assert "stubborn: command did not end on SIGTERM" in [r.getMessage() for r in caplog.records]
    # SIGKILL after the 0.5 s grace, not after the command's 60 s sleep.
    assert 0.5 <= stopped_after < 30.0


def test_pipe_missing_command_fails_fast() -> None:
    config = PipeSource(type="pipe", command=["no-such-command-clapd"], sample_rate=48000)
    with pytest.raises(SourceError, match="not found"):
        PipeInput("x", config, RingBuffer(MODEL_RATE), MODEL_RATE).start()


# --- microphone through real PortAudio on a virtual ALSA device ------------------------------------------------

MIC_CHILD = """
import json, logging, sys, time
from pathlib import Path

import numpy as np

WORK = Path(sys.argv[1])
sys.path.insert(0, sys.argv[2])  # tests/
from virtual_alsa import ToneFeeder, VirtualAlsaDevice

DEVICE = VirtualAlsaDevice("clapd_test", rate=44100, channels=2, description="clapd test tone")
CONFIG_FILE = WORK / "asound.conf"


class FailedAttempts(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record):
        self.count += "reopen attempt" in record.getMessage()


def wait_for(condition, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not condition():
        time.sleep(0.02)
    return condition()


def main():
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    failed = FailedAttempts()
    logging.getLogger("clapd.daemon.sources.mic").addHandler(failed)
    logging.getLogger("clapd.daemon.sources.mic").setLevel(logging.DEBUG)
    feeder = ToneFeeder(WORK / "tone.fifo", DEVICE, 1000.0)
    DEVICE.define(CONFIG_FILE, feeder.fifo)

    from clapd.daemon.config import MicSource
    from clapd.daemon.ring import RingBuffer
    from clapd.daemon.sources import Backoff, mic

    class RecordingBackoff(Backoff):
        delays = []

        def next_delay(self):
            self.delays.append(super().next_delay())
            return self.delays[-1]

    result = {"devices": [(d.name, d.default_rate, d.host_api) for d in mic.list_input_devices()]}
    try:
        mic.MicInput("m", MicSource(type="mic", device="no-such-mic"), RingBuffer(48000), 48000).start()
    except mic.DeviceNotFoundError as e:
        result["missing_error"] = str(e)
    ring = RingBuffer(10 * 48000)
    backoff = RecordingBackoff(0.2, 1.0)
    source = mic.MicInput("kitchen", MicSource(type="mic", device="clapd_test"), ring, 48000, backoff=backoff)
    source.start()
    result["tone_arrived"] = wait_for(lambda: ring.total_written >= 72000, 10)
    np.save(WORK / "tone.npy", ring.read(24000, 48000))
    # The device leaves the ALSA configuration and its stream ends. The ALSA file plugin cannot fail a running
    # stream, so the end is PortAudio's own: the stream is aborted here, which is what PortAudio reports (the
    # finished callback) when a device errors out.
    DEVICE.remove(CONFIG_FILE)
    with mic._portaudio_lock:
        source._stream.abort()
    # Three reopen attempts have failed, whatever the machine's speed; the device is back for the fourth.
    result["retrying"] = wait_for(lambda: failed.count >= 3, 10)
    result["during"] = source.status().state
    DEVICE.define(CONFIG_FILE, feeder.fifo)
    written = ring.total_written
    result["resumed"] = wait_for(lambda: ring.total_written > written + 48000, 10)
    status = source.status()
    source.stop()
    feeder.stop()
    result.update(after=status.state, outages=status.outages, restarts=status.restarts, delays=backoff.delays)
    result.update(stopped=source.status().state)
    print(json.dumps(result))


main()
"""


@pytest.mark.skipif(ctypes.util.find_library("portaudio") is None, reason="PortAudio is not installed (libportaudio2)")
def test_mic_through_portaudio_on_a_virtual_alsa_device(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", MIC_CHILD, str(tmp_path), str(Path(__file__).parent)],
        env=alsa_environment(tmp_path / "asound.conf"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    log = [line for line in done.stderr.splitlines() if "clapd.daemon" in line]

    assert ["clapd_test", 44100, "ALSA"] in result["devices"]
    assert "no input device 'no-such-mic'; available input devices: [" in result["missing_error"]
    assert "clapd_test (" in result["missing_error"]

    assert result["tone_arrived"]
    captured = np.load(tmp_path / "tone.npy")
    assert peak_hz(captured) == pytest.approx(TONE_HZ, abs=2.0)
    assert rms(captured) == pytest.approx(0.75 * 0.5 / np.sqrt(2), rel=0.01)  # (1/2 + 1/4) / 2 of full scale

    assert result["retrying"] and result["during"] == "restarting"
    assert result["resumed"] and result["after"] == "running" and result["stopped"] == "stopped"
    assert result["outages"] == 1 and result["restarts"] >= 4  # three failed attempts, then the one that worked
    assert result["delays"][:4] == [0.2, 0.4, 0.8, 1.0]
    assert sum("reopening with back-off" in line for line in log) == 1  # once per outage, not per retry
    assert sum("capturing again after" in line for line in log) == 1
