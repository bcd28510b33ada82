"""An emulated OpenAI-compatible LLM server (think ``vllm serve`` without a GPU) for tests and
benchmarks.

It is a real HTTP server (aiohttp.web) on loopback, so the HTTP engine, the gateway and the load
balancer are exercised over real sockets. Its *timing* follows a small LLM cost model instead of a
model's arithmetic, so that routing strategies can be compared on believable numbers:

* **prefill**: ``prefill_s_per_token`` for every prompt token *not* found in this node's prefix
  cache. The cache works like vLLM's automatic prefix caching: the prompt is cut into token-ish
  pieces (words, split further into pieces of at most 4 characters), grouped into blocks of
  ``block_size`` pieces, and each full block is keyed by a hash chained over all blocks before it;
  an LRU keeps ``cache_blocks`` of them. Hits are counted in tokens, as vLLM's
  ``prefix_cache_hits_total``/``prefix_cache_queries_total`` do.
* **decode**: ``decode_s_per_token`` per output token, times ``1 + batch_penalty * (running - 1)``
  so that a busier node decodes each sequence more slowly (a batch costs more per step).
* ``slowdown`` multiplies both (one node twice as slow as its peers).
* at most ``max_num_seqs`` requests run at once; the rest wait (``vllm:num_requests_waiting``).
* fault modes: ``fail_rate``/``fail_status`` (answer an error), ``hang`` (accept, never answer),
  ``die_after_chunks`` (drop the connection mid-stream), ``stall_after_chunks`` (go silent
  mid-stream), and ``trivial`` (no sleeps at all: the
  backend of gateway-overhead benchmarks).

Generated text is deterministic: the same prompt (and ``seed``) always yields the same words, so a
streamed answer concatenates to the non-streamed one.

In-process::

    backend = EmulatedBackend(EmulatedOptions(model="m", decode_s_per_token=0.001))
    port = await backend.start()        # base URL: backend.base_url ("http://127.0.0.1:PORT/v1")
    ...
    await backend.stop()

As a process: ``python -m blueprint.testing.emulated_backend --port 0 --model m`` prints
``READY <port>`` on stdout once it listens, and stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import random
import re
import signal
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from blueprint.errors import BlueprintError, ContextLengthExceededError, ModelNotFoundError
from blueprint.llm.types import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    parse_request,
)

_PIECE_RE = re.compile(r"\s*\S{1,4}")

#: The words generated text is made of (deterministically chosen per prompt).
_VOCAB: tuple[str, ...] = tuple(
    "the a of to and in is it that for on with as was by at be this from or an are not have "
    "model token node chain job block cache prefix batch queue stream route price tangle "
    "operator result answer value quick brown fox jumps over lazy dog river stone light small "
    "large green blue red time space graph tensor layer weight bias kernel vector matrix".split()
)


@dataclasses.dataclass(slots=True)
class EmulatedOptions:
    """The cost model and fault knobs (all mutable at run time on an in-process backend)."""

    model: str = "emulated-model"
    max_model_len: int = 8192
    #: Seconds per prompt token that misses the prefix cache.
    prefill_s_per_token: float = 0.0001
    #: Seconds per output token for a lone sequence.
    decode_s_per_token: float = 0.002
    #: Extra decode cost per additional running sequence (0.05 = +5% per sequence).
    batch_penalty: float = 0.05
    #: Multiplies every sleep: 2.0 makes this node twice as slow.
    slowdown: float = 1.0
    #: Sequences run at once; more wait in a queue.
    max_num_seqs: int = 64
    #: Pieces per prefix-cache block and blocks the LRU keeps.
    block_size: int = 16
    cache_blocks: int = 4096
    #: Tokens the emulated KV cache holds (for ``vllm:kv_cache_usage_perc``).
    kv_capacity_tokens: int = 262_144
    default_max_tokens: int = 16
    embedding_dim: int = 32
    #: Fault injection.
    fail_rate: float = 0.0
    fail_status: int = 500
    retry_after_s: float = 1.0
    hang: bool = False
    die_after_chunks: int | None = None
    #: Go silent (connection open, nothing sent) after this many token chunks of a stream.
    stall_after_chunks: int | None = None
    #: Injected errors carry a ``detail`` nested this deep (a hostile upstream; 0: none).
    error_nesting: int = 0
    #: No sleeps at all (gateway-overhead benchmarks).
    trivial: bool = False
    seed: int = 0


def split_pieces(text: str) -> list[str]:
    """Token-ish pieces: each word, cut into pieces of at most 4 characters (with the leading
    whitespace kept on the first piece), roughly what a BPE tokenizer yields."""
    return _PIECE_RE.findall(text)


class PrefixCache:
    """An LRU of chained block hashes, the shape of vLLM's automatic prefix caching."""

    def __init__(self, block_size: int, capacity_blocks: int) -> None:
        self.block_size = block_size
        self.capacity = capacity_blocks
        self._blocks: OrderedDict[int, None] = OrderedDict()
        self.hits_tokens = 0
        self.queries_tokens = 0

    def lookup_and_insert(self, pieces: Sequence[str]) -> int:
        """Count the prompt's leading tokens already cached, then cache all its full blocks.

        Returns the number of cached (hit) tokens."""
        size = self.block_size
        blocks = self._blocks
        parent = 0
        hit_tokens = 0
        matching = True
        for start in range(0, len(pieces) - size + 1, size):
            parent = hash((parent, *pieces[start:start + size]))
            if parent in blocks:
                blocks.move_to_end(parent)
                if matching:
                    hit_tokens += size
            else:
                matching = False
                blocks[parent] = None
                if len(blocks) > self.capacity:
                    blocks.popitem(last=False)
        self.queries_tokens += len(pieces)
        self.hits_tokens += hit_tokens
        return hit_tokens

    def clear(self) -> None:
        self._blocks.clear()
        self.hits_tokens = 0
        self.queries_tokens = 0


