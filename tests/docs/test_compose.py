"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

The file is parsed (pyyaml) and held to what docs/deployment.md promises: one broker per
profile, health checks and restart policies everywhere, a worker built from the
Dockerfile whose command uses only flags the real CLI has, and nothing that prevents
``--scale worker=N``. When a ``docker compose`` (or ``docker-compose``) binary is on
PATH, ``config`` must accept the file for every profile too.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
from typing import Any

import pytest
import typer.main
import yaml

from murmur.brokers.urls import broker_kind
from murmur.cli import app
from murmur.runtime.agent import Agent
from tests.docs._markdown import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
BROKERS = {"redis": "redis:7", "nats": "nats:2.10", "kafka": "apache/kafka:"}


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's ``${VAR:-default}`` (nested defaults included), from ``env`` only."""
    env = env or {}
    while True:
        # innermost first: a ${...} holding no other ${
        m = re.search(r"\$\{(\w+)(?::?-([^${}]*))?\}", value)
        if m is None:
            return value
        name, default = m.group(1), m.group(2) or ""
        value = value[: m.start()] + (env.get(name) or default) + value[m.end() :]


def worker_options() -> set[str]:
    command = typer.main.get_command(app).commands["worker"]  # type: ignore[attr-defined]
    return {opt for p in command.params for opt in getattr(p, "opts", ()) if opt.startswith("-")}


