"""The local web page (`clapd.daemon.web`): live scores, recent events with their clips, search, enrolment."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import Field, model_validator

from clapd.daemon.config.base import Section

LOOPBACK_NAMES = ("localhost",)  # host names taken as loopback; any other name may resolve beyond it


def is_loopback(host: str) -> bool:
    """`127.0.0.1`, `::1`, `localhost`: only this machine can connect. `0.0.0.0`, `::` and other names cannot be
    trusted to stay on this machine."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class WebConfig(Section):
    """A local web page served by the daemon (needs the `web` extra: `pip install 'clapd[web]'`): every stream's
    live scores, recent events with an audio player for their clips, a search box over the history, and per event
    "use as an example" / "mark as a false alarm" (the control actions `enrol` and `false_alarm`, applied and saved
    in `control.json` as those made over MQTT, whether `mqtt.control` is on or not).

    A token is required whenever the page listens beyond loopback: give it in a file or an environment variable;
    the browser sends it as `Authorization: Bearer TOKEN`, or opens `http://HOST:PORT/?token=TOKEN` once, which
    sets a cookie. Without TLS the token crosses the network in clear: beyond a trusted LAN, put a TLS proxy in
    front."""

    enabled: bool = Field(False, description="serve the page (off by default)")
    host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="address to listen on; anything but loopback (127.0.0.1, ::1, localhost) needs a token",
    )
    port: int = Field(8765, ge=0, le=65535, description="TCP port to listen on; 0: any free port (logged)")
    token_file: Path | None = Field(
        None, description="file holding the access token (trailing newline dropped; e.g. a systemd credential)"
    )
    token_env: str | None = Field(None, min_length=1, description="environment variable holding the access token")
    recent_events: int = Field(
        50, ge=1, le=1000, description="events the page lists (kept in memory, and read from the history if on)"
    )

    @model_validator(mode="after")
    def _token_beyond_loopback(self) -> WebConfig:
        if self.token_file is not None and self.token_env is not None:
            raise ValueError("give token_file or token_env, not both")
        if self.enabled and not is_loopback(self.host) and self.token_file is None and self.token_env is None:
            raise ValueError(
                f"host = {self.host!r} listens beyond loopback: set token_file or token_env (a token is required)"
            )
        return self
