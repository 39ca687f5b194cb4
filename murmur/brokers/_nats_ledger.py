"""The NATS ledger: per-agent task claims and results in a JetStream key-value bucket.

One bucket (``murmur_ledger``, history 1) holds every agent's entries under
``<agent>.<task id>``. Exclusivity comes from JetStream's compare-and-set on publish
(``Nats-Expected-Last-Subject-Sequence``): creating with expected revision 0 succeeds for
exactly one consumer, and taking over an expired claim succeeds only against the revision
that was read. Expiry is an absolute wall-clock time inside the value (workers on many
machines share it; JetStream 2.9 has no per-message TTL), and the bucket's ``max_age``
bounds garbage. The layout follows the KV conventions of the NATS clients, so
``nats kv get murmur_ledger <key>`` shows an entry.
"""

from __future__ import annotations

import asyncio
import base64
import re
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from nats.aio.msg import Msg

from murmur.brokers._nats_api import (
    API,
    WRONG_LAST_SEQUENCE,
    JetStreamError,
    ReplyMux,
    StreamSpec,
    parse_json,
    status,
)
from murmur.brokers.base import Claim, ClaimState, Remember

BUCKET: Final = "murmur_ledger"
STREAM: Final = f"KV_{BUCKET}"
_PRE: Final = f"$KV.{BUCKET}."
_EXPECT: Final = "Nats-Expected-Last-Subject-Sequence"
_OP: Final = "KV-Operation"
_DELETE: Final = {_OP: "DEL"}
_TAKEOVER_ATTEMPTS: Final = 3


def bucket_spec(max_age_s: float, storage: str, replicas: int, bucket: str = BUCKET) -> StreamSpec:
    """A bucket's stream, configured as ``nats kv add`` would (history 1, direct get)."""
    kv_flags: tuple[tuple[str, Any], ...] = (
        ("max_msgs_per_subject", 1),
        ("allow_rollup_hdrs", True),
        ("deny_delete", True),
        ("allow_direct", True),
        ("discard", "new"),
    )
    subjects = (f"$KV.{bucket}.>",)
    return StreamSpec(f"KV_{bucket}", subjects, "limits", max_age_s, storage, replicas, kv_flags)


# ---------------------------------------------------------------------------- keys

_PLAIN = re.compile(r"[A-Za-z0-9_-]+")


def encode_key(agent: str, task_id: str) -> str:
    """``<agent>.<token>``: plain ids stay readable, anything else becomes ``=`` + base64url.

    KV keys allow ``[-/_=.A-Za-z0-9]`` and a dot splits subject tokens, so ids with dots,
    spaces or non-ASCII are encoded; ``=`` never occurs in a plain id, so the two forms
    cannot collide.
    """
    return f"{agent}.{key_token(task_id)}"


def key_token(value: str) -> str:
    """One KV key token for any string: itself when plain, else ``=`` + base64url."""
    if _PLAIN.fullmatch(value):
        return value
    return "=" + base64.urlsafe_b64encode(value.encode()).rstrip(b"=").decode()


def decode_key(key: str) -> tuple[str, str]:
    """Inverse of :func:`encode_key`."""
    agent, _, token = key.partition(".")
    if not token.startswith("="):
        return agent, token
    raw = token[1:]
    return agent, base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()


# ---------------------------------------------------------------------------- values

_HEAD = struct.Struct(">cQH")  # state, expires at (unix ms), owner length; then owner, result
_RUNNING, _DONE = b"R", b"D"


@dataclass(frozen=True, slots=True)
class Entry:
    done: bool
    owner: str
    expires_ms: int
    result: bytes | None = None


def pack(entry: Entry) -> bytes:
    owner = entry.owner.encode()
    head = _HEAD.pack(_DONE if entry.done else _RUNNING, entry.expires_ms, len(owner))
    return head + owner + (entry.result or b"")


