"""The web page's control channel: its per-event buttons become `ControlRequest`s that take the daemon's one path.

A `clapd.daemon.control.ControlChannel` like MQTT's: the Service `listen`s (its handler only enqueues the request for
the main thread, which validates, applies and saves it exactly as a request over MQTT) and `answer`s each with a
`ControlResult`. The web server's thread that sent a request waits, bounded, for that answer (matched by
`request_id`). Only the example actions the page offers are taken (`enrol` of an event's audio, `false_alarm`),
at most `MAX_PENDING` at a time.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from clapd.daemon.control import ControlRequest, ControlResult, parse_request

logger = logging.getLogger(__name__)

WEB_ACTIONS = ("enrol", "false_alarm")  # what the page's buttons ask for; nothing else is taken from the web
MAX_PENDING = 4  # requests waiting for the main thread at once; more are refused
ANSWER_SECONDS = 30.0  # an enrolment embeds its example before it answers (as `clapd enrol` waits)


class WebControlChannel:
    """Requests from the page's buttons to the Service, answers back to the page."""

    def __init__(self) -> None:
        self._handler: Callable[[ControlRequest], None] | None = None
        self._lock = threading.Lock()
        self._pending: dict[str, Future[ControlResult]] = {}  # request_id -> its answer, under the lock
        self._closed = False

    def listen(self, handler: Callable[[ControlRequest], None]) -> None:
        """`handler` (the Service's) only enqueues; it runs in the web server's thread."""
        self._handler = handler

    def answer(self, result: ControlResult) -> None:
        """The main thread's result for a request of ours; one nobody waits for any more is dropped."""
        with self._lock:
            future = self._pending.pop(result.request_id or "", None)
        if future is not None and not future.done():
            future.set_result(result)

    def submit(self, fields: dict[str, Any], timeout: float = ANSWER_SECONDS) -> ControlResult:
        """One request (`fields` as a request on MQTT, without `request_id`) and its result; a refusal when the
        request is malformed, not one of `WEB_ACTIONS`, too many are pending, or no answer came within `timeout`."""
        request = self._parsed(fields)
        if isinstance(request, ControlResult):
            return request
        assert request.request_id is not None
        future: Future[ControlResult] = Future()
        with self._lock:
            if self._closed or self._handler is None:
                return ControlResult.failure(request, ["(daemon): not accepting requests (starting or stopping)"])
            if len(self._pending) >= MAX_PENDING:
                return ControlResult.failure(request, [f"(daemon): {MAX_PENDING} requests already waiting; try again"])
            self._pending[request.request_id] = future
        logger.info("web control: %s %s (request %r)", request.action, request.detection, request.request_id)
        try:
            self._handler(request)
            return future.result(timeout)
        except FutureTimeout:
            return ControlResult.failure(request, [f"(daemon): no answer within {timeout:g} s; it may still apply"])
        finally:
            with self._lock:
                self._pending.pop(request.request_id, None)

    def close(self) -> None:
        """Stopping: the requests still waiting are answered as not applied (the Service drops queued ones)."""
        with self._lock:
            self._closed = True
            pending, self._pending = self._pending, {}
        for request_id, future in pending.items():
            if not future.done():
                future.set_result(
                    ControlResult(
                        request_id=request_id,
                        ok=False,
                        action=None,
                        detection=None,
                        errors=["(daemon): stopping; the request was not applied"],
                    )
                )

    @staticmethod
    def _parsed(fields: dict[str, Any]) -> ControlRequest | ControlResult:
        """Checked as a request over MQTT is (`parse_request`), with an id of our own and only the web's actions;
        `fields` come from the page's JSON body."""
        if fields.get("action") not in WEB_ACTIONS:
            shown = str(fields.get("action"))[:40]
            return _refusal([f"action = {shown!r}: the web page takes only {', '.join(WEB_ACTIONS)}"])
        return parse_request(json.dumps({**fields, "request_id": uuid.uuid4().hex}).encode())


def _refusal(problems: list[str]) -> ControlResult:
    return ControlResult(request_id=None, ok=False, action=None, detection=None, errors=problems)