@dataclasses.dataclass(slots=True)
class _Stats:
    requests: int = 0
    running: int = 0
    waiting: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    failures_injected: int = 0
    kv_tokens: int = 0
    errors: int = 0
    tokenizer_calls: int = 0


def _words_for(key: str, seed: int, count: int) -> list[str]:
    """``count`` deterministic words for a prompt key (a tiny LCG over the vocabulary)."""
    state = (zlib.crc32(key.encode()) ^ (seed * 0x9E3779B1)) & 0xFFFFFFFF
    out = []
    vocab = _VOCAB
    n = len(vocab)
    for _ in range(count):
        state = (state * 1_103_515_245 + 12_345) & 0x7FFFFFFF
        out.append(" " + vocab[(state >> 8) % n])
    return out


def _apply_stop(pieces: list[str], stops: list[str]) -> tuple[list[str], str]:
    """Cut generated pieces at the first stop sequence (the stop text itself is not returned)."""
    if not stops:
        return pieces, "length"
    text = "".join(pieces)
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    if cut < 0:
        return pieces, "length"
    kept: list[str] = []
    used = 0
    for piece in pieces:
        if used + len(piece) > cut:
            if cut > used:
                kept.append(piece[: cut - used])
            break
        kept.append(piece)
        used += len(piece)
    return kept, "stop"


