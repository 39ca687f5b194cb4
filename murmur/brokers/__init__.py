"""Broker adapters behind one contract (:mod:`murmur.brokers.base`).

``connect_broker("redis://...")`` picks the adapter from the URL scheme; a broker object
is passed through untouched so tests and embedders can configure one themselves.
"""

from __future__ import annotations

import importlib
from typing import Any

from murmur.brokers.base import (
    Broker,
    Claim,
    ClaimState,
    Delivery,
    Message,
    Outbound,
    QueueStats,
    Remember,
    Subscription,
    TaskConsumer,
)
from murmur.brokers.urls import broker_kind, redact
from murmur.errors import ConfigurationError

_ADAPTERS = {
    "memory": ("murmur.brokers.memory", "MemoryBroker"),
    "redis": ("murmur.brokers.redis", "RedisBroker"),
    "nats": ("murmur.brokers.nats", "NatsBroker"),
    "kafka": ("murmur.brokers.kafka", "KafkaBroker"),
}


def create_broker(url: str | Broker, **options: Any) -> Broker:
    """Build (not connect) the adapter for ``url``; ``options`` go to its constructor."""
    if isinstance(url, Broker):
        return url
    kind = broker_kind(url)
    module, name = _ADAPTERS[kind]
    try:
        cls: type[Broker] = getattr(importlib.import_module(module), name)
    except ImportError as exc:  # depends on the installed extras
        raise ConfigurationError(
            f"the {kind} broker needs a client library that is not installed ({exc.name}); "
            f"install it with: pip install 'faststream[{kind}]'"
        ) from exc
    return cls(url, **options)


async def connect_broker(url: str | Broker, **options: Any) -> Broker:
    """Create and connect; raises :class:`murmur.errors.BrokerUnavailable` when unreachable."""
    broker = create_broker(url, **options)
    await broker.connect()
    return broker


__all__ = [
    "Broker",
    "Claim",
    "ClaimState",
    "Delivery",
    "Message",
    "Outbound",
    "QueueStats",
    "Remember",
    "Subscription",
    "TaskConsumer",
    "connect_broker",
    "create_broker",
    "redact",
]