def unpack(data: bytes) -> Entry | None:
    """The entry, or None for bytes this format did not write (treated as absent)."""
    if len(data) < _HEAD.size:
        return None
    state, expires_ms, n = _HEAD.unpack_from(data)
    if state not in (_RUNNING, _DONE) or len(data) < _HEAD.size + n:
        return None
    owner = data[_HEAD.size : _HEAD.size + n].decode(errors="replace")
    done = state == _DONE
    return Entry(done, owner, expires_ms, data[_HEAD.size + n :] if done else None)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# ---------------------------------------------------------------------------- bucket


class Conflict(Exception):
    """A compare-and-set lost: the key's revision is not the one expected."""


class KvBucket:
    """The few key-value operations the ledger needs, over the shared request mux."""

    def __init__(self, mux: ReplyMux) -> None:
        self._mux = mux

    async def get(self, key: str) -> tuple[int, bytes | None] | None:
        """``(revision, value)``; value None for a delete marker; None when never written."""
        payload = b'{"last_by_subj":"%s"}' % (_PRE + key).encode()
        msg = await self._mux.request(f"{API}.DIRECT.GET.{STREAM}", payload)
        if status(msg) == "404":
            return None
        headers = msg.headers or {}
        if "Nats-Sequence" not in headers:
            parse_json(msg)  # an API error reply (e.g. direct get disabled): raise it
            raise JetStreamError(0, 0, "unexpected direct get reply")
        deleted = headers.get(_OP) in ("DEL", "PURGE")
        return int(headers["Nats-Sequence"]), None if deleted else msg.data

    async def write_many(
        self, items: Sequence[tuple[str, bytes, int | None]]
    ) -> list[int | Conflict]:
        """Write ``(key, value, expected revision or None)`` in one batch; each result is
        the new revision or :class:`Conflict` (other errors raise)."""
        futs = [await self.issue(key, value, last) for key, value, last in items]
        return [_revision(msg) for msg in await self._mux.wait(futs)]

    async def issue(self, key: str, value: bytes, last: int | None = None) -> asyncio.Future[Msg]:
        """Send a write (if ``last``: only over that revision); :meth:`settle` awaits it."""
        headers = None if last is None else {_EXPECT: str(last)}
        return await self._mux.send(_PRE + key, value, headers)

    async def settle(self, fut: asyncio.Future[Msg]) -> int:
        """The new revision of an issued write; :class:`Conflict` if it lost."""
        rev = _revision((await self._mux.wait((fut,)))[0])
        if isinstance(rev, Conflict):
            raise rev
        return rev

    async def write(self, key: str, value: bytes, last: int | None = None) -> int:
        return await self.settle(await self.issue(key, value, last))

    async def delete(self, key: str, last: int) -> None:
        """Place a delete marker if the key is still at revision ``last``."""
        headers = {**_DELETE, _EXPECT: str(last)}
        rev = _revision(await self._mux.request(_PRE + key, b"", headers))
        if isinstance(rev, Conflict):
            raise rev


def _revision(msg: Msg) -> int | Conflict:
    try:
        seq: int = parse_json(msg)["seq"]
    except JetStreamError as exc:
        if exc.err_code == WRONG_LAST_SEQUENCE:
            return Conflict(exc.description)
        raise
    return seq


# ---------------------------------------------------------------------------- ledger


