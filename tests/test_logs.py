"""Log set-up: the config's level and format applied to the root logger; JSON lines parse and keep the traceback."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from clapd.daemon.config import LoggingConfig
from clapd.daemon.logs import configure_logging


@pytest.fixture
def root_stream() -> Iterator[io.StringIO]:
    """The root logger writing to a string, restored afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    stream = io.StringIO()
    root.handlers = [logging.StreamHandler(stream)]
    yield stream
    root.handlers, root.level = saved_handlers, saved_level


def test_json_lines_carry_level_logger_message_and_traceback(root_stream: io.StringIO) -> None:
    configure_logging(LoggingConfig(level="info", format="json"))
    log = logging.getLogger("clapd.test")
    log.debug("not shown at info")
    log.warning("stream %s lost", "kitchen")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("capture failed")
    lines = [json.loads(line) for line in root_stream.getvalue().splitlines()]
    assert [line["message"] for line in lines] == ["stream kitchen lost", "capture failed"]
    assert lines[0]["level"] == "warning" and lines[0]["logger"] == "clapd.test"
    assert lines[0]["time"].endswith("+00:00")
    assert "ValueError: boom" in lines[1]["exception"]


def test_text_format_and_verbose_lowers_the_level(root_stream: io.StringIO) -> None:
    configure_logging(LoggingConfig(level="error", format="text"), verbose=True)
    logging.getLogger("clapd.test").info("shown: -v lowers error to info")
    text = root_stream.getvalue()
    assert "INFO clapd.test: shown: -v lowers error to info" in text
    assert not text.lstrip().startswith("{")
