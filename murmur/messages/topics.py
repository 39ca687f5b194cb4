"""Topic names shared by every broker (DESIGN §3) and the rules for the names inside them.

Names are limited to ``[A-Za-z0-9_-]`` so one name is valid everywhere: as a Redis key, a
NATS subject token (no dots or wildcards), a JetStream stream name and a Kafka topic.
"""

from __future__ import annotations

import re

from murmur.errors import ConfigurationError

PREFIX = "murmur"
HEARTBEATS = "murmur.heartbeats"
# Where workers keep their expiring presence records (DESIGN §5): a Redis hash, a Kafka
# compacted topic; NATS names it ``murmur_presence`` (bucket names allow no dots).
PRESENCE = "murmur.presence"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")
# `murmur.<agent>.tasks` must never collide with `murmur.results.<id>` and friends.
RESERVED_AGENT_NAMES = frozenset({"results", "events", "heartbeats"})


def validate_name(name: str, what: str = "agent name") -> str:
    """Return ``name`` if it is usable in every broker's topic namespace, else raise."""
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise ConfigurationError(
            f"invalid {what} {name!r}: use 1-100 characters from A-Z a-z 0-9 _ -, "
            "starting with a letter or digit"
        )
    return name


def validate_agent_name(name: str) -> str:
    validate_name(name)
    if name in RESERVED_AGENT_NAMES:
        raise ConfigurationError(
            f"agent name {name!r} is reserved (it would collide with murmur.{name}.*)"
        )
    return name


def task_topic(agent: str) -> str:
    """Where tasks for ``agent`` are published; also the name of its consumer group."""
    return f"murmur.{agent}.tasks"


def dead_topic(agent: str) -> str:
    return f"murmur.{agent}.dead"


def results_topic(client_id: str) -> str:
    return f"murmur.results.{client_id}"


def events_topic(client_id: str) -> str:
    return f"murmur.events.{client_id}"


def group_name(agent: str) -> str:
    """The competing-consumer group of an agent is named after its task topic (seed API)."""
    return task_topic(agent)


def agent_of_topic(topic: str) -> str | None:
    """``murmur.<agent>.tasks`` or ``.dead`` -> ``<agent>``; anything else -> None."""
    parts = topic.split(".")
    if len(parts) == 3 and parts[0] == PREFIX and parts[2] in ("tasks", "dead"):
        return parts[1]
    return None