def _error_response(status: int, message: str, err_type: str, code: str,
                    headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": err_type, "code": code}}
    return web.Response(status=status, text=json.dumps(body), content_type="application/json",
                        headers=headers)


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


class EmulatedBackend:
    """One emulated node: an aiohttp server with its own prefix cache, batch and counters."""

    def __init__(self, options: EmulatedOptions | None = None, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.options = options or EmulatedOptions()
        self.host = host
        self.port = port
        self.cache = PrefixCache(self.options.block_size, self.options.cache_blocks)
        self.stats = _Stats()
        self._peers: set[tuple[str, int]] = set()
        #: CRC32s of the prompts served (routing tests: on how many nodes did one prompt land).
        self._prompts: set[int] = set()
        self._rng = random.Random(self.options.seed)
        self._slots = asyncio.Semaphore(self.options.max_num_seqs)
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.app = self._build_app()

    # ---------------------------------------------------------------- lifecycle

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        # vLLM's tokenizer endpoints, which vllm-router's cache-aware policy calls per request
        app.router.add_post("/v1/chat/completions/render", self._render_chat)
        app.router.add_post("/v1/completions/render", self._render_completion)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/stats", self._stats)
        app.router.add_post("/reset", self._reset)
        return app

    async def start(self) -> int:
        """Listen on ``host:port`` (port 0 picks a free one) and return the port."""
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                                     shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=1024, reuse_address=True)
        await site.start()
        server = site._server  # the asyncio server: the only way to learn the chosen port
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Stop listening; hanging requests are released first so shutdown is prompt."""
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> EmulatedBackend:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    @property
    def connections_seen(self) -> int:
        """Distinct client connections (peer address and port) that sent requests."""
        return len(self._peers)

    def reset(self) -> None:
        self.cache.clear()
        running, waiting = self.stats.running, self.stats.waiting
        self.stats = _Stats(running=running, waiting=waiting)
        self._peers.clear()
        self._prompts.clear()

    def stats_dict(self) -> dict[str, Any]:
        s = self.stats
        queries = self.cache.queries_tokens
        return {
            "model": self.options.model,
            "requests": s.requests,
            "running": s.running,
            "waiting": s.waiting,
            "prompt_tokens": s.prompt_tokens,
            "generation_tokens": s.generation_tokens,
            "prefix_cache_hits": self.cache.hits_tokens,
            "prefix_cache_queries": queries,
            "prefix_cache_hit_rate": (self.cache.hits_tokens / queries) if queries else 0.0,
            "failures_injected": s.failures_injected,
            "errors": s.errors,
            "connections_seen": self.connections_seen,
            "distinct_prompts": len(self._prompts),
            "tokenizer_calls": s.tokenizer_calls,
            "kv_cache_usage": min(1.0, s.kv_tokens / self.options.kv_capacity_tokens),
        }

    # ---------------------------------------------------------------- shared request path

    def _note_peer(self, request: web.Request) -> None:
        transport = request.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        if peer is not None and len(self._peers) < 1_000_000:
            self._peers.add((peer[0], peer[1]))

    async def _fault(self, request: web.Request) -> web.StreamResponse | None:
        """Injected failures, decided before any work is done."""
        opts = self.options
        if opts.hang:
            await self._stopping.wait()
            return _error_response(503, "emulated backend shutting down", "server_error", "shutdown")
        if opts.fail_rate > 0 and self._rng.random() < opts.fail_rate:
            self.stats.failures_injected += 1
            headers = {"Retry-After": f"{opts.retry_after_s:g}"} if opts.fail_status == 429 else None
            if opts.error_nesting:
                depth = opts.error_nesting
                body = ('{"error":{"message":"emulated failure","detail":' + "[" * depth + "]" * depth
                        + "}}")
                return web.Response(status=opts.fail_status, text=body, content_type="application/json",
                                    headers=headers)
            return _error_response(opts.fail_status, f"emulated failure ({opts.fail_status})",
                                   "server_error" if opts.fail_status >= 500 else "rate_limit_error",
                                   "emulated_failure", headers)
        return None

    def _check_model(self, model: str) -> None:
        if model != self.options.model:
            raise ModelNotFoundError(model)

    def _check_context(self, prompt_tokens: int, max_tokens: int) -> None:
        limit = self.options.max_model_len
        if prompt_tokens + max_tokens > limit:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, "
                f"{max_tokens} in the completion). Please reduce the length of the messages or "
                f"completion.", code="context_length_exceeded")

    async def _sleep(self, seconds: float) -> None:
        if seconds > 0 and not self.options.trivial:
            await asyncio.sleep(seconds * self.options.slowdown)

    def _decode_step_s(self) -> float:
        opts = self.options
        return opts.decode_s_per_token * (1.0 + opts.batch_penalty * max(0, self.stats.running - 1))

    async def _admit(self, prompt_pieces: list[str]) -> int:
        """Wait for a batch slot, then 'prefill' the prompt; returns the prompt token count."""
        stats = self.stats
        stats.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            stats.waiting -= 1
        stats.running += 1
        n = len(prompt_pieces)
        stats.kv_tokens += n
        hit = self.cache.lookup_and_insert(prompt_pieces)
        stats.prompt_tokens += n
        await self._sleep((n - hit) * self.options.prefill_s_per_token)
        return n

    def _release(self, kv_tokens: int) -> None:
        self.stats.running -= 1
        self.stats.kv_tokens -= kv_tokens
        self._slots.release()

    async def _serve(self, request: web.Request, kind: str) -> web.StreamResponse:
        self._note_peer(request)
        self.stats.requests += 1
        body = await request.read()
        try:
            if kind == "chat":
                parsed: ChatCompletionRequest | CompletionRequest = parse_request(
                    ChatCompletionRequest, body)
            else:
                parsed = parse_request(CompletionRequest, body)
            self._check_model(parsed.model)
        except BlueprintError as exc:
            self.stats.errors += 1
            return web.json_response(exc.to_error_object(), status=exc.http_status)
        fault = await self._fault(request)
        if fault is not None:
            return fault
        if isinstance(parsed, ChatCompletionRequest):
            prompts = ["".join(f"{m.role}: {m.text()}\n" for m in parsed.messages) + "assistant:"]
            max_tokens = parsed.requested_max_tokens() or self.options.default_max_tokens
        else:
            prompts = parsed.prompts()
            max_tokens = parsed.max_tokens or self.options.default_max_tokens
        prompt_pieces = [split_pieces(p) for p in prompts]
        if len(self._prompts) < 1_000_000:
            self._prompts.update(zlib.crc32(p.encode()) for p in prompts)
        try:
            for pieces in prompt_pieces:
                self._check_context(len(pieces), max_tokens)
        except BlueprintError as exc:
            self.stats.errors += 1
            return web.json_response(exc.to_error_object(), status=exc.http_status)

        # choices: every prompt times n, each with its own deterministic words
        stops = parsed.stop_list()
        seed = parsed.seed or 0
        outputs: list[tuple[list[str], str]] = []
        for prompt in prompts:
            for c in range(parsed.n):
                words = _words_for(f"{prompt}\x00{c}", seed, max_tokens)
                outputs.append(_apply_stop(words, stops))
        all_pieces = [piece for pieces in prompt_pieces for piece in pieces]
        if parsed.stream:
            return await self._stream(request, kind, parsed, all_pieces, outputs)
        return await self._whole(request, kind, parsed, all_pieces, outputs)

    async def _whole(self, request: web.Request, kind: str, parsed: ChatCompletionRequest | CompletionRequest,
                     prompt_pieces: list[str], outputs: list[tuple[list[str], str]]) -> web.Response:
        prompt_tokens = await self._admit(prompt_pieces)
        steps = max((len(o[0]) for o in outputs), default=0)
        held = prompt_tokens
        try:
            for _ in range(steps):
                await self._sleep(self._decode_step_s())
                self.stats.kv_tokens += 1
                held += 1
        finally:
            self._release(held)
        if self.options.die_after_chunks is not None:
            self._drop(request)  # a crash before the answer: the client sees a closed connection
            return web.Response(status=500)
        completion_tokens = sum(len(o[0]) for o in outputs)
        self.stats.generation_tokens += completion_tokens
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        created = int(time.time())
        if kind == "chat":
            choices: list[dict[str, Any]] = [
                {"index": i, "message": {"role": "assistant", "content": "".join(words)},
                 "finish_reason": reason, "logprobs": None}
                for i, (words, reason) in enumerate(outputs)
            ]
            payload = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                       "created": created, "model": parsed.model, "choices": choices, "usage": usage}
        else:
            choices = [{"index": i, "text": "".join(words), "finish_reason": reason, "logprobs": None}
                       for i, (words, reason) in enumerate(outputs)]
            payload = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                       "created": created, "model": parsed.model, "choices": choices, "usage": usage}
        return web.Response(body=json.dumps(payload, separators=(",", ":")).encode(),
                            content_type="application/json")

    async def _stream(self, request: web.Request, kind: str,
                      parsed: ChatCompletionRequest | CompletionRequest, prompt_pieces: list[str],
                      outputs: list[tuple[list[str], str]]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        # an SSE comment, as servers send to keep a waiting client's connection alive
        await response.write(b": queued\n\n")
        prompt_tokens = await self._admit(prompt_pieces)
        held = prompt_tokens
        chat = kind == "chat"
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())
        # Fixed parts of every chunk, rendered once: only the text and index change.
        obj = "chat.completion.chunk" if chat else "text_completion"
        head = (f'data: {{"id":"{rid}","object":"{obj}","created":{created},'
                f'"model":{json.dumps(parsed.model)},"choices":[{{"index":').encode()
        die_after = self.options.die_after_chunks
        sent = 0
        try:
            if chat:
                for i in range(len(outputs)):
                    await response.write(head + f'{i},"delta":{{"role":"assistant","content":""}},'
                                                '"logprobs":null,"finish_reason":null}]}\n\n'.encode())
            steps = max((len(o[0]) for o in outputs), default=0)
            for step in range(steps):
                await self._sleep(self._decode_step_s())
                self.stats.kv_tokens += 1
                held += 1
                parts = []
                for i, (words, _reason) in enumerate(outputs):
                    if step < len(words):
                        text = json.dumps(words[step])
                        if chat:
                            parts.append(head + f'{i},"delta":{{"content":{text}}},"logprobs":null,'
                                                '"finish_reason":null}]}\n\n'.encode())
                        else:
                            parts.append(head + f'{i},"text":{text},"logprobs":null,'
                                                '"finish_reason":null}]}\n\n'.encode())
                if die_after is not None and sent >= die_after:
                    self._drop(request)
                    return response
                if self.options.stall_after_chunks is not None and sent >= self.options.stall_after_chunks:
                    await self._stopping.wait()
                    return response
                await response.write(b"".join(parts))
                sent += 1
            completion_tokens = sum(len(o[0]) for o in outputs)
            self.stats.generation_tokens += completion_tokens
            finals = []
            for i, (_words, reason) in enumerate(outputs):
                if chat:
                    finals.append(head + f'{i},"delta":{{}},"logprobs":null,'
                                         f'"finish_reason":"{reason}"}}]}}\n\n'.encode())
                else:
                    finals.append(head + f'{i},"text":"","logprobs":null,'
                                         f'"finish_reason":"{reason}"}}]}}\n\n'.encode())
            if parsed.wants_usage_in_stream():
                finals.append(_sse({
                    "id": rid, "object": obj, "created": created, "model": parsed.model,
                    "choices": [],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                              "total_tokens": prompt_tokens + completion_tokens},
                }))
            finals.append(b"data: [DONE]\n\n")
            await response.write(b"".join(finals))
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away: stop generating (the slot is freed below)
        finally:
            self._release(held)
        return response

    @staticmethod
    def _drop(request: web.Request) -> None:
        """Close the TCP connection without finishing the chunked body (a crashed server)."""
        transport = request.transport
        if transport is not None:
            transport.abort()

    # ---------------------------------------------------------------- handlers

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "chat")

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "completion")

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        self._note_peer(request)
        self.stats.requests += 1
        try:
            parsed = parse_request(EmbeddingRequest, await request.read())
            self._check_model(parsed.model)
        except BlueprintError as exc:
            self.stats.errors += 1
            return web.json_response(exc.to_error_object(), status=exc.http_status)
        fault = await self._fault(request)
        if fault is not None:
            return fault
        texts = parsed.texts()
        if texts is None:
            tokens = parsed.token_lists() or []
            texts = [" ".join(str(t) for t in seq) for seq in tokens]
        pieces = [split_pieces(t) for t in texts]
        prompt_tokens = await self._admit([p for ps in pieces for p in ps])
        self._release(prompt_tokens)
        dim = parsed.dimensions or self.options.embedding_dim
        data = []
        for i, text in enumerate(texts):
            rng = random.Random(zlib.crc32(text.encode()))
            vec = [rng.gauss(0.0, 1.0) for _ in range(dim)]
            norm = math.sqrt(sum(v * v for v in vec)) or 1.0
            data.append({"object": "embedding", "index": i, "embedding": [v / norm for v in vec]})
        return web.json_response({
            "object": "list", "data": data, "model": parsed.model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        })

    # ---------------------------------------------------------------- vLLM tokenizer endpoints

    @staticmethod
    def _token_ids(text: str) -> list[int]:
        """Deterministic ids of the text's pieces (the same pieces the prefix cache counts)."""
        return [zlib.crc32(piece.encode()) % 151_936 for piece in split_pieces(text)]

    @staticmethod
    def _chat_prompt(messages: Any) -> str:
        """The emulated chat template (as ``_serve`` renders it) over plain JSON messages."""
        parts = []
        for message in messages if isinstance(messages, list) else []:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            parts.append(f"{message.get('role')}: {content or ''}\n")
        return "".join(parts) + "assistant:"

    async def _read_json(self, request: web.Request) -> dict[str, Any] | None:
        self.stats.tokenizer_calls += 1
        try:
            body = json.loads(await request.read())
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    async def _render_chat(self, request: web.Request) -> web.Response:
        """``POST /v1/chat/completions/render``: the prompt's token ids, no generation."""
        body = await self._read_json(request)
        if body is None or not isinstance(body.get("messages"), list):
            return _error_response(400, "messages required", "invalid_request_error", "bad_request")
        prompt = self._chat_prompt(body["messages"])
        return web.json_response({"model": body.get("model", self.options.model), "prompt": prompt,
                                  "token_ids": self._token_ids(prompt), "features": None})

    async def _render_completion(self, request: web.Request) -> web.Response:
        body = await self._read_json(request)
        prompt = body.get("prompt") if body is not None else None
        if not isinstance(prompt, str):
            return _error_response(400, "a string prompt required", "invalid_request_error", "bad_request")
        return web.json_response({"model": body.get("model", self.options.model),  # type: ignore[union-attr]
                                  "prompt": prompt, "token_ids": self._token_ids(prompt), "features": None})

    async def _tokenize(self, request: web.Request) -> web.Response:
        """``POST /tokenize`` (vLLM's shape): ``prompt`` or chat ``messages`` in, ``tokens`` out."""
        body = await self._read_json(request)
        if body is None:
            return _error_response(400, "a JSON object required", "invalid_request_error", "bad_request")
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            prompt = self._chat_prompt(body.get("messages"))
        tokens = self._token_ids(prompt)
        return web.json_response({"count": len(tokens), "max_model_len": self.options.max_model_len,
                                  "tokens": tokens, "token_strs": None})

    async def _models(self, request: web.Request) -> web.Response:
        opts = self.options
        return web.json_response({"object": "list", "data": [{
            "id": opts.model, "object": "model", "created": int(time.time()), "owned_by": "emulated",
            "root": opts.model, "parent": None, "max_model_len": opts.max_model_len,
        }]})

    async def _health(self, request: web.Request) -> web.Response:
        if self.options.hang:
            await self._stopping.wait()
        return web.Response(text="")

    async def _metrics(self, request: web.Request) -> web.Response:
        s = self.stats
        label = f'{{model_name="{self.options.model}",engine="0"}}'
        kv = min(1.0, s.kv_tokens / self.options.kv_capacity_tokens)
        lines = [
            "# HELP vllm:num_requests_running Number of requests in model execution batches.",
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{label} {float(s.running)}",
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{label} {float(s.waiting)}",
            "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f"vllm:kv_cache_usage_perc{label} {kv}",
            "# TYPE vllm:prefix_cache_queries_total counter",
            f"vllm:prefix_cache_queries_total{label} {float(self.cache.queries_tokens)}",
            "# TYPE vllm:prefix_cache_hits_total counter",
            f"vllm:prefix_cache_hits_total{label} {float(self.cache.hits_tokens)}",
            "# TYPE vllm:prompt_tokens_total counter",
            f"vllm:prompt_tokens_total{label} {float(s.prompt_tokens)}",
            "# TYPE vllm:generation_tokens_total counter",
            f"vllm:generation_tokens_total{label} {float(s.generation_tokens)}",
        ]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats_dict())

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})


# -------------------------------------------------------------------- command line


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    defaults = EmulatedOptions()
    parser = argparse.ArgumentParser(
        prog="python -m blueprint.testing.emulated_backend",
        description="An emulated OpenAI-compatible LLM server with a prefill/decode cost model.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed).")
    for field in dataclasses.fields(EmulatedOptions):
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", default=default)
        elif field.name in ("die_after_chunks", "stall_after_chunks"):
            parser.add_argument(flag, type=int, default=None)
        else:
            parser.add_argument(flag, type=type(default), default=default)
    return parser.parse_args(argv)


async def _serve_forever(args: argparse.Namespace) -> None:
    options = EmulatedOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(EmulatedOptions)})
    backend = EmulatedBackend(options, host=args.host, port=args.port)
    port = await backend.start()
    print(f"READY {port}", flush=True)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    try:
        await done.wait()
    finally:
        await backend.stop()


def main(argv: Sequence[str] | None = None) -> None:
    asyncio.run(_serve_forever(_parse_args(argv)))


if __name__ == "__main__":
    main()
