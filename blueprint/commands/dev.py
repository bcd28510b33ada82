"""``python -m blueprint dev``: the whole local stack in one command, then one job of each kind.

Steps (each printed with its time): anvil with the TNT Core LocalTestnet state; a fresh
blueprint and service with a new operator (bonded, registered, approved through the real
contracts) whose key goes to a keystore in the SDK layout; a small local model (the tiny random
one, built offline and cached, unless ``--model`` names a directory); the daemon, started as the
blueprint manager starts it (``python -m blueprint run`` in a subprocess with the manager's
environment); then a chat, a text completion and an embeddings job from the service owner, whose
results are printed as they arrive. It then keeps serving (jobs and the HTTP API) until Ctrl-C.
``--smoke`` exits instead: 0 when all three results arrived within ``--timeout``.

Everything lives under ``.blueprint-dev/`` in the current directory: ``tiny-model/`` is kept
between runs, ``stack/`` (keystore, ledger, config, logs) is recreated each run since the chain
is fresh too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

DEV_DIR = Path(".blueprint-dev")
TINY_MODEL_ID = "tiny"


class _Steps:
    """Plain step lines with timings (no terminal UI dependency)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def run(self, title: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        print(f"  .. {title}", flush=True)
        t0 = time.perf_counter()
        try:
            out = fn(*args, **kwargs)
        except BaseException:
            print(f"  !! {title} failed after {time.perf_counter() - t0:.1f}s", flush=True)
            raise
        print(f"  ok {title} ({time.perf_counter() - t0:.1f}s)", flush=True)
        return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--smoke", action="store_true",
                        help="Exit after the three demo jobs: 0 if all results arrived, 1 otherwise.")
    parser.add_argument("--model", help="A local model directory (default: the tiny random model).")
    parser.add_argument("--model-id", help="The model id clients use (default: 'tiny' or the folder name).")
    parser.add_argument("--tnt-core", help="Folder (or file) of the TNT Core localtestnet-state.json.")
    parser.add_argument("--port", type=int, default=None,
                        help="Port of the HTTP API (default 8080; a free port with --smoke).")
    parser.add_argument("--device", default="auto", help="Device of the model: cpu, cuda, auto.")
    parser.add_argument("--timeout", type=float, default=180.0, help="Seconds to wait for each stage.")
    parser.add_argument("--dir", default=str(DEV_DIR), help="Working folder (default .blueprint-dev).")


def main(args: argparse.Namespace) -> int:
    from blueprint.devnet.anvil import DevnetError

    try:
        return _main(args)
    except DevnetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _main(args: argparse.Namespace) -> int:
    import logging

    import structlog

    # set-up chatter (every transaction) stays quiet; the daemon logs to its own file
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    from blueprint.devnet.anvil import find_anvil, find_tnt_core_state, free_port, start_anvil
    from blueprint.devnet.stack import DaemonProcess, write_config

    steps = _Steps()
    root = Path(args.dir).resolve()
    stack_dir = root / "stack"
    print("blueprint dev: a local Tangle v2 devnet, a service, a model and the operator daemon")
    state = steps.run("find anvil and the TNT Core state",
                      lambda: (find_anvil(), find_tnt_core_state(args.tnt_core)))[1]
    shutil.rmtree(stack_dir, ignore_errors=True)
    stack_dir.mkdir(parents=True)
    anvil = steps.run("start anvil with the TNT Core state", start_anvil, state=state,
                      log_path=stack_dir / "anvil.log")
    print(f"     chain: {anvil.http_url} (chain id 31337)")
    daemon: DaemonProcess | None = None
    try:
        service = steps.run("create blueprint, operator and service on chain", asyncio.run,
                            _create_service(anvil, stack_dir / "keystore"))
        print(f"     blueprint {service.blueprint_id}, service {service.service_id}, "
              f"operator {service.operator.address}")
        model_dir, model_id = steps.run("prepare the model", _model, args, root)
        print(f"     model {model_id!r} from {model_dir}")
        port = args.port if args.port is not None else (free_port() if args.smoke else 8080)
        config = write_config(stack_dir / "config.toml", [
            {"engine": "transformers", "model": model_id, "path": str(model_dir), "device": args.device},
        ], server_port=port, jobs={"poll_interval_s": 0.5})
        env = service.manager_env(keystore_uri=str(stack_dir / "keystore"), data_dir=str(stack_dir / "data"),
                                  ws_rpc_url=anvil.ws_url)
        env["BLUEPRINT_CONFIG"] = str(config)
        daemon = DaemonProcess(env, stack_dir / "daemon.log")
        steps.run("start the daemon (python -m blueprint run)", _start_daemon, daemon, args.timeout)
        print(f"     OpenAI-compatible API: http://127.0.0.1:{port}/v1  (logs: {daemon.log_path})")
        results = steps.run("submit one job of each kind and wait for the results", asyncio.run,
                            _demo_jobs(anvil, service, model_id, args.timeout))
        for title, result in results:
            print(f"\n--- {title} ---")
            print(json.dumps(_compact(result), indent=2, ensure_ascii=False) if result is not None
                  else "(no result)")
        arrived = all(result is not None for _, result in results)
        total = time.perf_counter() - steps.started
        print(f"\n{'all three results arrived' if arrived else 'some results are missing'} ({total:.1f}s)")
        if args.smoke:
            return 0 if arrived else 1
        _print_env(env)
        print("serving; Ctrl-C to stop", flush=True)
        while daemon.process is not None and daemon.process.poll() is None:
            time.sleep(0.5)
        code = daemon.process.returncode if daemon.process else "?"
        print(f"the daemon exited with {code}:\n{daemon.tail()}")
        return 1
    except KeyboardInterrupt:
        print("\nstopping", flush=True)
        return 0
    finally:
        if daemon is not None:
            code = daemon.stop(timeout=40)
            if args.smoke and code not in (0, -1):
                print(f"daemon exit code {code}:\n{daemon.tail()}", file=sys.stderr)
        anvil.stop()


