"""The systemd unit (verified and rated offline by systemd-analyze), `clapd install-service`, and the sd_notify
protocol spoken to a real AF_UNIX datagram socket."""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from clapd.daemon.notify import Notifier

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "clapd.service"
RECEIVE_TIMEOUT = 2.0  # seconds; a datagram sent on a local socket arrives at once
ACCEPTED_RATINGS = ("OK", "SAFE", "PERFECT")  # systemd-analyze's words for an exposure below 5.0

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is missing (scripts/setup.sh installs systemd)"
)


def install_service(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clapd", "install-service", "--root", str(root), "--no-systemctl", *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(params=["generic", "jetson"])
def installed(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """The unit as `clapd install-service` writes it (ExecStart: this venv's clapd); returns its folder."""
    if request.param == "jetson":
        (tmp_path / "etc").mkdir()
        (tmp_path / "etc" / "nv_tegra_release").write_text("# R36 (release)\n")
    result = install_service(tmp_path)
    assert result.returncode == 0, result.stderr
    unit_dir = tmp_path / "etc" / "systemd" / "system"
    assert (unit_dir / "clapd.service.d" / "jetson.conf").exists() == (request.param == "jetson")
    return unit_dir


@needs_systemd_analyze
def test_installed_unit_verifies(installed: Path) -> None:
    text = (installed / "clapd.service").read_text()
    executable = re.search(r"^ExecStart=(\S+) run -c /etc/clapd/config.yaml$", text, re.MULTILINE)
    assert executable is not None and os.access(executable.group(1), os.X_OK)
    result = analyze("verify", "--man=no", "--recursive-errors=no", "./clapd.service", cwd=installed)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr  # warnings count as failures


@needs_systemd_analyze
def test_verify_rejects_a_missing_executable(tmp_path: Path) -> None:
    """The template's /opt path is absent here: verify really checks ExecStart=, so the test above means it."""
    shutil.copy(UNIT, tmp_path / "clapd.service")
    result = analyze("verify", "--man=no", "--recursive-errors=no", "./clapd.service", cwd=tmp_path)
    assert result.returncode != 0 and "/opt/clapd/.venv/bin/clapd" in result.stderr


@needs_systemd_analyze
def test_security_exposure_is_ok_or_better(installed: Path) -> None:
    result = analyze("security", "--offline=yes", "./clapd.service", cwd=installed)
    overall = re.search(r"Overall exposure level for clapd\.service: ([0-9.]+) (\w+)", result.stdout)
    assert overall is not None, result.stdout + result.stderr
    assert overall.group(2) in ACCEPTED_RATINGS, f"exposure {overall.group(1)} rated {overall.group(2)}"


def test_install_service_keeps_config_and_unit_without_force(tmp_path: Path) -> None:
    config = tmp_path / "etc" / "clapd" / "config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("# mine\n")
    assert install_service(tmp_path).returncode == 0
    assert config.read_text() == "# mine\n"
    unit = tmp_path / "etc" / "systemd" / "system" / "clapd.service"
    unit.write_text("# edited\n")
    refused = install_service(tmp_path)
    assert refused.returncode == 1 and "--force" in refused.stderr
    assert unit.read_text() == "# edited\n"
    assert install_service(tmp_path, "--force").returncode == 0
    assert "Type=notify" in unit.read_text() and config.read_text() == "# mine\n"


def test_install_service_copies_the_home_config(tmp_path: Path) -> None:
    assert install_service(tmp_path).returncode == 0
    installed = tmp_path / "etc" / "clapd" / "config.yaml"
    assert installed.read_text() == (REPO / "configs" / "home.yaml").read_text()
    assert installed.stat().st_mode & 0o777 == 0o644  # the service's dynamic user must read it


def test_memory_deny_write_execute_would_break_capture() -> None:
    """Why the unit leaves MemoryDenyWriteExecute= off: under the kernel's equivalent (PR_SET_MDWE, Linux 6.3+)
    sounddevice cannot create its PortAudio callback."""
    assert not re.search(r"^MemoryDenyWriteExecute=(yes|true|1)", UNIT.read_text(), re.MULTILINE)
    probe = (
        "import ctypes, sys\n"
        "if ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) != 0: sys.exit(3)\n"  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
        "try:\n    import sounddevice as sd\nexcept OSError: sys.exit(4)\n"
        "try:\n    sd._ffi.callback('PaStreamCallback', error=sd._lib.paAbort)(lambda *a: 0)\n"
        "except MemoryError: sys.exit(0)\n"
        "sys.exit(1)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False)
    if result.returncode in (3, 4):
        pytest.skip("this kernel has no PR_SET_MDWE" if result.returncode == 3 else "PortAudio is missing")
    assert result.returncode == 0, "a cffi callback worked without write+execute memory: reconsider the unit"


# --- sd_notify -------------------------------------------------------------------------------------------------


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket standing in for systemd's, and its $NOTIFY_SOCKET spelling."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(RECEIVE_TIMEOUT)
    with tempfile.TemporaryDirectory(prefix="sdn") as folder:  # short: AF_UNIX paths are at most 107 bytes
        if request.param == "path":
            address = f"{folder}/notify"
            sock.bind(address)
        else:
            address = f"@clapd-test-{uuid.uuid4().hex}"
            sock.bind("\0" + address[1:])
        yield sock, address
        sock.close()


def receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def assert_nothing_queued(sock: socket.socket) -> None:
    """sendto on a local datagram socket queues before it returns, so a non-blocking read is conclusive."""
    sock.setblocking(False)
    try:
        with pytest.raises(BlockingIOError):
            sock.recv(4096)
    finally:
        sock.settimeout(RECEIVE_TIMEOUT)


def test_ready_with_status(listener: tuple[socket.socket, str]) -> None:
    sock, address = listener
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": address})
    assert notifier.enabled and notifier.watchdog_interval is None
    notifier.ready("listening: 2 streams\n4 detections")
    assert receive(sock) == "READY=1\nSTATUS=listening: 2 streams 4 detections"
    notifier.status("loading the model")
    assert receive(sock) == "STATUS=loading the model"
    notifier.close()


def test_stopping_and_reloading(listener: tuple[socket.socket, str]) -> None:
    sock, address = listener
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": address})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading("reloading the config")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    fields = dict(line.split("=", 1) for line in receive(sock).split("\n"))
    assert fields["RELOADING"] == "1" and fields["STATUS"] == "reloading the config"
    assert before <= int(fields["MONOTONIC_USEC"]) <= after
    notifier.stopping()
    assert receive(sock) == "STOPPING=1"
    notifier.extend_timeout(90)
    assert receive(sock) == "EXTEND_TIMEOUT_USEC=90000000"


def test_watchdog_is_rate_limited_to_half_the_interval(listener: tuple[socket.socket, str]) -> None:
    sock, address = listener
    now = [100.0]
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}
    notifier = Notifier.from_environment(env, clock=lambda: now[0])
    assert notifier.watchdog_interval == 10.0
    notifier.watchdog()
    notifier.watchdog()
    assert receive(sock) == "WATCHDOG=1"
    assert_nothing_queued(sock)
    now[0] += 4.9
    notifier.watchdog()
    assert_nothing_queued(sock)
    now[0] += 0.1  # half the interval since the last ping
    notifier.watchdog()
    assert receive(sock) == "WATCHDOG=1"
    assert_nothing_queued(sock)


def test_watchdog_from_many_threads_sends_once(listener: tuple[socket.socket, str]) -> None:
    sock, address = listener
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "30000000"}, clock=lambda: 1.0)
    threads = [threading.Thread(target=lambda: [notifier.watchdog() for _ in range(200)]) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(RECEIVE_TIMEOUT)
    assert receive(sock) == "WATCHDOG=1"
    assert_nothing_queued(sock)


def test_watchdog_meant_for_another_pid_is_off(listener: tuple[socket.socket, str]) -> None:
    sock, address = listener
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    notifier = Notifier.from_environment(env)
    assert notifier.watchdog_interval is None
    notifier.watchdog()
    assert_nothing_queued(sock)
    notifier.ready()
    assert receive(sock) == "READY=1"  # only the watchdog is someone else's


def test_without_notify_socket_nothing_happens() -> None:
    notifier = Notifier.from_environment({"WATCHDOG_USEC": "10000000"})
    assert not notifier.enabled and notifier.watchdog_interval is None
    notifier.ready("x")
    notifier.watchdog()
    notifier.reloading()
    notifier.stopping()
    notifier.close()


def test_a_vanished_socket_is_logged_once_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    with tempfile.TemporaryDirectory(prefix="sdn") as folder:
        address = f"{folder}/notify"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(address)
        sock.close()
        os.unlink(address)  # systemd went away
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "2000000"})
        with caplog.at_level(logging.WARNING, logger="clapd.daemon.notify"):
            notifier.ready("listening")
            notifier.watchdog()
            notifier.watchdog()
            notifier.stopping()
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as back:  # and when it returns, messages flow again
            back.settimeout(RECEIVE_TIMEOUT)
            back.bind(address)
            notifier.watchdog()  # the failed pings did not count as sent
            assert receive(back) == "WATCHDOG=1"
        notifier.close()
