"""The supervisor's restart policy with stand-in children (no broker, a second or two)."""

from __future__ import annotations

import itertools
import os
import signal
import sys
import threading
import time

from murmur.supervisor import Supervisor

STAY_UP = (
    "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); "
    "time.sleep(30)"
)


def child(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_configuration_error_is_not_retried() -> None:
    sup = Supervisor(lambda i: child("import sys; sys.exit(2)"), 2, backoff=0.05)
    t0 = time.monotonic()
    assert sup.run() == 2
    assert sup.restarts == 0
    assert time.monotonic() - t0 < 5


def test_crash_loop_backs_off_then_sigterm_stops_cleanly() -> None:
    starts: list[float] = []

    def command(index: int) -> list[str]:
        starts.append(time.monotonic())
        if len(starts) <= 3:  # crash three times, then stay up until told to stop
            return child("import sys; sys.exit(1)")
        return child(STAY_UP)

    timer = threading.Timer(2.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        sup = Supervisor(command, 1, backoff=0.1, max_backoff=1.0)
        assert sup.run() == 0  # the last child drained on SIGTERM
    finally:
        timer.cancel()
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(starts) == 4 and sup.restarts == 3
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2 and gaps[2] >= 0.4  # doubling backoff
    assert signal.getsignal(signal.SIGTERM) is not sup._on_signal  # handlers restored
