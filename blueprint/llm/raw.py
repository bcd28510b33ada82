"""Streamed chunks relayed as the upstream's own bytes.

A proxy node (the ``openai`` engine) does not need to understand a chunk to forward it: parsing
every SSE event into a pydantic model and serialising it again cost more CPU than the rest of the
gateway's per-chunk work together. A :class:`RawChunk` keeps the upstream's JSON and reads only
what routing, usage accounting and metrics need, straight from the bytes:

* ``usage`` is parsed only from the one event that carries a non-null ``usage`` (the last one);
* ``has_choices`` is a byte test (a usage-only event has ``"choices":[]``);
* anything else (``choices[0].delta``, ``model_dump``) parses the payload once, on first use, into
  the engine's chunk type, so code written for pydantic chunks keeps working unchanged.

The SSE writer sends :attr:`RawChunk.payload` as is (see ``blueprint.server.sse``). A whole
non-streamed answer is relayed the same way when the caller says it can take one
(:data:`RELAY_RAW`, set by the HTTP server for its request's task): the job handlers keep getting
pydantic answers, the HTTP path skips a parse and a serialisation per request.

**Relaying into a sink.** A stream's consumer may ``asend`` a :class:`ChunkSink` into the
stream's async generator instead of calling ``anext``. An engine that can (the ``openai`` one)
then hands every following chunk to ``sink.send`` from its upstream read callback, as the bytes
arrive, with no task switch and no generator step per chunk, and calls ``sink.flush`` once per
read (one write to the client for all the events one read brought). The upstream's ``[DONE]`` is
``sink.end``: the client's answer ends right there, in the same write as its last chunk, while
the generator finishes its bookkeeping after (``StopAsyncIteration``). A failure raises, as
``anext`` would; a congested sink (``flush`` says so) gets the next chunk yielded as usual, so the
consumer can await its own pace. A generator that cannot relay ignores the value and yields its
next chunk: sending a sink is always safe.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Protocol

from pydantic import BaseModel

from blueprint import safejson
from blueprint.llm.types import Usage

#: Whether the current task's caller takes relayed answers (``model_response`` sends their bytes).
RELAY_RAW: ContextVar[bool] = ContextVar("relay_raw", default=False)

_USAGE = b'"usage":'
_NO_CHOICES = (b'"choices":[]', b'"choices": []')

# The byte tests on this path use ``find``, not ``in``: on CPython 3.11, ``sub in some_bytes``
# first tries ``sub`` as an integer (``65 in b"A"``), raising and formatting a TypeError it then
# clears, on every call; callgrind counted that as a tenth of the gateway's instructions per
# streamed request (six tests per chunk).


class RawChunk:
    """One upstream SSE ``data`` payload (a chat or text-completion chunk), kept as bytes."""

    __slots__ = ("_parsed", "_type", "has_choices", "payload", "usage")

    def __init__(self, payload: bytes, chunk_type: type[BaseModel]) -> None:
        self.payload = payload
        self._type = chunk_type
        self._parsed: BaseModel | None = None
        #: The chunk's usage, read from the bytes only when they name a non-null one (the last
        #: event of a stream); plain attributes, as every layer reads them for every chunk.
        self.usage: Usage | None = None
        at = payload.find(_USAGE)
        if at >= 0 and not payload[at + 8:at + 14].lstrip().startswith(b"null"):
            data = safejson.loads(payload).get("usage")  # untrusted: depth-bounded
            self.usage = Usage.model_validate(data) if isinstance(data, dict) else None
        #: False for a usage-only event (``"choices":[]``).
        self.has_choices = payload.find(_NO_CHOICES[0]) < 0 and payload.find(_NO_CHOICES[1]) < 0

    @classmethod
    def whole(cls, payload: bytes, answer_type: type[BaseModel], usage: Usage | None) -> RawChunk:
        """A whole answer whose usage the caller has already read (see :func:`read_answer`)."""
        chunk = cls.__new__(cls)
        chunk.payload, chunk._type, chunk._parsed, chunk.usage = payload, answer_type, None, usage
        chunk.has_choices = True
        return chunk

    def parsed(self) -> Any:
        """The payload as the engine's pydantic chunk type (parsed once)."""
        if self._parsed is None:
            self._parsed = self._type.model_validate_json(self.payload)
        return self._parsed

    def __getattr__(self, name: str) -> Any:
        return getattr(self.parsed(), name)

    def model_dump_json(self, **kwargs: Any) -> str:
        return str(self.parsed().model_dump_json(**kwargs))

    def __repr__(self) -> str:
        return f"RawChunk({self.payload[:120]!r})"


def read_answer(payload: bytes, answer_type: type[BaseModel]) -> RawChunk:
    """A whole non-streamed answer to relay as its bytes, checked to be one: a JSON object with a
    list of ``choices`` and, where it has one, a well-typed ``usage`` (what the token metrics and
    the node's counters read). The rest is not validated field by field (that is the cost the
    relay saves), but a cut or garbled body is never relayed as a 200. ``ValueError`` otherwise."""
    data = safejson.loads(payload)  # untrusted: depth-bounded
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        raise ValueError("not a completion (no list of choices)")
    usage = data.get("usage")
    return RawChunk.whole(payload, answer_type, None if usage is None else Usage.model_validate(usage))


class ChunkSink(Protocol):
    """Takes a relayed stream's chunks the moment they are read (see the module docstring).
    Every method is called from a read callback: none may await."""

    def send(self, chunk: RawChunk) -> None:
        """Take ``chunk``; it leaves with the next :meth:`flush` or :meth:`end`."""
        ...

    def flush(self) -> bool:
        """Pass on what :meth:`send` took. True when the consumer is congested (or gone): the
        relay stops, and the generator yields what follows."""
        ...

    def end(self) -> None:
        """The stream is whole (the upstream's ``[DONE]``): pass on what :meth:`send` took and
        the stream's end together. Nothing is sent after it."""
        ...