class Ledger:
    """One consumer's view of the ledger for one agent (claims are owned by consumer id).

    Revisions of this consumer's own running claims are remembered, so renewing or
    dropping a claim is one compare-and-set round trip instead of a read and a write.
    """

    def __init__(self, kv: KvBucket, agent: str, owner: str, lease_ms: int) -> None:
        self._kv = kv
        self._agent = agent
        self._owner = owner
        self._lease_ms = lease_ms
        self._revs: dict[str, int] = {}  # task id -> revision of my running claim

    def _running(self) -> bytes:
        return pack(Entry(False, self._owner, now_ms() + self._lease_ms))

    async def claim(self, task_ids: Sequence[str]) -> list[Claim]:
        """Create every claim in one batch; only ids that already exist take the slow path."""
        keys = [encode_key(self._agent, t) for t in task_ids]
        value = self._running()
        revs = await self._kv.write_many([(k, value, 0) for k in keys])
        out: list[Claim | None] = [None] * len(keys)
        slow: list[int] = []
        for i, rev in enumerate(revs):
            if isinstance(rev, Conflict):
                slow.append(i)
            else:
                self._revs[task_ids[i]] = rev
                out[i] = Claim(ClaimState.CLAIMED)
        if slow:
            found = await asyncio.gather(
                *(self._claim_existing(task_ids[i], keys[i]) for i in slow)
            )
            for i, claim in zip(slow, found, strict=True):
                out[i] = claim
        return [c for c in out if c is not None]

    async def _claim_existing(self, task_id: str, key: str) -> Claim:
        """Decide on an existing entry: done -> DONE, live and not mine -> BUSY, otherwise
        (mine, expired, deleted) take it over with a compare-and-set on its revision."""
        owner: str | None = None
        for _ in range(_TAKEOVER_ATTEMPTS):
            current = await self._kv.get(key)
            last = 0 if current is None else current[0]
            entry = None if current is None or current[1] is None else unpack(current[1])
            if entry is not None and entry.expires_ms > now_ms():
                if entry.done:
                    return Claim(ClaimState.DONE, result=entry.result)
                if entry.owner != self._owner:
                    return Claim(ClaimState.BUSY, owner=entry.owner)
            owner = entry.owner if entry is not None else None
            try:
                self._revs[task_id] = await self._kv.write(key, self._running(), last)
            except Conflict:
                continue  # someone wrote in between: look again
            return Claim(ClaimState.CLAIMED)
        return Claim(ClaimState.BUSY, owner=owner)

    async def renew(self, task_ids: Sequence[str]) -> None:
        """Push the expiry of this consumer's running claims one lease ahead."""
        await asyncio.gather(*(self._renew(t) for t in task_ids))

    async def _renew(self, task_id: str) -> None:
        key = encode_key(self._agent, task_id)
        for cached in (self._revs.pop(task_id, None), None):
            last = cached or await self._own_revision(key)
            if last is None:
                return  # not (or no longer) this consumer's claim
            try:
                self._revs[task_id] = await self._kv.write(key, self._running(), last)
            except Conflict:
                continue  # a stale cached revision, or taken over: look once more
            return

    async def drop(self, task_ids: Sequence[str]) -> None:
        """Delete this consumer's running claims (compare-and-set: never someone else's)."""
        await asyncio.gather(*(self._drop(t) for t in task_ids))

    async def _drop(self, task_id: str) -> None:
        key = encode_key(self._agent, task_id)
        for cached in (self._revs.pop(task_id, None), None):
            last = cached or await self._own_revision(key)
            if last is None:
                return
            try:
                await self._kv.delete(key, last)
            except Conflict:
                continue
            return

    async def _own_revision(self, key: str) -> int | None:
        """The revision of ``key`` if it is a running claim of this consumer, else None."""
        current = await self._kv.get(key)
        if current is None or current[1] is None:
            return None
        entry = unpack(current[1])
        if entry is None or entry.done or entry.owner != self._owner:
            return None
        return current[0]

    async def remember(
        self, item: Remember, alongside: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Store the final result (unconditionally: a finished task ends any claim).

        ``alongside`` (publishing the result) runs after the write is issued and before
        its PubAck is awaited, so the two cost one round trip, not two.
        """
        entry = Entry(True, self._owner, now_ms() + item.ttl_ms, item.result)
        fut = await self._kv.issue(encode_key(self._agent, item.task_id), pack(entry))
        if alongside is not None:
            await alongside()
        await self._kv.settle(fut)
        self._revs.pop(item.task_id, None)

    def forget(self) -> None:
        self._revs.clear()
