"""Throughput of the transformers engine's continuous batching against a serial generate loop.

Builds two random-weight Llama-style models offline (the test model, and a larger one: hidden
512, 8 layers), then measures aggregate output tokens/s:

* ``baseline``: a plain serial loop of ``model.generate`` calls, one request after another;
* ``engine c=N``: N chat requests in flight at once through ``TransformersClient``.

Every request generates exactly ``--max-tokens`` tokens (the engine's ``ignore_eos`` option, and
``min_new_tokens`` for the baseline), so the figures compare equal work. Each figure is the median
of ``--repeats`` runs. The target: engine tokens/s at concurrency 16 >= 4x concurrency 1.

**Constrained decoding** (after the table above): output tokens/s of requests with a
``json_schema`` response format and with a ``required`` tool call, beside free text, at
concurrency 1 and 16, on the same engine. A grammar ends its answer when the JSON is complete, so
these requests make fewer tokens than ``--max-tokens`` at times; tokens/s is what is compared, and
every constrained answer is checked to be valid JSON (a figure with an invalid answer is an
error). The target: at most 15% slower than free text at concurrency 16.

torch runs one intra-op thread by default here (``--threads``), for the baseline and the engine
alike: the figures should measure batching, and on a CPU shared with other busy processes
OpenMP's spinning threads make multi-threaded runs slow and erratic (``--threads 0`` keeps
torch's default).

    python bench/engine.py            # full run (a few minutes on 2 CPU cores)
    python bench/engine.py --quick    # smaller, for a smoke check
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

T = TypeVar("T")

MODELS = {
    "tiny": {"hidden_size": 64, "layers": 2},
    "large": {"hidden_size": 512, "layers": 8},
}


def baseline_tokens_per_second(path: Path, *, requests: int, max_tokens: int, device: str) -> float:
    """Serial ``model.generate``: one request at a time, sampling, EOS ignored."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).to(device).eval()
    started = time.perf_counter()
    produced = 0
    for i in range(requests):
        text = tokenizer.apply_chat_template([{"role": "user", "content": f"Hello number {i}"}],
                                             add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids.to(device)
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=True,
                                 temperature=1.0, pad_token_id=tokenizer.pad_token_id)
        produced += out.shape[1] - ids.shape[1]
    return produced / (time.perf_counter() - started)


async def bounded_wave(one: Callable[[int], Awaitable[T]], wave: int, concurrency: int) -> list[T]:
    """``one(0) .. one(wave - 1)``, at most ``concurrency`` of them in flight at once."""
    gate = asyncio.Semaphore(concurrency)

    async def gated(i: int) -> T:
        async with gate:
            return await one(i)

    return list(await asyncio.gather(*(gated(i) for i in range(wave))))


async def engine_tokens_per_second(client, *, concurrency: int, max_tokens: int, wave: int) -> float:
    """``concurrency`` requests in flight at once, ``wave`` of them in all; output tokens / wall time."""
    from blueprint.llm.types import ChatCompletionRequest

    async def one(i: int) -> int:
        request = ChatCompletionRequest(model="bench", max_tokens=max_tokens, seed=i, temperature=1.0,
                                        messages=[{"role": "user", "content": f"Hello number {i}"}])
        answer = await client.chat(request)
        return answer.usage.completion_tokens

    started = time.perf_counter()
    counts = await bounded_wave(one, wave, concurrency)
    elapsed = time.perf_counter() - started
    assert all(c == max_tokens for c in counts), f"expected {max_tokens} tokens each, got {counts}"
    return sum(counts) / elapsed


