"""HMAC signing of task and result bodies with a rotatable keyring."""

from murmur.signing.keyring import (
    RESULT_DOMAIN,
    TASK_DOMAIN,
    Keyring,
    Reason,
    Verdict,
    is_expired,
    key_id,
)

__all__ = ["RESULT_DOMAIN", "TASK_DOMAIN", "Keyring", "Reason", "Verdict", "is_expired", "key_id"]
