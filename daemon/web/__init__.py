"""The local web page (`web:` in the config; the `web` extra): live scores, recent events with their clips, search
over the history, and per-event enrolment, served by the daemon process.

Parts: `LiveView` (an `Output`: the outputs' thread hands it what every output gets, kept in memory, bounded),
`WebControlChannel` (a `ControlChannel` like MQTT's: the buttons' requests take the Service's one control path),
`Searcher` and `Clips` (the history and the clips folder, read on the web server's threads) and `WebServer`
(uvicorn in a thread of its own, started and stopped by the Service). Nothing here runs on the inference thread
or makes it wait.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from clapd.daemon.config import ClapdConfig, WebConfig
from clapd.daemon.inference import LazyTextModel
from clapd.daemon.manifest import Manifest
from clapd.daemon.web.channel import WebControlChannel
from clapd.daemon.web.live import LiveView

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from clapd.daemon.web.server import WebServer

logger = logging.getLogger(__name__)

EXTRA_HINT = "pip install 'clapd[web]'"
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9._~+/=-]{16,512}")  # sent in a header and a cookie: no quoting needed


class WebSetupError(ValueError):
    """The page cannot be set up: the web extra is missing, or the token cannot be read; the message names the
    config key, never the token."""


@dataclass
class WebPage:
    """The page's parts: `output` joins the daemon's outputs, `control` its control channels; `start` and `close`
    the server (from the Service, on the main thread)."""

    output: LiveView
    control: WebControlChannel
    config: ClapdConfig
    bundle: Path
    manifest: Manifest
    token: str | None
    server: WebServer | None = None  # once started

    def start(self) -> None:
        """Listen; `WebServerError` (an OSError) if the address cannot be bound."""
        from clapd.daemon.web.server import WebServer

        server = WebServer(build_page_app(self), self.config.web.host, self.config.web.port)
        server.start()
        self.server = server

    @property
    def port(self) -> int | None:
        return self.server.port if self.server is not None else None

    def clip_url(self, name: str) -> str | None:
        """Where the page serves the clip file `name`; None until it listens. Listening on every address, the page
        is named by this machine's host name."""
        if self.port is None:
            return None
        host = self.config.web.host
        host = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
        host = f"[{host}]" if ":" in host else host  # an IPv6 address in a URL
        return f"http://{host}:{self.port}/clips/{quote(name)}"

    def close(self) -> None:
        """Waiting requests are answered as not applied, then the server stops."""
        self.control.close()
        if self.server is not None:
            self.server.close()


def build_web(config: ClapdConfig, bundle: Path, manifest: Manifest) -> WebPage:
    """The page's parts, not yet serving; `WebSetupError` for a token that cannot be read or a missing web extra."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise WebSetupError(f"web.enabled needs the web extra ({EXTRA_HINT}): {e}") from e
    token = read_token(config.web)
    return WebPage(LiveView(config.web.recent_events), WebControlChannel(), config, bundle, manifest, token)


def build_page_app(page: WebPage) -> Starlette:
    """The Starlette app over the page's parts (imported here: only a daemon with the page on loads Starlette)."""
    from clapd.daemon.clips import clips_directory
    from clapd.daemon.history import HISTORY_FILE
    from clapd.daemon.web.app import PageParts, build_app
    from clapd.daemon.web.queries import Clips, Searcher

    config = page.config
    history = config.state_dir / HISTORY_FILE if config.history.enabled else None
    text = LazyTextModel(page.bundle, page.manifest, config.model)
    parts = PageParts(
        live=page.output,
        control=page.control,
        clips=Clips(clips_directory(config)),
        searcher=Searcher(history, text, page.manifest.text_side_sha256()),
        history=history,
        hop_seconds=config.windows.hop_seconds,
        max_events=config.web.recent_events,
    )
    return build_app(parts, page.token)


def read_token(config: WebConfig) -> str | None:
    """From `token_file` (trailing newline dropped) or `token_env`; errors name the source, never the value."""
    if config.token_file is not None:
        source = f"web.token_file ({config.token_file})"
        try:
            token = config.token_file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as e:
            raise WebSetupError(f"{source}: cannot read it: {e.strerror or e}") from e
        except UnicodeDecodeError:
            raise WebSetupError(f"{source}: not UTF-8 text") from None  # no cause: it would quote the token
        return _checked(token, source)
    if config.token_env is not None:
        token = os.environ.get(config.token_env)
        if token is None:
            raise WebSetupError(f"web.token_env: the environment variable {config.token_env} is not set")
        return _checked(token, f"web.token_env ({config.token_env})")
    return None


def _checked(token: str, source: str) -> str:
    if TOKEN_PATTERN.fullmatch(token) is None:
        raise WebSetupError(
            f"{source}: the token must be 16 to 512 characters of A-Z a-z 0-9 . _ ~ + / = - "
            "(e.g. `openssl rand -hex 32`)"
        )
    return token
