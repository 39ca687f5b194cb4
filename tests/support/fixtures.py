"""pytest fixtures giving tests real brokers; loaded by tests/conftest.py.

Session fixtures (resolved lazily, once; see servers.py for the order and switches):
    redis_url  -> "redis://127.0.0.1:6379/0"
    nats_url   -> "nats://127.0.0.1:4222"
    kafka_url  -> "kafka://127.0.0.1:PORT"
Function fixtures:
    unique     -> "t" + 10 hex chars, for agent/stream/topic names that never collide
    broker_url -> parametrized over memory, redis, nats, kafka (ids are those names);
                  "memory://<unique>" or the broker's session URL. Restrict a test with
                  ``@pytest.mark.brokers("redis", "nats")``.
    owned_redis / owned_nats / owned_kafka -> a private, started OwnedServer for tests
                  that stop, kill or restart the broker; closed after the test.
A broker that cannot be had skips the test, or fails it under MURMUR_TEST_REQUIRE_BROKERS=1.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import NoReturn

import pytest

from tests.support.cleanup import sweep_nats, sweep_redis
from tests.support.servers import (
    ALL_BROKERS,
    ENV_ONLY,
    BrokerUnavailable,
    Kind,
    OwnedServer,
    mode,
    require_brokers,
    resolve,
    selected_brokers,
)

_USED: dict[str, str] = {}  # kind -> "url (source)", for the terminal summary
_NAMES: set[str] = set()  # every ``unique`` name this process handed out, swept at the end


def unavailable(reason: str) -> NoReturn:
    """Skip, or fail when brokers are required (CI must not go green by skipping)."""
    if require_brokers():
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def ensure_selected(name: str) -> None:
    """Skip a test for a broker that MURMUR_TEST_ONLY leaves out."""
    if name not in selected_brokers():
        pytest.skip(f"{name} is not in {ENV_ONLY}={','.join(selected_brokers())}")


def _session_url(request: pytest.FixtureRequest, kind: Kind) -> str:
    ensure_selected(kind)
    try:
        found = resolve(kind)
    except BrokerUnavailable as exc:
        reason = str(exc)  # reported outside the handler: no chained traceback noise
    else:
        reason = ""
    if reason:
        unavailable(reason)
    if found.close is not None:
        request.addfinalizer(found.close)
    elif kind in ("redis", "nats"):  # a long-lived server: leave it as we found it
        request.addfinalizer(lambda: _sweep(kind, found.url))
    _USED[kind] = f"{found.url} ({found.source})"
    return found.url


def pytest_configure(config: pytest.Config) -> None:
    """Reject a mistyped MURMUR_TEST_BROKERS / MURMUR_TEST_ONLY once, up front."""
    try:
        mode()
        selected_brokers()
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say which servers the run used: a green run against the wrong broker misleads."""
    if _USED:
        terminalreporter.write_sep("-", "brokers used")
        for kind, where in sorted(_USED.items()):
            terminalreporter.write_line(f"{kind}: {where}")


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> str:
    return _session_url(request, "redis")


@pytest.fixture(scope="session")
def nats_url(request: pytest.FixtureRequest) -> str:
    return _session_url(request, "nats")


@pytest.fixture(scope="session")
def kafka_url(request: pytest.FixtureRequest) -> str:
    return _session_url(request, "kafka")


@pytest.fixture
def unique() -> str:
    name = "t" + secrets.token_hex(5)
    _NAMES.add(name)
    return name


def _sweep(kind: Kind, url: str) -> None:
    """Delete this session's keys/streams; a failure is reported, never fails the run."""
    sweep = sweep_redis if kind == "redis" else sweep_nats
    try:
        sweep(url, _NAMES)
    except Exception as exc:
        print(f"\nwarning: could not clean up test data on {url}: {exc!r}")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``broker_url``; the brokers marker narrows the params, ids stay names."""
    if "broker_url" not in metafunc.fixturenames:
        return
    names = list(ALL_BROKERS)
    if marker := metafunc.definition.get_closest_marker("brokers"):
        unknown = sorted(set(marker.args) - set(ALL_BROKERS))
        if unknown or not marker.args:
            raise pytest.UsageError(
                f"{metafunc.definition.nodeid}: @pytest.mark.brokers{marker.args} "
                f"needs names from {ALL_BROKERS}"
            )
        names = [name for name in names if name in marker.args]
    metafunc.parametrize("broker_url", names, ids=names, indirect=True)


@pytest.fixture
def broker_url(request: pytest.FixtureRequest, unique: str) -> str:
    name: str = request.param
    ensure_selected(name)
    if name == "memory":
        return f"memory://{unique}"
    return str(request.getfixturevalue(f"{name}_url"))


def _owned(kind: Kind) -> Iterator[OwnedServer]:
    ensure_selected(kind)
    server: OwnedServer | None = None
    try:
        server = OwnedServer(kind, persistent=True)
        server.start()
    except BrokerUnavailable as exc:
        reason = str(exc)  # reported outside the handler: no chained traceback noise
    else:
        reason = ""
    try:
        if reason:
            unavailable(reason)
        assert server is not None
        yield server
    finally:
        if server is not None:
            server.close()


@pytest.fixture
def owned_redis() -> Iterator[OwnedServer]:
    yield from _owned("redis")


@pytest.fixture
def owned_nats() -> Iterator[OwnedServer]:
    yield from _owned("nats")


@pytest.fixture
def owned_kafka() -> Iterator[OwnedServer]:
    yield from _owned("kafka")
