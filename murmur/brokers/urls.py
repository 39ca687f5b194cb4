"""Broker URL parsing and redaction, shared by every adapter and the CLI."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from murmur.errors import ConfigurationError

SCHEMES = {
    "memory": "memory",
    "redis": "redis",
    "rediss": "redis",
    "nats": "nats",
    "tls": "nats",
    "kafka": "kafka",
}


def broker_kind(url: str) -> str:
    """Which adapter serves ``url``; a misspelt or missing scheme is a clear error."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"broker URL {redact(str(url))!r} has no scheme; use one of "
            "redis://host:6379, rediss://..., nats://host:4222, kafka://host:9092, memory://"
        )
    scheme = url.split("://", 1)[0].lower()
    try:
        return SCHEMES[scheme]
    except KeyError:
        known = ", ".join(f"{s}://" for s in SCHEMES)
        raise ConfigurationError(
            f"unknown broker scheme {scheme + '://'!r} in {redact(url)!r}; expected one of {known}"
        ) from None


def redact(url: str) -> str:
    """Drop the password (and a token user) from a URL so it can be logged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None and not (parts.username and parts.scheme.startswith("nats")):
        return url
    host = parts.netloc.rpartition("@")[2]  # keeps "h1:4222,h2:4222" intact
    user = parts.username or ""
    netloc = f"{user}:***@{host}" if parts.password is not None else f"***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def kafka_bootstrap(url: str) -> list[str]:
    """``kafka://h1:9092,h2:9092`` -> ``["h1:9092", "h2:9092"]``."""
    rest = url.split("://", 1)[1]
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    hosts = [h.strip() for h in netloc.split(",") if h.strip()]
    if not hosts:
        raise ConfigurationError(f"kafka URL {redact(url)!r} names no bootstrap server")
    return [h if ":" in h.rsplit("]", 1)[-1] else f"{h}:9092" for h in hosts]
