"""The web page's HTTP side: a Starlette application of a few routes, behind a token gate.

    GET  /                 the page (static HTML, CSS and JS shipped with clapd; nothing from elsewhere)
    GET  /api/live         every stream's newest window: scores, thresholds, states, level (polled every hop)
    GET  /api/events       recent events, newest first, each with its clip's URL once the file exists
    GET  /api/search?q=    the history's best time ranges for a text (`since`, `stream`, `top` as `clapd search`)
    POST /api/control      {"action": "enrol" | "false_alarm", "detection", "stream", "event_id"}: the control path
                           (the event's audio: the ring's for its pair's last event, else its clip file's)
    GET  /clips/NAME       a clip file, only from the clips folder, only a name clapd gives clips

With a token (required beyond loopback) every route needs it: `Authorization: Bearer TOKEN`, or the cookie that
`?token=TOKEN` sets (the page then reloads without it, so it stays out of the address bar and history). Without
one (loopback only) requests must name a loopback host, so a web site the browser visits cannot reach the page by
DNS rebinding. A control request must be JSON from the page's own origin. The token is never logged.

The page polls JSON (live scores every hop) rather than holding a stream open (Server-Sent Events): every request
is short, so a few open tabs never hold the server's bounded connections, and a stop never waits on one.
"""

from __future__ import annotations

import hmac
import json
import logging
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from clapd.daemon.search import Match
from clapd.daemon.web.channel import WebControlChannel
from clapd.daemon.web.live import LiveEvent, LiveView
from clapd.daemon.web.queries import CLIP_MEDIA_TYPES, MAX_TOP, Clips, QueryError, Searcher, listed_events

logger = logging.getLogger(__name__)

COOKIE = "clapd_token"
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]  # Host headers taken without a token
MAX_CONTROL_BODY = 4096  # bytes: a button's request is a few dozen
STATIC = files("clapd.daemon.web") / "static"


@dataclass(frozen=True, slots=True)
class PageParts:
    """What the routes read; each part is safe to use from the server's threads."""

    live: LiveView
    control: WebControlChannel
    clips: Clips
    searcher: Searcher
    history: Path | None  # the history file, None when the history is off
    hop_seconds: float
    max_events: int


def build_app(parts: PageParts, token: str | None) -> Starlette:
    """The page's routes; `token`: required on every request (None: loopback only, no token)."""
    static = Path(str(STATIC))

    async def page(request: Request) -> Response:
        return FileResponse(static / "index.html", media_type="text/html", headers=_NO_STORE)

    def live(request: Request) -> Response:
        return JSONResponse({**parts.live.snapshot(), "hop_seconds": parts.hop_seconds}, headers=_NO_STORE)

    def events(request: Request) -> Response:
        listed = listed_events(parts.live.events(), parts.history, parts.max_events)
        latest, takes = parts.live.teachable(), parts.live.taking_examples()
        rows = [event_json(e, parts.clips, latest, takes) for e in listed]
        return JSONResponse({"events": rows}, headers=_NO_STORE)

    def search(request: Request) -> Response:
        return _search(parts, request)

    async def control(request: Request) -> Response:
        return await _control(parts.control, request)

    def clip(request: Request) -> Response:
        path = parts.clips.file(request.path_params["name"])
        if path is None:
            return PlainTextResponse("no such clip", status_code=404)
        return FileResponse(path, media_type=CLIP_MEDIA_TYPES.get(path.suffix, "application/octet-stream"))

    routes = [
        Route("/", page),
        Route("/api/live", live),
        Route("/api/events", events),
        Route("/api/search", search),
        Route("/api/control", control, methods=["POST"]),
        Route("/clips/{name}", clip),
        Mount("/static", StaticFiles(directory=static), name="static"),
    ]
    middleware = [Middleware(TokenGate, token=token)] if token is not None else []
    if token is None:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_HOSTS))
    return Starlette(routes=routes, middleware=middleware)


_NO_STORE = {"Cache-Control": "no-store"}


class TokenGate:
    """Every request carries the token (header or cookie), or brings it once in `?token=` and gets the cookie."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self._app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        request = Request(scope)
        if self._valid(_bearer(request)) or self._valid(request.cookies.get(COOKIE)):
            await self._app(scope, receive, send)
            return
        if request.method == "GET" and self._valid(request.query_params.get("token")):
            response: Response = RedirectResponse(request.url.remove_query_params("token").path, status_code=303)
            response.set_cookie(COOKIE, self._token.decode(), httponly=True, samesite="strict", path="/")
        else:
            response = PlainTextResponse(
                "a token is required: Authorization: Bearer TOKEN, or open /?token=TOKEN once",
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        await response(scope, receive, send)

    def _valid(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self._token)


def _bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def event_json(event: LiveEvent, clips: Clips, latest: set[str], takes: set[str]) -> dict[str, Any]:
    """`latest`: the event ids whose audio the ring holds; `takes`: the detections that take examples. The buttons
    show on those events, and on every event of such a detection whose clip file is kept (its audio is read there)."""
    url = clips.url(event.clip)
    return {
        "event_id": event.event_id,
        "stream": event.stream,
        "detection": event.detection,
        "start_utc": event.start_utc,
        "end_utc": event.end_utc,
        "peak_score": round(event.peak_score, 4),
        "clip_url": url,
        "clip_pending": event.clip is not None and url is None,
        "teachable": event.event_id in latest or (url is not None and event.detection in takes),
    }


def _search(parts: PageParts, request: Request) -> Response:
    params = request.query_params
    try:
        top = int(params.get("top", "20"))
    except ValueError:
        top = 0
    if not 1 <= top <= MAX_TOP:
        return JSONResponse({"error": f"top: give 1 to {MAX_TOP}"}, status_code=400)
    try:
        found = parts.searcher.search(params.get("q", ""), params.get("since"), params.get("stream") or None, top)
    except QueryError as e:
        return JSONResponse({"error": str(e)}, status_code=400)
    return JSONResponse({"matches": [_match_json(m, parts.clips) for m in found]}, headers=_NO_STORE)


def _match_json(match: Match, clips: Clips) -> dict[str, Any]:
    return {
        "stream": match.stream,
        "start_utc": match.start.isoformat(timespec="milliseconds"),
        "end_utc": match.end.isoformat(timespec="milliseconds"),
        "score": round(match.score, 4),
        "windows": match.windows,
        "clip_url": clips.url(match.clip),
    }


async def _control(channel: WebControlChannel, request: Request) -> Response:
    """A button's request, from the page's own origin, as JSON; answered with the control path's result."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return JSONResponse({"ok": False, "errors": ["send the request as application/json"]}, status_code=415)
    origin = request.headers.get("origin")
    if origin is not None and origin.split("://", 1)[-1] != request.headers.get("host"):
        return JSONResponse({"ok": False, "errors": ["a request from another origin"]}, status_code=403)
    body = await _capped_body(request)
    if body is None:
        return JSONResponse({"ok": False, "errors": [f"more than {MAX_CONTROL_BODY} bytes"]}, status_code=413)
    try:
        fields = json.loads(body)
    except ValueError:
        fields = None
    if not isinstance(fields, dict):
        return JSONResponse({"ok": False, "errors": ["the body must be a JSON object"]}, status_code=400)
    result = await run_in_threadpool(channel.submit, fields)
    return Response(result.to_json(), media_type="application/json", status_code=200 if result.ok else 422)


async def _capped_body(request: Request) -> bytes | None:
    """The body, or None once it runs past MAX_CONTROL_BODY (read no further)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_CONTROL_BODY:
            return None
    return body
