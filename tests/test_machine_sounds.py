"""The machine sound generators (clapd.models.machine_sounds): deterministic, of the documented length and level,
with the faults really in them, and a planted stream (clapd.models.machine_streams) whose faults lie only where its
plan says."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile

from clapd.daemon.anomaly import NormalBank
from clapd.daemon.anomaly.log_mel import log_mel_stats, mel_bank
from clapd.models import machine_sounds as ms
from clapd.models import machine_streams as mst

SR = ms.SAMPLE_RATE


def rms_dbfs(x: np.ndarray) -> float:
    return 10 * math.log10(float(np.mean(np.asarray(x, np.float64) ** 2)))


def band_power_db(x: np.ndarray, lo: float, hi: float) -> float:
    spectrum = np.abs(np.fft.rfft(np.asarray(x, np.float64))) ** 2
    f = np.fft.rfftfreq(len(x), 1.0 / SR)
    return 10 * math.log10(float(spectrum[(f >= lo) & (f < hi)].sum()))


def test_clips_are_deterministic_per_seed() -> None:
    a = ms.machine_clip("pump", "full", 7, 2.0, fault="bearing", fault_snr_db=-6.0)
    b = ms.machine_clip("pump", "full", 7, 2.0, fault="bearing", fault_snr_db=-6.0)
    c = ms.machine_clip("pump", "full", 8, 2.0, fault="bearing", fault_snr_db=-6.0)
    assert np.array_equal(a.audio, b.audio)
    assert not np.allclose(a.audio, c.audio)
    assert a.rotation_hz != c.rotation_hz  # drawn anew per clip, around the condition's rate
    assert abs(a.rotation_hz / ms.MACHINES["pump"].condition("full").rotation_hz - 1) <= 0.03


@pytest.mark.parametrize("machine", list(ms.MACHINES))
def test_length_level_and_conditions(machine: str) -> None:
    conditions = ms.MACHINES[machine].condition_names
    assert len(conditions) >= 3
    rates = []
    for condition in conditions:
        clip = ms.machine_clip(machine, condition, 0, 1.5, background_snr_db=6.0, level_dbfs=-24.0)
        assert clip.audio.dtype == np.float32 and clip.audio.shape == (round(1.5 * SR),)
        assert rms_dbfs(clip.audio) == pytest.approx(-24.0, abs=0.01)
        assert np.max(np.abs(clip.audio)) <= 1.0
        assert clip.fault is None and clip.fault_snr_db == -math.inf
        rates.append(clip.rotation_hz)
    assert len(set(np.round(rates))) == len(conditions)  # the conditions run at different speeds


def test_a_faulty_clip_is_its_normal_clip_plus_the_fault() -> None:
    normal = ms.machine_clip("fan", "high", 3, 2.0)
    for fault in ms.FAULTS:
        faulty = ms.machine_clip("fan", "high", 3, 2.0, fault=fault, fault_snr_db=0.0)
        added = faulty.audio.astype(np.float64) - normal.audio
        # The fault's power is the body's (0 dB); the body is 12 dB over the background: the clip's level plus
        # the fault's share of it.
        body_dbfs = ms.LEVEL_DBFS - 10 * math.log10(1 + 10 ** (-ms.BACKGROUND_SNR_DB / 10))
        assert rms_dbfs(added) == pytest.approx(body_dbfs, abs=0.1), fault


def envelope_spectrum(x: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """The spectrum of the envelope of `x` band-passed to [lo, hi] Hz (analytic signal by FFT)."""
    spectrum = np.fft.fft(np.asarray(x, np.float64))
    f = np.fft.fftfreq(len(x), 1.0 / SR)
    analytic = np.fft.ifft(np.where((f >= lo) & (f < hi), 2 * spectrum, 0))
    envelope = np.abs(analytic)
    return np.fft.rfftfreq(len(x), 1.0 / SR), np.abs(np.fft.rfft(envelope - envelope.mean()))


@pytest.mark.parametrize("machine", list(ms.MACHINES))
def test_a_bearing_fault_shows_at_its_defect_frequency(machine: str) -> None:
    clip = ms.machine_clip(machine, ms.MACHINES[machine].condition_names[1], 11, 4.0, fault="bearing")
    freqs, envelope = envelope_spectrum(clip.audio, 2000.0, 8000.0)
    search = (freqs > 20.0) & (freqs < 400.0)
    peak = freqs[search][np.argmax(envelope[search])]
    assert peak == pytest.approx(clip.fault_hz, rel=0.03)
    assert 3.0 <= clip.fault_hz / clip.rotation_hz <= 5.5


def test_a_leak_raises_the_high_band_and_a_worn_gear_whines_at_its_mesh() -> None:
    normal = ms.machine_clip("gearbox", "medium", 5, 3.0)
    leak = ms.machine_clip("gearbox", "medium", 5, 3.0, fault="leak", fault_snr_db=-12.0)
    assert band_power_db(leak.audio, 8000, 16000) > band_power_db(normal.audio, 8000, 16000) + 6.0
    assert band_power_db(leak.audio, 50, 1000) == pytest.approx(band_power_db(normal.audio, 50, 1000), abs=0.5)
    whine = ms.machine_clip("gearbox", "medium", 5, 3.0, fault="gear_whine", fault_snr_db=-6.0)
    f = whine.fault_hz  # the carrier; the sidebands and the shaft's wobble lie within 2 % of it
    assert 600 <= f <= 4000
    assert band_power_db(whine.audio, 0.98 * f, 1.02 * f) > band_power_db(normal.audio, 0.98 * f, 1.02 * f) + 10.0


def test_log_mel_baseline_and_a_normal_bank_separate_obvious_faults() -> None:
    """The benchmark's baseline: log-mel statistics of clips of every condition in the daemon's normal bank."""
    mels = mel_bank()
    conditions = ms.MACHINES["pump"].condition_names

    def features(seed: int, condition: str, fault: str | None = None) -> np.ndarray:
        clip = ms.machine_clip("pump", condition, seed, 2.0, fault=fault, fault_snr_db=0.0)
        return log_mel_stats(clip.audio, mels)

    bank = NormalBank.fit(np.stack([features(seed, c) for seed in range(3) for c in conditions]))
    normal = bank.score(np.stack([features(100 + i, c) for i, c in enumerate(conditions)]))
    faulty = bank.score(np.stack([features(200 + i, c, f) for i, c in enumerate(conditions) for f in ms.FAULTS]))
    assert faulty.min() > normal.max()


def test_a_stream_holds_its_faults_only_where_planned(tmp_path) -> None:
    faults = [mst.PlannedFault("bearing", 2.0, 6.0, -6.0), mst.PlannedFault("leak", 12.0, 15.5)]
    stream = mst.make_machine_stream("pump", 3, 20.0, condition="half", faults=faults)
    clean = mst.make_machine_stream("pump", 3, 20.0, condition="half", faults=[])
    assert stream.audio.shape == (20 * SR,) and stream.faults == tuple(faults)
    assert rms_dbfs(clean.audio) == pytest.approx(ms.LEVEL_DBFS, abs=0.01)
    differs = np.nonzero(stream.audio != clean.audio)[0] / SR
    assert differs.size and all(any(f.start_s <= t < f.end_s for f in faults) for t in differs[:: SR // 10])
    assert differs.min() >= 2.0 and differs.max() < 15.5 and not np.any((differs >= 6.0) & (differs < 12.0))
    added = stream.audio.astype(np.float64) - clean.audio
    assert rms_dbfs(added[round(12.5 * SR) : 15 * SR]) > rms_dbfs(clean.audio) - 3.0  # the leak at 0 dB


def test_stream_command_line_writes_audio_and_ground_truth(tmp_path) -> None:
    wav = tmp_path / "fan.wav"
    assert mst.main(["--machine", "fan", "--seed", "2", "--seconds", "50", "-o", str(wav)]) == 0
    audio, rate = soundfile.read(wav, dtype="float32")
    truth = json.loads(wav.with_suffix(".json").read_text())
    assert rate == SR and audio.shape == (50 * SR,)
    assert np.array_equal(audio, mst.make_machine_stream("fan", 2, 50.0).audio)
    assert truth["machine"] == "fan" and truth["condition"] == "low" and truth["seconds"] == 50.0
    assert truth["faults"] == [{"fault": "bearing", "start_s": 30.0, "end_s": 45.0, "snr_db": ms.FAULT_SNR_DB}]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: ms.machine_clip("lathe", "slow", 0), "unknown machine 'lathe'"),
        (lambda: ms.machine_clip("fan", "turbo", 0), "fan has no condition 'turbo'"),
        (lambda: ms.machine_clip("fan", "low", 0, fault="rust"), "unknown fault 'rust'"),
        (
            lambda: mst.make_machine_stream(
                "fan", 0, 20.0, faults=[mst.PlannedFault("leak", 1, 5), mst.PlannedFault("leak", 7, 9)]
            ),
            "less than 5.0 s after",
        ),
        (
            lambda: mst.make_machine_stream("fan", 0, 20.0, faults=[mst.PlannedFault("leak", 15, 25)]),
            "does not lie within",
        ),
    ],
)
def test_bad_arguments_are_named(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
