"""Header names on the wire (DESIGN §3). Lower-case everywhere so every broker agrees."""

from __future__ import annotations

SIGNATURE = "murmur-sig"
KEY_ID = "murmur-kid"
CONTENT_TYPE = "content-type"
JSON = "application/json"

# Set on a dead letter next to the original headers.
DEAD_REASON = "murmur-dead-reason"
DEAD_ERROR = "murmur-dead-error"
DEAD_AT = "murmur-dead-at"
DEAD_WORKER = "murmur-dead-worker"
DELIVERY_COUNT = "murmur-delivery-count"
# Kafka has no delivery counter: a requeued task carries its attempt here.
ATTEMPT = "murmur-attempt"
