"""The transformers engine on a GPU: in-process, through our HTTP gateway, and plain transformers.

Needs a CUDA device (``bench/gpu.sh`` runs it, with the engine tests, on a lent GPU machine). It
builds a random-weight Llama-style model offline (``--hidden``/``--layers``; no download), then
measures aggregate output tokens/s on the same weights, every request generating exactly
``--max-tokens`` tokens (``ignore_eos``):

* ``hf serial generate``: ``model.generate`` one request after another (what a naive server does);
* ``hf batched generate``: one ``model.generate`` over ``--concurrency`` max prompts padded
  together (static batching: the ceiling of plain transformers without a scheduler);
* ``engine c=N``: N requests in flight through ``TransformersClient`` in this process
  (continuous batching);
* ``gateway c=N``: the same through ``python -m blueprint serve`` over loopback HTTP
  (non-streamed), and ``gateway stream c=N`` streamed, with time to first token p50/p99.

The gateway's figure over the engine's at the same concurrency is what our HTTP layer costs.

    python bench/gpu.py                               # 1.1B-parameter model, c=1 and c=32
    python bench/gpu.py --hidden 512 --layers 4 --max-tokens 32    # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

KEY = "sk-gpu-bench-0123456789"


def build_model(directory: Path, args: argparse.Namespace) -> Path:
    """The random model, initialised on the GPU (a 1B model's CPU init takes a minute)."""
    import torch

    from blueprint.testing import build_tiny_model

    with torch.device(args.device):
        return build_tiny_model(directory, hidden_size=args.hidden, layers=args.layers,
                                heads=args.hidden // 128, intermediate_size=args.hidden * 4,
                                max_position_embeddings=2048)


def hf_figures(path: Path, args: argparse.Namespace) -> dict[str, float]:
    """Plain transformers, serial and statically batched, in bf16 on the device."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).to(args.device).eval()

    def prompts(n: int) -> list[str]:
        return [tokenizer.apply_chat_template([{"role": "user", "content": f"Hello number {i}"}],
                                              add_generation_prompt=True, tokenize=False) for i in range(n)]

    def generate(texts: list[str]) -> int:
        batch = tokenizer(texts, add_special_tokens=False, return_tensors="pt", padding=True).to(args.device)
        with torch.inference_mode():
            out = model.generate(**batch, max_new_tokens=args.max_tokens, min_new_tokens=args.max_tokens,
                                 do_sample=True, temperature=1.0, pad_token_id=tokenizer.pad_token_id)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return (out.shape[1] - batch.input_ids.shape[1]) * out.shape[0]

    print(f"model: {model.num_parameters() / 1e9:.2f}B parameters")
    generate(prompts(2))  # warm-up: kernels, allocator
    figures: dict[str, float] = {}
    started = time.perf_counter()
    produced = sum(generate([text]) for text in prompts(args.serial_requests))
    figures["hf serial generate"] = produced / (time.perf_counter() - started)
    batch = max(args.concurrency)
    runs = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        produced = generate(prompts(batch))
        runs.append(produced / (time.perf_counter() - started))
    figures[f"hf batched generate b={batch}"] = statistics.median(runs)
    return figures  # the model is freed on return, before the engine loads its own copy


async def engine_figures(path: Path, args: argparse.Namespace) -> dict[str, float]:
    from engine import engine_tokens_per_second

    from blueprint.llm.config import NodeConfig
    from blueprint.llm.engines.transformers import TransformersClient

    client = TransformersClient(NodeConfig(model="bench", path=str(path), device=args.device,
                                           dtype="bfloat16", max_batch_size=max(args.concurrency),
                                           max_queue=0, options={"ignore_eos": True}))
    await client.start()
    figures: dict[str, float] = {}
    try:
        await engine_tokens_per_second(client, concurrency=2, max_tokens=8, wave=4)  # warm-up
        for concurrency in args.concurrency:
            runs = [await engine_tokens_per_second(client, concurrency=concurrency,
                                                   max_tokens=args.max_tokens, wave=concurrency * 2)
                    for _ in range(args.repeats)]
            figures[f"engine c={concurrency}"] = statistics.median(runs)
        figures["(engine peak batch)"] = float(client.peak_batch_size)
    finally:
        await client.close()
    return figures


def write_config(directory: Path, path: Path, port: int, args: argparse.Namespace) -> Path:
    config = directory / "gpu.toml"
    config.write_text(
        f"[[nodes]]\nengine = \"transformers\"\nmodel = \"bench\"\npath = {json.dumps(str(path))}\n"
        f"device = \"{args.device}\"\ndtype = \"bfloat16\"\nmax_batch_size = {max(args.concurrency)}\n"
        f"max_queue = {max(args.concurrency) * 4}\noptions = {{ ignore_eos = true }}\n\n"
        f"[server]\nhost = \"127.0.0.1\"\nport = {port}\napi_keys = [\"{KEY}\"]\n")
    return config


async def gateway_figures(directory: Path, path: Path, args: argparse.Namespace) -> dict[str, float]:
    """Start ``serve``, wait for its model, then drive it with aiohttp at each concurrency."""
    import socket

    import aiohttp
    from engine import bounded_wave

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = write_config(directory, path, port, args)
    log = (directory / "serve.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "blueprint", "serve", "--config", str(config)],  # noqa: ASYNC220
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {KEY}"}
    figures: dict[str, float] = {}
    try:
        async with aiohttp.ClientSession(headers=headers,
                                         connector=aiohttp.TCPConnector(limit=0)) as session:
            deadline = time.monotonic() + args.start_timeout
            while True:
                if proc.poll() is not None:
                    tail = (directory / "serve.log").read_text()[-2000:]
                    raise RuntimeError(f"serve exited {proc.returncode}: {tail}")
                try:
                    async with session.get(f"{base}/v1/models") as answer:
                        if answer.status == 200 and (await answer.json())["data"]:
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("serve did not answer /v1/models in time")
                await asyncio.sleep(0.5)

            async def one(i: int, stream: bool) -> tuple[int, float]:
                body = {"model": "bench", "max_tokens": args.max_tokens, "seed": i, "temperature": 1.0,
                        "stream": stream, "messages": [{"role": "user", "content": f"Hello number {i}"}]}
                if stream:
                    body["stream_options"] = {"include_usage": True}
                started = time.perf_counter()
                async with session.post(f"{base}/v1/chat/completions", json=body) as answer:
                    if answer.status != 200:
                        raise RuntimeError(f"HTTP {answer.status}: {await answer.text()}")
                    if not stream:
                        return (await answer.json())["usage"]["completion_tokens"], 0.0
                    first, tokens = 0.0, 0
                    async for line in answer.content:
                        if not line.startswith(b"data: {"):
                            continue
                        chunk = json.loads(line[6:])
                        if not first and chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                            first = time.perf_counter() - started
                        if chunk.get("usage"):
                            tokens = chunk["usage"]["completion_tokens"]
                    return tokens, first

            async def wave(concurrency: int, stream: bool) -> tuple[float, list[float]]:
                started = time.perf_counter()
                results = await bounded_wave(lambda i: one(i, stream), concurrency * 2, concurrency)
                elapsed = time.perf_counter() - started
                counts = [tokens for tokens, _ in results]
                assert all(c == args.max_tokens for c in counts), f"token counts {counts}"
                return sum(counts) / elapsed, [ttft for _, ttft in results]

            await wave(2, False)  # warm-up
            profilers = start_profiler(proc.pid, args)
            for concurrency in args.concurrency:
                runs = [(await wave(concurrency, False))[0] for _ in range(args.repeats)]
                figures[f"gateway c={concurrency}"] = statistics.median(runs)
            concurrency = max(args.concurrency)
            runs, ttfts = [], []
            for _ in range(args.repeats):
                tps, firsts = await wave(concurrency, True)
                runs.append(tps)
                ttfts.extend(firsts)
            ttfts.sort()
            figures[f"gateway stream c={concurrency}"] = statistics.median(runs)
            figures["(stream ttft p50 ms)"] = ttfts[len(ttfts) // 2] * 1000
            figures["(stream ttft p99 ms)"] = ttfts[min(len(ttfts) - 1, int(len(ttfts) * 0.99))] * 1000
            for profiler in profilers:
                profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            for profiler in profilers:
                await asyncio.to_thread(profiler.wait, 60)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    return figures


def start_profiler(pid: int, args: argparse.Namespace) -> list[subprocess.Popen[bytes]]:
    """py-spy on ``serve`` through the gateway phases (``--profile NAME``): a flame graph per
    thread (``NAME.svg``) and the same samples as collapsed stacks (``NAME.txt``), which show how
    the event loop and the batcher thread share the GIL. Non-blocking: py-spy's default pauses
    the process for every sample, which cut the gateway's figures to a third on the GPU."""
    exe = shutil.which("py-spy")
    if not args.profile or exe is None:
        if args.profile:
            print("--profile: py-spy is not on PATH; no flame graph")
        return []
    return [subprocess.Popen([exe, "record", "--nonblocking", "--threads", "--rate", "100", "--format", fmt,
                              "--output", f"{args.profile}.{suffix}", "--pid", str(pid)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            for fmt, suffix in (("flamegraph", "svg"), ("raw", "txt"))]


def report(figures: dict[str, float], args: argparse.Namespace) -> None:
    serial = figures.get("hf serial generate")
    print(f"\n{'mode':<30}{'tokens/s':>12}{'x hf serial':>13}{'x engine':>10}")
    for label, value in figures.items():
        if label.startswith("("):
            print(f"{label:<30}{value:>12.1f}")
            continue
        engine = figures.get("engine " + label.split()[-1]) if label.startswith("gateway") else None
        vs_engine = f"{value / engine:>10.2f}" if engine else f"{'-':>10}"
        vs_serial = f"{value / serial:>13.2f}" if serial else f"{'-':>13}"
        print(f"{label:<30}{value:>12.1f}{vs_serial}{vs_engine}")


async def main_async(args: argparse.Namespace) -> int:
    import torch

    if not torch.cuda.is_available() and args.device.startswith("cuda"):
        print("no CUDA device: this benchmark needs a GPU (bench/engine.py measures the CPU)")
        return 2
    device_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else args.device
    print(f"torch {torch.__version__}, {device_name}, hidden {args.hidden}, layers "
          f"{args.layers}, max_tokens {args.max_tokens}, concurrency {args.concurrency}, "
          f"repeats {args.repeats}")
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        started = time.perf_counter()
        path = build_model(Path(tmp) / "model", args)
        print(f"model built in {time.perf_counter() - started:.0f} s")
        figures.update(hf_figures(path, args))
        figures.update(await engine_figures(path, args))
        figures.update(await gateway_figures(Path(tmp), path, args))
    report(figures, args)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "figures": figures}, indent=2))  # noqa: ASYNC240
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--serial-requests", type=int, default=4)
    parser.add_argument("--start-timeout", type=float, default=180.0)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--profile", default=None,
                        help="py-spy profile of serve under load: NAME.svg, NAME.txt")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
