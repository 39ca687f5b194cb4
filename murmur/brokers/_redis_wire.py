"""The Redis adapter's fast lane: one packed command per round trip on a pooled connection.

Why: redis-py's ``execute_command`` packs every argument through its encoder and runs
response callbacks; for the two hot commands (``XREADGROUP`` and the write-batch script)
that costs more than everything else the adapter does. They are packed by hiredis and
sent as one payload; replies are parsed by redis-py's hiredis parser (hiredis is a
dependency of murmur).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import hiredis
from redis.exceptions import NoScriptError

if TYPE_CHECKING:
    from redis.asyncio import Redis


def pack(args: Sequence[Any]) -> bytes:
    """RESP multi-bulk for ``args``, packed by hiredis (C)."""
    packed: bytes = hiredis.pack_command(tuple(args))
    return packed


# --------------------------------------------------------------------------- round trips


async def call(client: Redis, payload: bytes) -> Any:
    """Send one packed command on a pooled connection and return its raw reply.

    Skips redis-py's per-command packing and response callbacks; errors behave as in
    ``execute_command`` (a broken connection is closed and raises ConnectionError, an
    error reply raises ResponseError).
    """
    pool = client.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        await conn.send_packed_command(payload, check_health=False)
        return await conn.read_response()
    finally:
        await pool.release(conn)


def bulk(arg: bytes) -> bytes:
    """One packed RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(arg), arg)


class FastScript:
    """A Lua script run through :func:`call` with pre-packed arguments (no KEYS).

    Loaded again when the server lost its script cache (a restart).
    """

    def __init__(self, client: Redis, text: str) -> None:
        self._client = client
        self._text = text
        sha = hashlib.sha1(text.encode()).hexdigest().encode()  # noqa: S324 - Redis' script id
        self._head = bulk(b"EVALSHA") + bulk(sha) + bulk(b"0")

    async def run(self, packed_args: list[bytes], nargs: int) -> Any:
        """Run with ``nargs`` arguments already packed (see :func:`bulk`) in order."""
        payload = b"*%d\r\n%b%b" % (nargs + 3, self._head, b"".join(packed_args))
        try:
            return await call(self._client, payload)
        except NoScriptError:  # a restarted server starts with an empty script cache
            await self._client.script_load(self._text)
            return await call(self._client, payload)
