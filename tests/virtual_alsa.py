"""A virtual ALSA capture device, for tests that capture through real PortAudio.

The device is ALSA's `file` plugin on a `null` slave: it reads its capture data ("infile") as raw interleaved S16LE
frames from a FIFO that the test fills in real time, which paces the capture. PortAudio reads the ALSA
configuration when it initialises (and at every re-scan), so the device is defined in a file of the test's that
`alsa_environment` names to ALSA, in a child process started with that environment.

No torch or transformers here: tests/test_mic_recovery.py imports this module in a child script.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SYSTEM_ALSA_CONFIG = "/usr/share/alsa/alsa.conf"
FULL_SCALE = 32_768  # S16LE
FEED_SECONDS = 0.05  # s of audio per FIFO write


def alsa_environment(config_file: Path) -> dict[str, str]:
    """This process's environment with ALSA reading the system's configuration, then `config_file`."""
    return dict(os.environ, ALSA_CONFIG_PATH=f"{SYSTEM_ALSA_CONFIG}:{config_file}")


@dataclass(frozen=True, slots=True)
class VirtualAlsaDevice:
    """A capture device `name` delivering `channels` interleaved S16LE channels at `rate` (Hz)."""

    name: str
    rate: int  # Hz
    channels: int
    description: str | None = None  # what PortAudio's device list shows (an ALSA hint); None: no hint

    def definition(self, fifo: Path) -> str:
        """The device's ALSA configuration, reading its frames from `fifo`."""
        hint = f'\n  hint {{ show on description "{self.description}" }}' if self.description else ""
        return (
            f"pcm.{self.name} {{\n"
            "  type plug\n"
            "  slave {\n"
            f'    pcm {{ type file slave.pcm "null" file "/dev/null" infile "{fifo}" format "raw" }}\n'
            f"    format S16_LE rate {self.rate} channels {self.channels}\n"
            f"  }}{hint}\n"
            "}\n"
        )

    def define(self, config_file: Path, fifo: Path) -> None:
        """Define the device (again) in `config_file`; PortAudio sees it at its next (re)initialisation."""
        config_file.write_text(self.definition(fifo))

    def remove(self, config_file: Path) -> None:
        """Take the device away, as unplugging a USB microphone does: a re-scan no longer lists it."""
        config_file.write_text("")


class ToneFeeder:
    """Makes the FIFO `fifo` and writes a sine tone of `hz` into it in real time until `stop()`.

    Channel k carries the tone at half of full scale divided by 2**k (left 1/2, right 1/4). The writer end stays
    open until `close()`: closing it is what wakes a reader blocked on the FIFO.
    """

    def __init__(self, fifo: Path, device: VirtualAlsaDevice, hz: float) -> None:
        frames = round(device.rate * FEED_SECONDS)
        if not float(hz * frames / device.rate).is_integer():
            raise ValueError(f"{hz} Hz does not fit whole periods into {frames} frames at {device.rate} Hz")
        os.mkfifo(fifo)
        self.fifo = fifo
        self._fd = os.open(fifo, os.O_RDWR)  # read-write: neither side blocks opening it
        tone = np.sin(2 * np.pi * hz * np.arange(frames) / device.rate)
        levels = (FULL_SCALE // 2) // 2 ** np.arange(device.channels)
        self._chunk = np.round(tone[:, None] * levels).astype("<i2").tobytes()
        self._frames, self._rate = frames, device.rate
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._feed, name=f"feed-{fifo.name}", daemon=True)
        self._thread.start()

    def _feed(self) -> None:
        began, written = time.monotonic(), 0
        while not self._done.is_set():
            os.write(self._fd, self._chunk)
            written += self._frames
            time.sleep(max(0.0, written / self._rate - (time.monotonic() - began)))

    def stop(self) -> None:
        """No more audio (the writer end stays open)."""
        self._done.set()
        self._thread.join(5.0)

    def close(self) -> None:
        os.close(self._fd)
