"""Logging setup survives the process swapping its stderr (pytest capture, daemonisers)."""

from __future__ import annotations

import io
import logging
import sys

import pytest
import structlog

from murmur.logs import configure_logging


def test_logs_follow_the_current_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    configure_logging(format="json", level="info")
    first.close()  # the stream that was current at configure time is gone
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)

    structlog.get_logger("murmur.test").info("hello", n=1)
    logging.getLogger("murmur.test").warning("stdlib too")

    out = second.getvalue()
    assert '"event": "hello"' in out
    assert "stdlib too" in out
