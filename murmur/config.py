"""Configuration precedence, in one place: argument > ``MURMUR_*`` environment > default.

The full table (flags, variables, defaults) is in docs/configuration.md; every resolution
goes through the helpers here so the precedence is the same everywhere.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, TypeVar

from murmur.errors import ConfigurationError

if TYPE_CHECKING:
    from murmur.brokers.base import Broker
    from murmur.signing.keyring import KeyInput, Keyring

T = TypeVar("T")

BROKER_URL = "MURMUR_BROKER_URL"
SIGNING_KEYS = "MURMUR_SIGNING_KEYS"
CONCURRENCY = "MURMUR_CONCURRENCY"
PREFETCH = "MURMUR_PREFETCH"
LOG_FORMAT = "MURMUR_LOG_FORMAT"
LOG_LEVEL = "MURMUR_LOG_LEVEL"


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not an integer") from None


def pick_int(value: int | None, env: str, default: int) -> int:
    return value if value is not None else env_int(env, default)


def resolve_broker(value: str | Broker | None) -> str | Broker:
    if value is not None:
        return value
    url = os.environ.get(BROKER_URL, "").strip()
    if not url:
        raise ConfigurationError(
            f"no broker: pass broker='redis://localhost:6379' (or --broker) or set {BROKER_URL}"
        )
    return url


def resolve_keyring(value: KeyInput | None) -> Keyring | None:
    from murmur.signing.keyring import Keyring

    if value is not None:
        return Keyring.coerce(value)
    spec = os.environ.get(SIGNING_KEYS, "").strip()
    return Keyring.parse(spec) if spec else None