def dockerfile_instruction(name: str) -> list[str]:
    """Arguments of every ``name`` instruction (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [
        line.split(None, 1)[1] if " " in line.strip() else ""
        for line in text.splitlines()
        if line.strip().upper().startswith(name + " ") or line.strip().upper() == name
    ]


# compose -------------------------------------------------------------------------------


def test_services() -> None:
    assert set(SERVICES) == {"redis", "nats", "kafka", "worker", "publisher"}


@pytest.mark.parametrize("name", sorted(BROKERS))
def test_broker_images_and_profiles(name: str) -> None:
    service = SERVICES[name]
    assert service["image"].startswith(BROKERS[name]), service["image"]
    assert service["profiles"] == [name], "each broker is started by its own profile"
    assert service.get("volumes"), f"{name} keeps its data on a volume"


def test_deployment_page_names_the_images_in_use() -> None:
    page = (ROOT / "docs" / "deployment.md").read_text()
    for name in BROKERS:
        assert f"`{SERVICES[name]['image']}`" in page, name


def test_redis_appends_to_an_aof() -> None:
    command = SERVICES["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"


def test_nats_runs_jetstream_on_its_volume() -> None:
    command = SERVICES["nats"]["command"]
    assert "-js" in command
    store = command[command.index("-sd") + 1]
    assert any(v.endswith(":" + store) for v in SERVICES["nats"]["volumes"])


def test_kafka_is_a_single_kraft_node_with_listeners_for_both_sides() -> None:
    env = {k: str(v) for k, v in SERVICES["kafka"]["environment"].items()}
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    listeners = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
    advertised = dict(
        item.split("://") for item in interpolate(env["KAFKA_ADVERTISED_LISTENERS"]).split(",")
    )
    protocol_map = env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
    protocols = dict(item.split(":") for item in protocol_map.split(","))
    assert set(listeners) == set(protocols)
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] not in advertised
    # Containers reach kafka:9092, the host the published port.
    assert advertised["PLAINTEXT"] == "kafka:9092"
    host_port = advertised["HOST"].rsplit(":", 1)[1]
    published = [interpolate(p) for p in SERVICES["kafka"]["ports"]]
    assert f"127.0.0.1:{host_port}:{listeners['HOST'].lstrip(':')}" in published
    assert env["KAFKA_LOG_DIRS"] in "".join(SERVICES["kafka"]["volumes"])
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_a_health_check_and_restarts(name: str) -> None:
    service = SERVICES[name]
    check = service.get("healthcheck")
    assert check and check["test"][0] in ("CMD", "CMD-SHELL") and len(check["test"]) > 1
    assert service.get("restart") in ("unless-stopped", "always", "on-failure")


def test_worker_is_built_from_the_dockerfile_and_scalable() -> None:
    worker = SERVICES["worker"]
    assert worker["build"] in (".", {"context": "."})
    assert (ROOT / "Dockerfile").is_file()
    assert "container_name" not in worker, "--scale needs generated container names"
    assert "ports" not in worker, "fixed host ports would clash between replicas"
    assert set(worker["profiles"]) == set(BROKERS) == set(SERVICES["publisher"]["profiles"])


def test_worker_command_uses_real_cli_flags() -> None:
    command = [interpolate(str(part)) for part in SERVICES["worker"]["command"]]
    assert command[0] == "worker", "the image's entrypoint is `murmur`"
    flags = [part for part in command[1:] if part.startswith("-")]
    assert flags and set(flags) <= worker_options(), set(flags) - worker_options()
    assert "--broker" in flags and "--metrics-port" in flags
    port = command[command.index("--metrics-port") + 1]
    assert f"127.0.0.1:{port}/health" in " ".join(SERVICES["worker"]["healthcheck"]["test"])
    # APP (the first argument) names a module with agents.
    module = importlib.import_module(command[1])
    assert any(isinstance(v, Agent) for v in vars(module).values())


@pytest.mark.parametrize("profile", sorted(BROKERS))
def test_the_profile_picks_the_broker_url(profile: str) -> None:
    env = {"COMPOSE_PROFILES": profile}
    worker = SERVICES["worker"]
    url = interpolate(worker["environment"]["MURMUR_BROKER_URL"], env)
    assert broker_kind(url) == profile and url == f"{profile}://{profile}"
    command = [interpolate(str(p), env) for p in worker["command"]]
    assert command[command.index("--broker") + 1] == url
    assert interpolate(SERVICES["publisher"]["environment"]["MURMUR_BROKER_URL"], env) == url
    # An explicit MURMUR_BROKER_URL wins.
    other = {**env, "MURMUR_BROKER_URL": "rediss://managed:6380"}
    explicit = interpolate(worker["environment"]["MURMUR_BROKER_URL"], other)
    assert explicit == other["MURMUR_BROKER_URL"]


def test_worker_waits_for_the_selected_broker_only() -> None:
    for name in ("worker", "publisher"):
        depends = SERVICES[name]["depends_on"]
        assert set(depends) == set(BROKERS)
        for condition in depends.values():
            assert condition == {"condition": "service_healthy", "required": False}


def test_worker_drains_before_it_is_killed() -> None:
    worker = SERVICES["worker"]
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"
    grace = worker["stop_grace_period"]
    seconds = int(grace.rstrip("s"))
    # Worker.stop() gives running tasks shutdown_timeout=30 s, then disconnects.
    assert seconds > 30


def test_publisher_runs_the_service_example() -> None:
    publisher = SERVICES["publisher"]
    assert publisher["entrypoint"][:3] == ["python", "-m", "examples.service.server"]
    module = importlib.import_module("examples.service.server")
    source = (ROOT / "examples" / "service" / "server.py").read_text()
    for flag in (p for p in publisher["command"] if str(p).startswith("--")):
        assert f'"{flag}"' in source, flag
    assert module.main is not None
    assert "/health" in " ".join(publisher["healthcheck"]["test"])


@pytest.mark.parametrize("profile", [*sorted(BROKERS), None])
def test_docker_compose_accepts_the_file(profile: str | None) -> None:
    if shutil.which("docker-compose"):
        argv = ["docker-compose"]
    elif (
        shutil.which("docker")
        and subprocess.run(
            ["docker", "compose", "version"], capture_output=True, check=False
        ).returncode
        == 0
    ):
        argv = ["docker", "compose"]
    else:
        pytest.skip("no docker compose binary")
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    if profile:
        env["COMPOSE_PROFILES"] = profile
    done = subprocess.run(
        [*argv, "-f", str(ROOT / "docker-compose.yml"), "config", "--format", "json"],
        capture_output=True, text=True, env=env, cwd=ROOT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    services = set(json.loads(done.stdout).get("services") or {})
    assert services == (set() if profile is None else {profile, "worker", "publisher"})


# Dockerfile ----------------------------------------------------------------------------


def test_dockerfile_base_is_slim_python_311_or_newer() -> None:
    version = re.search(r"ARG PYTHON_VERSION=3\.(\d+)", DOCKERFILE)
    assert version and int(version.group(1)) >= 11
    bases = dockerfile_instruction("FROM")
    assert bases and all("python:${PYTHON_VERSION}-slim" in b for b in bases)


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = dockerfile_instruction("USER")
    assert users and users[-1].strip() not in ("root", "0")
    # The last USER comes after the last RUN: nothing runs as root at run time.
    text = DOCKERFILE
    assert text.rindex("\nUSER ") > text.rindex("\nRUN ")


def test_dockerfile_installs_the_package_without_dev_extras() -> None:
    runs = " ".join(dockerfile_instruction("RUN"))
    assert "pip install" in runs and "pip wheel" in runs
    assert "[test" not in runs and "[dev" not in runs and "-e " not in runs


def test_dockerfile_health_check_hits_the_worker_health_endpoint() -> None:
    (check,) = dockerfile_instruction("HEALTHCHECK")
    exec_form = check[check.index("CMD") + 3 :].strip()
    argv = json.loads(exec_form)
    assert argv[:2] == ["python", "-c"] and "urllib" in argv[2]
    assert "http://127.0.0.1:9100/health" in argv[2]


def test_dockerfile_entrypoint_and_cmd_are_exec_form_and_real_cli() -> None:
    (entrypoint,) = dockerfile_instruction("ENTRYPOINT")
    (cmd,) = dockerfile_instruction("CMD")
    assert json.loads(entrypoint) == ["murmur"], "exec form: SIGTERM reaches the worker"
    argv = json.loads(cmd)
    assert argv[0] == "worker"
    flags = {a for a in argv if a.startswith("-")}
    assert flags <= worker_options()
    assert argv[argv.index("--metrics-port") + 1] == "9100"
    importlib.import_module(argv[1])  # the default APP exists
    assert dockerfile_instruction("STOPSIGNAL") == ["SIGTERM"]
    assert "9100" in " ".join(dockerfile_instruction("EXPOSE"))


def test_dockerignore_keeps_the_build_context_small() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "an allow-list: nothing goes in unless listed"
    for needed in ("!murmur/", "!examples/", "!pyproject.toml", "!README.md"):
        assert needed in lines