#: The structured-output workload: a record with a free string and a list (a random model fills
#: both to their budget-fitted bounds, so answers are long), and a tool with such arguments.
BENCH_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["title", "score", "tags"],
                "properties": {"title": {"type": "string"}, "score": {"type": "integer", "minimum": 0,
                                                                       "maximum": 100},
                               "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}}}}
BENCH_TOOL = {"type": "function", "function": {"name": "record", "parameters": BENCH_SCHEMA}}


async def constrained_tokens_per_second(client, *, mode: str, concurrency: int, max_tokens: int,
                                        wave: int, lengths: list[int] | None = None
                                        ) -> tuple[float, list[int]]:
    """Like :func:`engine_tokens_per_second` for ``mode`` free / json / tool, with each answer's
    tokens; checks every constrained answer parses (arguments for a tool call). ``lengths``
    gives request ``i`` its own ``max_tokens`` (free text shaped like a constrained run)."""
    import json

    from blueprint.llm.types import ChatCompletionRequest

    extra: dict = {}
    if mode == "free-with-tools":  # the tool requests' prompt (tools in the template), free text
        extra = {"tools": [BENCH_TOOL], "tool_choice": "none"}
    elif mode == "json":
        extra = {"response_format": {"type": "json_schema",
                                     "json_schema": {"name": "record", "schema": BENCH_SCHEMA}}}
    elif mode == "tool":
        extra = {"tools": [BENCH_TOOL], "tool_choice": "required", "parallel_tool_calls": False}

    async def one(i: int) -> int:
        request = ChatCompletionRequest(model="bench", max_tokens=lengths[i] if lengths else max_tokens,
                                        seed=i, temperature=1.0, **extra,
                                        messages=[{"role": "user", "content": f"Hello number {i}"}])
        answer = await client.chat(request)
        choice = answer.choices[0]
        if mode in ("json", "tool"):
            # A grammar that cannot finish within max_tokens ends with "length", never as valid.
            assert choice.finish_reason in ("stop", "tool_calls"), f"{mode}: {choice.finish_reason}"
            message = choice.message
            json.loads(message.content if mode == "json" else message.tool_calls[0].function.arguments)
        return answer.usage.completion_tokens

    started = time.perf_counter()
    counts = await bounded_wave(one, wave, concurrency)
    return sum(counts) / (time.perf_counter() - started), list(counts)


async def bench_constrained(path: Path, args: argparse.Namespace) -> list[tuple[str, float, float, float]]:
    """(label, median tokens/s, min, max) per mode and concurrency. Each constrained run is
    followed by free text with the same prompts and the same lengths, request by request (a
    grammar ends answers early and unevenly; shorter answers spend a larger share on prefill
    and request overhead, uneven ones leave the batch's tail half empty, and tool definitions
    lengthen the prompt: the same prompts and lengths isolate what the constraint itself
    costs)."""
    from blueprint.llm.config import NodeConfig
    from blueprint.llm.engines.transformers import TransformersClient

    client = TransformersClient(NodeConfig(model="bench", path=str(path), device=args.device,
                                           max_batch_size=16, max_queue=0, options={"ignore_eos": True}))
    await client.start()
    rows = []
    try:
        for mode in ("free", "json", "tool"):  # warm-up (and the grammar caches)
            await constrained_tokens_per_second(client, mode=mode, concurrency=1,
                                                max_tokens=args.constrained_max_tokens, wave=1)
        for concurrency in (1, 16):
            wave = max(concurrency, 2) * 2
            for mode in ("json", "tool"):
                constrained, free = [], []
                for _ in range(args.repeats):
                    tps, lengths = await constrained_tokens_per_second(
                        client, mode=mode, concurrency=concurrency,
                        max_tokens=args.constrained_max_tokens, wave=wave)
                    constrained.append(tps)
                    free.append((await constrained_tokens_per_second(
                        client, mode="free-with-tools" if mode == "tool" else "free",
                        concurrency=concurrency, max_tokens=0, wave=wave, lengths=lengths))[0])
                rows.append((f"{mode} c={concurrency}", statistics.median(constrained), min(constrained),
                             max(constrained)))
                rows.append((f"free ({mode} lengths) c={concurrency}", statistics.median(free), min(free),
                             max(free)))
    finally:
        await client.close()
    return rows


def print_constrained(name: str, rows: list[tuple[str, float, float, float]]) -> bool:
    figures = {label: median for label, median, _, _ in rows}
    print(f"\n== {name}: constrained decoding ==")
    print(f"{'mode':<28}{'tokens/s':>12}{'range':>16}{'x free text':>14}")
    for label, median, low, high in rows:
        mode, concurrency = label.split()[0], label.split()[-1]
        free = figures.get(f"free ({mode} lengths) {concurrency}", median)
        print(f"{label:<28}{median:>12.1f}{f'{low:.0f}-{high:.0f}':>16}{median / free:>14.2f}")
    ok = True
    for mode in ("json", "tool"):
        slowdown = 1 - figures[f"{mode} c=16"] / figures[f"free ({mode} lengths) c=16"]
        ok &= slowdown <= 0.15
        print(f"{mode} at c=16: {slowdown * 100:+.1f}% slower than free text "
              f"({'meets' if slowdown <= 0.15 else 'MISSES'} the 15% target)")
    return ok


async def bench_model(name: str, path: Path, args: argparse.Namespace) -> list[tuple[str, float]]:
    from blueprint.llm.config import NodeConfig
    from blueprint.llm.engines.transformers import TransformersClient

    rows: list[tuple[str, float]] = []
    base = statistics.median(
        baseline_tokens_per_second(path, requests=args.baseline_requests, max_tokens=args.max_tokens,
                                   device=args.device)
        for _ in range(args.repeats))
    rows.append(("baseline serial generate", base))
    client = TransformersClient(NodeConfig(model="bench", path=str(path), device=args.device,
                                           max_batch_size=max(args.concurrency), max_queue=0,
                                           options={"ignore_eos": True}))
    await client.start()
    try:
        await engine_tokens_per_second(client, concurrency=1, max_tokens=4, wave=1)  # warm-up
        for concurrency in args.concurrency:
            wave = max(concurrency, 2)
            figures = [await engine_tokens_per_second(client, concurrency=concurrency,
                                                      max_tokens=args.max_tokens, wave=wave)
                       for _ in range(args.repeats)]
            rows.append((f"engine c={concurrency}", statistics.median(figures)))
        rows.append(("(engine peak batch size)", float(client.peak_batch_size)))
    finally:
        await client.close()
    return rows


def print_table(name: str, rows: list[tuple[str, float]]) -> None:
    base = rows[0][1]
    single = next((v for label, v in rows if label == "engine c=1"), None)
    print(f"\n== {name} ==")
    print(f"{'mode':<28}{'tokens/s':>12}{'x baseline':>12}{'x engine c=1':>14}")
    for label, value in rows:
        if label.startswith("("):
            print(f"{label:<28}{value:>12.0f}")
            continue
        vs_single = f"{value / single:>14.2f}" if single else f"{'-':>14}"
        print(f"{label:<28}{value:>12.1f}{value / base:>12.2f}{vs_single}")


async def main_async(args: argparse.Namespace) -> int:
    import torch

    from blueprint.testing import build_tiny_model

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"max_tokens {args.max_tokens}, repeats {args.repeats}, concurrency {args.concurrency}")
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        for name in args.models:
            path = build_tiny_model(Path(tmp) / name, **MODELS[name])
            started = time.perf_counter()
            rows = await bench_model(name, path, args)
            print_table(f"{name} ({MODELS[name]['hidden_size']} hidden, {MODELS[name]['layers']} layers)",
                        rows)
            figures = dict(rows)
            if "engine c=1" in figures and "engine c=16" in figures:
                ratio = figures["engine c=16"] / figures["engine c=1"]
                verdict = "meets" if ratio >= 4 else "MISSES"
                ok &= ratio >= 4
                print(f"c=16 / c=1 = {ratio:.2f}x ({verdict} the 4x target); "
                      f"{time.perf_counter() - started:.0f} s")
            if not args.skip_constrained:
                ok &= print_constrained(name, await bench_constrained(path, args))
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer tokens and repeats")
    parser.add_argument("--max-tokens", type=int, default=None, help="tokens per request (64; quick 24)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per figure (3; quick 1)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["tiny", "large"])
    parser.add_argument("--baseline-requests", type=int, default=None, help="serial requests (4; quick 2)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-constrained", action="store_true", help="no constrained-decoding table")
    parser.add_argument("--constrained-max-tokens", type=int, default=96,
                        help="max_tokens of the constrained-decoding table (free text too)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads for baseline and engine alike; 0: torch's default")
    args = parser.parse_args()
    args.max_tokens = args.max_tokens or (24 if args.quick else 64)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.baseline_requests = args.baseline_requests or (2 if args.quick else 4)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
