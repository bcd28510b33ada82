"""The emulated OpenAI-compatible backend: wire format, cost model, prefix cache, fault modes,
metrics, and the subprocess entry point, all over real loopback HTTP."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from blueprint.testing.emulated_backend import EmulatedBackend, EmulatedOptions, PrefixCache, split_pieces

MODEL = "emu"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def chat_body(text: str = "hello there", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 8, **extra}


async def post(http: aiohttp.ClientSession, eb: EmulatedBackend, path: str,
               body: dict[str, Any]) -> tuple[int, Any, float]:
    began = time.perf_counter()
    async with http.post(eb.base_url + path, json=body) as resp:
        text = await resp.text()
        elapsed = time.perf_counter() - began
        try:
            return resp.status, json.loads(text), elapsed
        except ValueError:
            return resp.status, text, elapsed


def test_pieces_and_prefix_cache_blocks() -> None:
    assert split_pieces("hello world, tokenizers!") == ["hell", "o", " worl", "d,", " toke", "nize", "rs!"]
    cache = PrefixCache(block_size=4, capacity_blocks=3)
    shared = [f"w{i}" for i in range(8)]
    assert cache.lookup_and_insert([*shared, "a", "b", "c", "d", "x"]) == 0
    assert cache.lookup_and_insert([*shared, "e", "f", "g", "h"]) == 8  # two shared blocks hit
    assert cache.lookup_and_insert(["other", *shared]) == 0  # a different first block: no prefix
    assert cache.queries_tokens == 13 + 12 + 9 and cache.hits_tokens == 8
    # capacity 3: the two blocks of the third prompt evicted the shared prefix (LRU)
    assert cache.lookup_and_insert([*shared, "a", "b", "c", "d"]) == 0


async def test_chat_completion_and_stream_formats(http: aiohttp.ClientSession) -> None:
    async with EmulatedBackend(EmulatedOptions(model=MODEL, decode_s_per_token=0.0)) as eb:
        status, whole, _ = await post(http, eb, "/chat/completions", chat_body(n=2))
        assert status == 200 and whole["object"] == "chat.completion"
        assert [c["index"] for c in whole["choices"]] == [0, 1]
        assert whole["choices"][0]["message"]["content"] != whole["choices"][1]["message"]["content"]
        assert whole["usage"]["completion_tokens"] == 16
        body = chat_body(stream=True, stream_options={"include_usage": True})
        async with http.post(eb.base_url + "/chat/completions", json=body) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            raw = await resp.text()
        assert raw.startswith(": ")  # a keep-alive comment first
        events = [line[6:] for line in raw.split("\n\n") if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 8
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        single = await post(http, eb, "/chat/completions", chat_body())
        assert text == single[1]["choices"][0]["message"]["content"]  # deterministic words


async def test_completions_embeddings_models_and_errors(http: aiohttp.ClientSession) -> None:
    options = EmulatedOptions(model=MODEL, decode_s_per_token=0.0, max_model_len=64, embedding_dim=8)
    async with EmulatedBackend(options) as eb:
        status, done, _ = await post(http, eb, "/completions",
                                     {"model": MODEL, "prompt": ["a b", "c d"], "max_tokens": 4})
        assert status == 200 and len(done["choices"]) == 2 and done["usage"]["completion_tokens"] == 8
        words = done["choices"][0]["text"].split()
        _, stopped, _ = await post(http, eb, "/completions",
                                   {"model": MODEL, "prompt": "a b", "max_tokens": 4, "stop": " " + words[2]})
        assert stopped["choices"][0]["text"] == " " + " ".join(words[:2])
        assert stopped["choices"][0]["finish_reason"] == "stop"
        _, emb, _ = await post(http, eb, "/embeddings", {"model": MODEL, "input": ["x", "y"]})
        assert len(emb["data"]) == 2 and len(emb["data"][0]["embedding"]) == 8
        async with http.get(eb.base_url + "/models") as resp:
            assert (await resp.json())["data"][0]["max_model_len"] == 64
        status, err, _ = await post(http, eb, "/chat/completions", chat_body(model="nope"))
        assert status == 404 and err["error"]["code"] == "model_not_found"
        status, err, _ = await post(http, eb, "/chat/completions", chat_body("long " * 100))
        assert status == 413 or status == 400
        assert err["error"]["code"] == "context_length_exceeded"
        status, err, _ = await post(http, eb, "/chat/completions", chat_body(temperature=3))
        assert status == 400 and err["error"]["type"] == "invalid_request_error"


async def test_prefill_cost_is_paid_only_for_uncached_tokens(http: aiohttp.ClientSession) -> None:
    options = EmulatedOptions(model=MODEL, prefill_s_per_token=0.002, decode_s_per_token=0.0)
    async with EmulatedBackend(options) as eb:
        prompt = "lorem ipsum dolor sit amet " * 30  # 150 pieces: 0.3 s of prefill when cold
        _, _, cold = await post(http, eb, "/chat/completions", chat_body(prompt, max_tokens=1))
        _, _, warm = await post(http, eb, "/chat/completions", chat_body(prompt, max_tokens=1))
        assert cold > 0.25 and warm < cold / 3
        async with http.get(eb.root_url + "/metrics") as resp:
            metrics = await resp.text()
        assert 'vllm:prefix_cache_hits_total{model_name="emu",engine="0"} ' in metrics
        stats = eb.stats_dict()
        assert stats["prefix_cache_hits"] >= 144 and 0.4 < stats["prefix_cache_hit_rate"] < 0.5


async def test_decode_slows_with_batch_size_and_slowdown(http: aiohttp.ClientSession) -> None:
    base = EmulatedOptions(model=MODEL, prefill_s_per_token=0.0, decode_s_per_token=0.01, batch_penalty=0.5)
    async with EmulatedBackend(base) as fast, \
            EmulatedBackend(EmulatedOptions(**{**_fields(base), "slowdown": 2.0})) as slow:
        _, _, alone = await post(http, fast, "/chat/completions", chat_body(max_tokens=10))
        _, _, doubled = await post(http, slow, "/chat/completions", chat_body(max_tokens=10))
        began = time.perf_counter()
        await asyncio.gather(*(post(http, fast, "/chat/completions", chat_body(f"q{i}", max_tokens=10))
                               for i in range(4)))
        batched = time.perf_counter() - began
    # lower bounds the cost model guarantees (a loaded machine only adds to each figure, so ratios
    # of two measurements flake there): 10 steps of 10 ms, twice that slowed down, and 2.5x that
    # for four sequences in one batch (each step costs 1 + 0.5 * 3)
    assert alone >= 0.1
    assert doubled >= 0.2
    assert batched >= 0.25


def _fields(options: EmulatedOptions) -> dict[str, Any]:
    return {name: getattr(options, name) for name in options.__slots__}  # type: ignore[attr-defined]


async def test_queue_beyond_max_num_seqs_shows_in_metrics(http: aiohttp.ClientSession) -> None:
    options = EmulatedOptions(model=MODEL, decode_s_per_token=0.02, max_num_seqs=2)
    async with EmulatedBackend(options) as eb:
        tasks = [asyncio.create_task(post(http, eb, "/chat/completions", chat_body(f"q{i}")))
                 for i in range(5)]
        for _ in range(100):
            await asyncio.sleep(0.01)
            if eb.stats.running == 2 and eb.stats.waiting == 3:
                break
        async with http.get(eb.root_url + "/metrics") as resp:
            text = await resp.text()
        assert 'vllm:num_requests_running{model_name="emu",engine="0"} 2.0' in text
        assert 'vllm:num_requests_waiting{model_name="emu",engine="0"} 3.0' in text
        assert all(r[0] == 200 for r in await asyncio.gather(*tasks))
        assert eb.stats.running == 0 and eb.stats.kv_tokens == 0


async def test_fault_modes(http: aiohttp.ClientSession) -> None:
    options = EmulatedOptions(model=MODEL, decode_s_per_token=0.0, fail_rate=0.5, seed=3)
    async with EmulatedBackend(options) as eb:
        statuses = [(await post(http, eb, "/chat/completions", chat_body()))[0] for _ in range(20)]
        assert 3 < statuses.count(500) < 17 and statuses.count(500) + statuses.count(200) == 20
        assert eb.stats_dict()["failures_injected"] == statuses.count(500)
        eb.options.fail_rate, eb.options.fail_status, eb.options.retry_after_s = 1.0, 429, 2
        async with http.post(eb.base_url + "/chat/completions", json=chat_body()) as resp:
            assert resp.status == 429 and resp.headers["Retry-After"] == "2"
        eb.options.fail_rate, eb.options.hang = 0.0, True
        with pytest.raises(asyncio.TimeoutError):
            async with asyncio.timeout(0.3):
                await post(http, eb, "/chat/completions", chat_body())
        eb.options.hang, eb.options.die_after_chunks = False, 2
        with pytest.raises(aiohttp.ClientPayloadError):
            async with http.post(eb.base_url + "/chat/completions", json=chat_body(stream=True)) as resp:
                await resp.read()


async def test_trivial_mode_skips_every_sleep(http: aiohttp.ClientSession) -> None:
    options = EmulatedOptions(model=MODEL, prefill_s_per_token=1.0, decode_s_per_token=1.0, trivial=True)
    async with EmulatedBackend(options) as eb:
        began = time.perf_counter()
        results = await asyncio.gather(*(post(http, eb, "/chat/completions", chat_body(f"q{i}"))
                                         for i in range(30)))
        assert all(r[0] == 200 for r in results)
        assert time.perf_counter() - began < 2.0
        async with http.get(eb.root_url + "/stats") as resp:
            stats = await resp.json()
        assert stats["requests"] == 30 and stats["generation_tokens"] == 240
        async with http.post(eb.root_url + "/reset") as resp:
            assert resp.status == 200
        assert eb.stats_dict()["requests"] == 0


async def test_runs_as_a_subprocess(http: aiohttp.ClientSession) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "blueprint.testing.emulated_backend", "--port", "0", "--model", MODEL,
        "--max-model-len", "1234", "--trivial", stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=20)
        assert line.startswith(b"READY ")
        root = f"http://127.0.0.1:{int(line.split()[1])}"
        async with http.get(root + "/health") as resp:
            assert resp.status == 200
        async with http.get(root + "/v1/models") as resp:
            assert (await resp.json())["data"][0]["max_model_len"] == 1234
        async with http.post(root + "/v1/chat/completions", json=chat_body()) as resp:
            assert (await resp.json())["usage"]["completion_tokens"] == 8
    finally:
        if proc.returncode is None:
            proc.terminate()
        assert await asyncio.wait_for(proc.wait(), timeout=10) == 0


async def test_vllm_render_and_tokenize_endpoints(http: aiohttp.ClientSession) -> None:
    """vllm-router's cache-aware policy calls these per request (vLLM's shapes)."""
    async with EmulatedBackend(EmulatedOptions(model=MODEL, trivial=True)) as eb:
        messages = [{"role": "system", "content": "shared system prompt"}, {"role": "user", "content": "hi"}]
        async with http.post(eb.base_url + "/chat/completions/render",
                             json={"model": MODEL, "messages": messages}) as resp:
            rendered = await resp.json()
        assert resp.status == 200
        assert rendered["prompt"] == "system: shared system prompt\nuser: hi\nassistant:"
        assert len(rendered["token_ids"]) == len(split_pieces(rendered["prompt"]))
        async with http.post(eb.root_url + "/tokenize", json={"model": MODEL, "messages": messages}) as resp:
            tokens = await resp.json()
        assert tokens["tokens"] == rendered["token_ids"] and tokens["count"] == len(tokens["tokens"])
        body = {"model": MODEL, "prompt": "abc"}
        async with http.post(eb.base_url + "/completions/render", json=body) as resp:
            assert (await resp.json())["token_ids"] == EmulatedBackend._token_ids("abc")
        async with http.post(eb.root_url + "/tokenize", data=b"not json") as resp:
            assert resp.status == 400
        assert eb.stats_dict()["tokenizer_calls"] == 4
