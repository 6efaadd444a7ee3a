"""`clapd install-service`: the systemd unit and /etc/clapd/config.yaml, with the helpers that write them."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

UNIT_FILE = Path("etc/systemd/system/clapd.service")
JETSON_DROP_IN = Path("etc/systemd/system/clapd.service.d/jetson.conf")
CONFIG_FILE = Path("etc/clapd/config.yaml")
# Paths the unit's sandbox hides (ProtectHome=yes, PrivateTmp=yes): an ExecStart= there cannot start.
HIDDEN_FROM_SERVICE = ("/home/", "/root/", "/run/user/", "/tmp/", "/var/tmp/")


def add_install_service(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "install-service",
        help="install the systemd unit and /etc/clapd/config.yaml (as root)",
        description="Writes /etc/systemd/system/clapd.service running this clapd, creates /etc/clapd/config.yaml "
        "from the home example unless it exists, and runs systemctl daemon-reload.",
    )
    parser.add_argument("--root", type=Path, default=Path("/"), help="install under this directory (packagers, tests)")
    parser.add_argument("--no-systemctl", action="store_true", help="do not run systemctl daemon-reload")
    parser.add_argument("--force", action="store_true", help="replace an existing unit file")
    parser.set_defaults(run=_run_install_service)


def _run_install_service(args: argparse.Namespace) -> int:
    unit_path, config_path = args.root / UNIT_FILE, args.root / CONFIG_FILE
    if unit_path.exists() and not args.force:
        print(f"clapd install-service: {unit_path} exists (--force replaces it)", file=sys.stderr)
        return 1
    executable = _clapd_executable()
    try:
        _write(unit_path, _unit_text(_shipped_file("systemd", "clapd.service").read_text(), executable))
        if (args.root / "etc/nv_tegra_release").exists():  # a Jetson: its GPU nodes are not nvidia* (README)
            _write(args.root / JETSON_DROP_IN, _shipped_file("systemd", "jetson.conf").read_text())
        config_created = not config_path.exists()
        if config_created:
            _write(config_path, _shipped_file("configs", "home.yaml").read_text())
    except (OSError, ValueError) as e:
        print(f"clapd install-service: {e}", file=sys.stderr)
        return 1
    print(f"wrote {unit_path} (ExecStart: {executable})")
    print(f"{'created' if config_created else 'kept the existing'} {config_path}")
    if executable.startswith(HIDDEN_FROM_SERVICE):
        print(f"warning: the service cannot see {executable}: install clapd under /opt or /usr/local", file=sys.stderr)
    if not args.no_systemctl and args.root.resolve() == Path("/") and not _daemon_reload():
        return 1
    _print_next_steps(config_path)
    return 0


def _clapd_executable() -> str:
    """The clapd being run, so a virtual environment's install is the one the service starts."""
    invoked = Path(sys.argv[0])
    candidates = [invoked] if invoked.name == "clapd" else []
    candidates.append(Path(sys.executable).parent / "clapd")  # `python -m clapd`: the script next to python
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate.absolute())
    return shutil.which("clapd") or "/usr/local/bin/clapd"


def _shipped_file(folder: str, name: str) -> Path:
    """A file of the repository's systemd/ or configs/: package data in a wheel, the checkout in editable mode."""
    package = Path(__file__).resolve().parent.parent  # clapd/, not clapd/cli/
    candidates = [package / folder / name, package.parent / folder / name]
    return next((path for path in candidates if path.is_file()), candidates[0])  # a missing one: its OSError


def _unit_text(template: str, executable: str) -> str:
    escaped = executable.replace("%", "%%").replace("$", "$$")  # unit-file specifiers and variables
    if any(c.isspace() for c in escaped):
        escaped = f'"{escaped}"'
    text, count = re.subn(r"^ExecStart=\S+", lambda _: f"ExecStart={escaped}", template, flags=re.MULTILINE)
    if count != 1:
        raise ValueError(f"the unit template has {count} ExecStart= lines, not 1")
    return text


def _write(path: Path, text: str) -> None:
    """World-readable: the service's dynamic user reads the config (secrets go in credentials, not here)."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True)
        path.parent.chmod(0o755)  # whatever root's umask is, the service must be able to enter it
    path.write_text(text)
    path.chmod(0o644)


def _daemon_reload() -> bool:
    try:
        result = subprocess.run(["systemctl", "daemon-reload"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        print(f"clapd install-service: systemctl daemon-reload: {e}", file=sys.stderr)
        return False
    if result.returncode != 0:
        print(f"clapd install-service: systemctl daemon-reload: {result.stderr.strip()}", file=sys.stderr)
    return result.returncode == 0


def _print_next_steps(config_path: Path) -> None:
    print(
        "next:\n"
        f"  edit {config_path} (model.bundle, streams, outputs.mqtt), then: clapd check-config {config_path}\n"
        "  put the MQTT password in /etc/clapd/mqtt-password (mode 600); without one the service does not start\n"
        "    unless a drop-in clears it (`systemctl edit clapd`: [Service] then LoadCredential=)\n"
        "  systemctl enable --now clapd && journalctl -u clapd -f"
    )