async def _create_service(anvil: Any, keystore: Path) -> Any:
    from blueprint.devnet.anvil import DEV_KEYS
    from blueprint.devnet.stack import chain_client, create_service

    async with chain_client(anvil) as client:
        return await create_service(client, DEV_KEYS[0], keystore)


def _model(args: argparse.Namespace, root: Path) -> tuple[Path, str]:
    if args.model:
        path = Path(args.model).expanduser().resolve()
        if not path.is_dir():
            raise SystemExit(f"error: --model {path} is not a directory")
        return path, args.model_id or path.name
    from blueprint.testing import build_tiny_model

    path = root / "tiny-model"
    if not (path / "config.json").is_file():
        build_tiny_model(path)
    return path, args.model_id or TINY_MODEL_ID


def _start_daemon(daemon: Any, timeout: float) -> None:
    daemon.start()
    daemon.wait_ready(timeout)


async def _demo_jobs(anvil: Any, service: Any, model_id: str, wait_s: float) -> list[tuple[str, Any]]:
    from blueprint.devnet.setup import submit_job, wait_for_result
    from blueprint.devnet.stack import chain_client
    from blueprint.jobs.codec import decode_result_json, encode_inputs
    from blueprint.tangle.chain import ChainError

    demo = [
        ("job 0: chat completion", 0, 32, {"messages": [{"role": "user", "content": "Say hello."}]}),
        ("job 1: text completion", 1, 16, {"prompt": "The operator serves"}),
        ("job 2: embeddings", 2, 0, {"input": "hello world"}),
    ]
    async with chain_client(anvil) as client:
        calls = []
        for title, job, max_tokens, body in demo:
            call_id = await submit_job(client, service.owner, service.service_id, job,
                                       encode_inputs(model_id, max_tokens, body))
            calls.append((title, call_id))

        async def one(title: str, call_id: int) -> tuple[str, Any]:
            try:
                found = await wait_for_result(client, service.service_id, call_id, wait_s,
                                              operator=service.operator.address)
            except ChainError:
                return title, None
            return f"{title} (call {call_id}, tx {found.tx_hash})", decode_result_json(found.output)

        return list(await asyncio.gather(*(one(t, c) for t, c in calls)))


def _compact(result: Any) -> Any:
    """Embedding vectors shortened to their first values and their size, for the terminal."""
    if isinstance(result, dict) and isinstance(result.get("data"), list):
        data = []
        for item in result["data"]:
            vector = item.get("embedding") if isinstance(item, dict) else None
            if isinstance(vector, list) and len(vector) > 4:
                item = {**item, "embedding": [*vector[:4], f"... ({len(vector)} dimensions)"]}
            data.append(item)
        return {**result, "data": data}
    return result


def _print_env(env: dict[str, str]) -> None:
    print("\nthe daemon runs with the blueprint manager's environment:")
    for key in sorted(env):
        print(f"  {key}={env[key]}")
