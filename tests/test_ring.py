"""The ring buffer: order across wrap-around, overrun accounting, bounded memory, and a racing writer and reader."""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest

from clapd.daemon.ring import NotYetWritten, Overrun, RingBuffer


def ramp(start: int, n: int) -> np.ndarray:
    """Samples whose values are their own indices (exact in float32 below 2**24)."""
    return np.arange(start, start + n, dtype=np.float32)


def test_order_and_contents_across_wraparound() -> None:
    ring = RingBuffer(100)
    written = 0
    for size in (30, 45, 50, 1, 99, 7, 64):
        ring.write(ramp(written, size))
        written += size
        start = ring.latest_available_start(min(written, 100))
        np.testing.assert_array_equal(ring.read(start, written - start), ramp(start, written - start))
    assert ring.total_written == written
    out = np.full(80, -1.0, dtype=np.float32)
    got = ring.read(written - 60, 60, out=out)
    assert got.base is out or got is out
    np.testing.assert_array_equal(out[:60], ramp(written - 60, 60))


def test_not_yet_written() -> None:
    ring = RingBuffer(64)
    ring.write(ramp(0, 10))
    with pytest.raises(NotYetWritten) as caught:
        ring.read(5, 10)
    assert caught.value.missing == 5
    with pytest.raises(NotYetWritten):
        ring.latest_available_start(11)
    assert ring.latest_available_start(10) == 0


def test_overrun_reports_the_lost_samples() -> None:
    ring = RingBuffer(100)
    ring.write(ramp(0, 130))  # one block longer than the ring: samples 0..29 never survive
    with pytest.raises(Overrun) as caught:
        ring.read(10, 50)
    assert caught.value.lost == 20
    assert caught.value.oldest_available == 30
    ring.write(ramp(130, 90))  # the writer laps a reader still at 30
    with pytest.raises(Overrun) as caught:
        ring.read(30, 100)
    assert caught.value.lost == 90
    assert (ring.overruns, ring.lost_samples) == (2, 110)
    np.testing.assert_array_equal(ring.read(120, 100), ramp(120, 100))


def test_memory_stays_bounded() -> None:
    ring = RingBuffer(1000)
    buffer_bytes = ring._buffer.nbytes
    for i in range(200):
        ring.write(ramp(i * 777, 777))
    ring.write(np.zeros(50_000, dtype=np.float32))
    assert ring._buffer.nbytes == buffer_bytes == 4000
    assert ring.total_written == 200 * 777 + 50_000


def test_lossless_writer_waits_for_the_reader() -> None:
    ring = RingBuffer(100)
    ring.write(ramp(0, 80))
    assert not ring.wait_for_space(30, timeout=0.01)
    threading.Timer(0.05, ring.mark_consumed, args=(20,)).start()
    assert ring.wait_for_space(30, timeout=5.0)
    assert ring.free_space() == 40


def test_racing_writer_and_reader_never_see_a_torn_block() -> None:
    """Every sample a read returns is the one written at its index; overwritten ones are reported, not returned."""
    ring = RingBuffer(4096)
    stop = threading.Event()
    failures: list[str] = []
    counts = {"reads": 0, "overruns": 0}

    def write() -> None:
        written = 0
        while not stop.is_set():
            size = 1 + (written * 7919) % 1500
            ring.write(indexed(written, size))
            written += size

    def read() -> None:
        out = np.empty(ring.capacity, dtype=np.float32)
        rng = np.random.default_rng(0)
        while not stop.is_set():
            n = int(rng.integers(1, ring.capacity))
            start = max(0, ring.total_written - n - int(rng.integers(0, ring.capacity)))
            try:
                got = ring.read(start, n, out)
            except Overrun:
                counts["overruns"] += 1
                continue
            except NotYetWritten:
                continue
            counts["reads"] += 1
            if not np.array_equal(got, indexed(start, n)):
                failures.append(f"torn read of [{start}, {start + n})")

    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, mid-copy included
    threads = [threading.Thread(target=write), threading.Thread(target=read)]
    try:
        for t in threads:
            t.start()
        time.sleep(2.0)
    finally:
        stop.set()
        for t in threads:
            t.join(5.0)
        sys.setswitchinterval(switch_interval)
    assert not failures, failures[:5]
    assert counts["reads"] > 100 and counts["overruns"] > 10, counts
    assert ring.overruns == counts["overruns"]


def indexed(start: int, n: int) -> np.ndarray:
    """Each sample's value is its index modulo 2**24 (exact in float32)."""
    return (np.arange(start, start + n, dtype=np.int64) % (1 << 24)).astype(np.float32)
