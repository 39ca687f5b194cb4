"""Worker presence on NATS (DESIGN §5): one key per worker in the KV bucket
``murmur_presence``.

The value is the worker's record as given (``nats kv get murmur_presence <id>`` shows
its JSON); the header ``Murmur-Presence-TTL`` says how long it lives. JetStream 2.9 has
no per-message TTL, so expiry is decided on read, by the *server's* clock at both ends:
a record expires ``ttl`` after the time the server stored it, compared with the time the
server created the listing consumer. Hosts with skewed clocks therefore agree. The
bucket's ``max_age`` (1 day) removes what killed workers leave behind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from nats.aio.msg import Msg

from murmur.brokers._nats_api import StreamSpec, ack_fields
from murmur.brokers._nats_ledger import bucket_spec, key_token

BUCKET: Final = "murmur_presence"
SUBJECT_PREFIX: Final = f"$KV.{BUCKET}."
TTL_HEADER: Final = "Murmur-Presence-TTL"
DELETE: Final[Mapping[str, str]] = {"KV-Operation": "DEL"}
# Backstop for records nobody dropped; a record must be rewritten within this (it is,
# every heartbeat: a period of up to ~8 h fits).
MAX_AGE_S: Final = 86_400.0


def spec(storage: str, replicas: int) -> StreamSpec:
    return bucket_spec(MAX_AGE_S, storage, replicas, BUCKET)


def subject(worker_id: str) -> str:
    """The key's subject; worker ids that are not plain KV tokens are base64url-encoded."""
    return SUBJECT_PREFIX + key_token(worker_id)


def listing_consumer() -> dict[str, object]:
    """An ephemeral pull consumer that delivers the newest message of every key once."""
    return {
        "deliver_policy": "last_per_subject",
        "ack_policy": "explicit",  # 2.9 requires it for pull consumers; nothing is acked
        "max_deliver": 1,
        "filter_subject": SUBJECT_PREFIX + ">",
        "inactive_threshold": int(60e9),
        "mem_storage": True,
        "num_replicas": 1,
    }


def live_records(msgs: Sequence[Msg], server_now_ms: int) -> list[bytes]:
    """Values of the messages that are neither delete markers nor expired at
    ``server_now_ms``; a value without a TTL header is not a murmur record."""
    out: list[bytes] = []
    for msg in msgs:
        headers = msg.headers or {}
        if headers.get("KV-Operation") in ("DEL", "PURGE"):
            continue
        try:
            ttl_ms = int(headers[TTL_HEADER])
        except (KeyError, ValueError):
            continue
        stored_ms = ack_fields(msg.reply)[2] // 1_000_000
        if stored_ms + ttl_ms > server_now_ms:
            out.append(msg.data)
    return out
