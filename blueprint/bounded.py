"""Reading a network peer's answer with a size bound.

Why: an upstream inference server, a chain node or another operator is a peer we do not control.
Read without a bound, one broken or hostile peer that answers without end (a body that never
stops, a ``Content-Length`` of terabytes) grows the daemon's memory until it dies, and with it
every operator's work on it. Every answer from a peer is read against a bound that no legitimate
answer comes near, and reading stops as soon as the bound is crossed: nothing past it is held.
"""

from __future__ import annotations

from typing import Protocol

KIB = 1024
MIB = 1024 * KIB


class AnswerTooLargeError(ConnectionError):
    """A peer's answer (or one event of it) passed the bound it was read with. The connection it
    came on is closed, never read to its end nor reused. A ``ConnectionError``: to a caller it is
    a peer that broke the exchange."""

    def __init__(self, limit: int, what: str = "an answer") -> None:
        super().__init__(f"{what} over {size_text(limit)} (a response size limit)")
        self.limit = limit
        self.what = what


def size_text(size: int) -> str:
    """``64 MiB``, ``256 KiB`` or ``1000 bytes``: a bound as a person configured it."""
    if size >= MIB and size % MIB == 0:
        return f"{size // MIB} MiB"
    if size >= KIB and size % KIB == 0:
        return f"{size // KIB} KiB"
    return f"{size} bytes"


class _Content(Protocol):
    async def readany(self) -> bytes: ...


class BodyResponse(Protocol):
    """What :func:`read_bounded` needs of an ``aiohttp.ClientResponse``."""

    @property
    def content_length(self) -> int | None: ...

    @property
    def content(self) -> _Content: ...


async def read_bounded(response: BodyResponse, limit: int, what: str = "an answer") -> bytes:
    """The whole body of an aiohttp client response, or :class:`AnswerTooLargeError` as soon as
    it passes ``limit`` bytes (a declared ``Content-Length`` over it fails before any is read).
    Leaving the response's ``async with`` after the error closes its connection (aiohttp never
    pools a connection whose answer was not read to its end)."""
    length = response.content_length
    if length is not None and length > limit:
        raise AnswerTooLargeError(limit, what)
    parts: list[bytes] = []
    total = 0
    while True:
        data = await response.content.readany()
        if not data:
            return b"".join(parts)
        total += len(data)
        if total > limit:
            raise AnswerTooLargeError(limit, what)
        parts.append(data)
