"""``python -m blueprint dev``: a real service of two operators on a local chain, in one command.

Steps (each printed with its time): check the model (a folder with ``config.json`` and a
tokenizer, or a Hugging Face id already in the local cache); anvil with the TNT Core LocalTestnet
state; our service manager deployed and a blueprint created with it; two fresh operators, bonded
and registered with *different* offers (A offers the model; B offers it at other prices and also
under a second id, ``<model>-b``), a service requested with both and approved by both; one daemon
per operator, started as the blueprint manager starts it (``python -m blueprint run`` in a
subprocess with the manager's environment); then one job of each kind for the shared model and
one for B's own id, from the service owner. Each result is printed with the operator that
answered it (the service's ranking picks one per job: nothing is computed twice). Then it prints
ready-to-paste commands (RPC URL, contract, service id, where the owner's key comes from) to
list the operators, submit a job and get or pay a quote, and keeps serving until Ctrl-C.

``--smoke`` exits instead: 0 when every result arrived and none is an error; otherwise 1, with
the cause of each failure.

Everything lives under ``.blueprint-dev/`` in the current directory: ``tiny-model/`` is kept
between runs, ``stack/`` (keystores, ledgers, configs, logs) is recreated each run since the chain
is fresh too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEV_DIR = Path(".blueprint-dev")
TINY_MODEL_ID = "tiny"
GWEI = 10**9
#: Output tokens offered per request (bounded by the model's context).
OFFER_MAX_OUTPUT = 256


class DevError(Exception):
    """A problem the user can fix, said in one or two lines."""


class _Steps:
    """Plain step lines with timings (no terminal UI dependency)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def run(self, title: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
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
                        help="Exit after the demo jobs: 0 if every result arrived and none is an error, "
                             "1 otherwise (with the causes).")
    parser.add_argument("--model", help="A local model folder, or a Hugging Face id already in the local "
                                        "cache (default: the tiny random model, built offline).")
    parser.add_argument("--model-id", help="The model id clients use (default: 'tiny' or the folder name).")
    parser.add_argument("--tnt-core", help="Folder (or file) of the TNT Core localtestnet-state.json.")
    parser.add_argument("--port", type=int, default=None,
                        help="HTTP API port of operator A (B takes the next one; default 8080, free "
                             "ports with --smoke).")
    parser.add_argument("--device", default="auto", help="Device of the model: cpu, cuda, auto.")
    parser.add_argument("--timeout", type=float, default=180.0, help="Seconds to wait for each stage.")
    parser.add_argument("--dir", default=str(DEV_DIR), help="Working folder (default .blueprint-dev).")


def main(args: argparse.Namespace) -> int:
    from blueprint.devnet.anvil import DevnetError

    try:
        return _main(args)
    except (DevnetError, DevError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


# --- the model -----------------------------------------------------------------------------------

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json",
                    "tiktoken.model")


@dataclass(frozen=True)
class ModelChoice:
    path: str  # a folder, or a Hugging Face id found in the local cache
    model_id: str
    context_length: int


def check_model(model: str | None, model_id: str | None, root: Path) -> ModelChoice:
    """The model to serve, checked before anything starts (a daemon that cannot load it would only
    say so in its log, after the chain and the service were set up)."""
    if model is None:
        from blueprint.testing import build_tiny_model

        path = root / "tiny-model"
        if not (path / "config.json").is_file():
            build_tiny_model(path)
        return ModelChoice(str(path), model_id or TINY_MODEL_ID, _context_of(path / "config.json"))
    folder = Path(model).expanduser()
    if folder.is_dir():
        folder = folder.resolve()
        config = folder / "config.json"
        if not config.is_file():
            raise DevError(f"--model {folder} has no config.json: point it at a Hugging Face model folder "
                           "(config.json, weights and tokenizer files).")
        if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
            raise DevError(f"--model {folder} has no tokenizer ({', '.join(_TOKENIZER_FILES[:3])}): "
                           "copy the tokenizer files next to config.json.")
        return ModelChoice(str(folder), model_id or folder.name, _context_of(config))
    if folder.exists():
        raise DevError(f"--model {folder} is a file: give the model's folder.")
    if "/" in model and not model.startswith((".", "/", "~")):
        cached = _cached_hf_config(model)
        if cached is None:
            raise DevError(f"--model {model}: no such folder, and not in the local Hugging Face cache "
                           f"(dev works offline: run `huggingface-cli download {model}` first).")
        return ModelChoice(model, model_id or model.rsplit("/", 1)[-1], _context_of(Path(cached)))
    raise DevError(f"--model {model}: no such folder.")


def _cached_hf_config(repo_id: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo_id, "config.json")
    return found if isinstance(found, str) else None


def _context_of(config: Path) -> int:
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError) as exc:
        raise DevError(f"cannot read {config}: {exc}") from None
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = data.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


# --- the stack -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class OperatorPlan:
    name: str
    port: int
    nodes: list[dict[str, Any]]


def operator_plans(choice: ModelChoice, ports: tuple[int, int], device: str) -> list[OperatorPlan]:
    """A offers the model; B offers it dearer and also as ``<id>-b`` (cheaper): two offers that
    differ, so each job's ranking, and the prices quotes carry, can be seen to differ."""
    output = min(OFFER_MAX_OUTPUT, choice.context_length)

    def node(name: str, model_id: str, prompt: int, completion: int) -> dict[str, Any]:
        prices = {"price_per_prompt_token_wei": prompt, "price_per_completion_token_wei": completion}
        return {"name": name, "engine": "transformers", "model": model_id, "path": choice.path,
                "device": device, "context_length": choice.context_length, "max_output_tokens": output,
                "options": prices}

    return [
        OperatorPlan("A", ports[0], [node("a", choice.model_id, GWEI, 2 * GWEI)]),
        OperatorPlan("B", ports[1], [node("b", choice.model_id, 2 * GWEI, 3 * GWEI),
                                     node("b2", f"{choice.model_id}-b", GWEI, GWEI)]),
    ]


def _main(args: argparse.Namespace) -> int:
    import logging

    import structlog

    # set-up chatter (every transaction) stays quiet; each daemon logs to its own file
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    from blueprint.devnet.anvil import find_anvil, find_tnt_core_state, free_port, start_anvil
    from blueprint.devnet.stack import DaemonProcess, write_config

    steps = _Steps()
    root = Path(args.dir).resolve()
    stack_dir = root / "stack"
    print("blueprint dev: a local Tangle v2 devnet, a service of two operators, a model, two daemons")
    state = steps.run("find anvil and the TNT Core state",
                      lambda: (find_anvil(), find_tnt_core_state(args.tnt_core)))[1]
    root.mkdir(parents=True, exist_ok=True)
    choice = steps.run("check the model", check_model, args.model, args.model_id, root)
    print(f"     model {choice.model_id!r} from {choice.path} (context {choice.context_length} tokens)")
    shutil.rmtree(stack_dir, ignore_errors=True)
    stack_dir.mkdir(parents=True)
    if args.port is not None:
        ports = (args.port, args.port + 1)
    else:
        ports = (free_port(), free_port()) if args.smoke else (8080, 8081)
    plans = operator_plans(choice, ports, args.device)
    anvil = steps.run("start anvil with the TNT Core state", start_anvil, state=state,
                      log_path=stack_dir / "anvil.log")
    print(f"     chain: {anvil.http_url} (chain id 31337)")
    daemons: list[DaemonProcess] = []
    try:
        service = steps.run("deploy the service manager; two operators register; a service of both",
                            asyncio.run, _create_service(anvil, stack_dir, plans))
        print(f"     manager {service.manager}, blueprint {service.blueprint_id}, "
              f"service {service.service_id}")
        for plan, view, offer in zip(plans, service.operators, service.offers, strict=True):
            models = ", ".join(f"{m.model} ({m.price_per_prompt_token / GWEI:g}/"
                               f"{m.price_per_completion_token / GWEI:g} gwei per prompt/completion token)"
                               for m in offer.models)
            print(f"     operator {plan.name} {view.operator.address}: {models}; API {offer.endpoint}/v1")
        for plan, view in zip(plans, service.operators, strict=True):
            folder = stack_dir / plan.name
            config = write_config(folder / "config.toml", plan.nodes, server_port=plan.port,
                                  jobs={"poll_interval_s": 0.5, "takeover_after_s": 10.0})
            env = view.manager_env(keystore_uri=str(folder / "keystore"), data_dir=str(folder / "data"),
                                   ws_rpc_url=anvil.ws_url)
            env["BLUEPRINT_CONFIG"] = str(config)
            daemons.append(DaemonProcess(env, folder / "daemon.log"))
        steps.run("start the two daemons (python -m blueprint run)", _start_daemons, daemons, args.timeout)
        for plan, daemon in zip(plans, daemons, strict=True):
            print(f"     operator {plan.name}: http://127.0.0.1:{plan.port}/v1  (logs: {daemon.log_path})")
        results = steps.run("submit the demo jobs and wait for their results", asyncio.run,
                            _demo_jobs(anvil, service, choice.model_id, args.timeout))
        names = {view.operator.address: plan.name
                 for plan, view in zip(plans, service.operators, strict=True)}
        for result in results:
            who = f"operator {names.get(result.operator, result.operator)}" if result.operator else "nobody"
            print(f"\n--- {result.title} (call {result.call_id}), answered by {who} ---")
            print(json.dumps(_compact(result.body), indent=2, ensure_ascii=False) if result.body is not None
                  else "(no result)")
        causes = smoke_failures(results, [d.log_path for d in daemons])
        total = time.perf_counter() - steps.started
        if causes:
            print(f"\n{len(causes)} of {len(results)} jobs failed ({total:.1f}s):", file=sys.stderr)
            for cause in causes:
                print(f"  - {cause}", file=sys.stderr)
        else:
            print(f"\nall {len(results)} results arrived, none is an error ({total:.1f}s)")
        if args.smoke:
            return 1 if causes else 0
        print(ready_commands(anvil.http_url, service, plans, choice.model_id))
        print("serving; Ctrl-C to stop", flush=True)
        while all(d.process is not None and d.process.poll() is None for d in daemons):
            time.sleep(0.5)
        for plan, daemon in zip(plans, daemons, strict=True):
            if daemon.process is not None and daemon.process.poll() is not None:
                code = daemon.process.returncode
                print(f"operator {plan.name}'s daemon exited with {code}:\n{daemon.tail()}")
        return 1
    except KeyboardInterrupt:
        print("\nstopping", flush=True)
        return 0
    finally:
        for daemon in daemons:
            code = daemon.stop(timeout=40)
            if args.smoke and code not in (0, -1):
                print(f"daemon exit code {code}:\n{daemon.tail()}", file=sys.stderr)
        anvil.stop()


async def _create_service(anvil: Any, stack_dir: Path, plans: Sequence[OperatorPlan]) -> Any:
    from blueprint.contracts.offer import offer_from_nodes
    from blueprint.devnet.anvil import DEV_KEYS
    from blueprint.devnet.stack import chain_client, create_multi_service
    from blueprint.llm.config import NodeConfig

    offers = [offer_from_nodes([NodeConfig.model_validate(n) for n in plan.nodes], f"http://127.0.0.1:{plan.port}")
              for plan in plans]
    async with chain_client(anvil) as client:
        return await create_multi_service(client, DEV_KEYS[0], offers,
                                          [stack_dir / plan.name / "keystore" for plan in plans])


def _start_daemons(daemons: Sequence[Any], timeout: float) -> None:
    for daemon in daemons:
        daemon.start()
    for daemon in daemons:
        daemon.wait_ready(timeout)


@dataclass(frozen=True)
class DemoResult:
    title: str
    call_id: int
    operator: str | None
    body: Any  # the decoded result JSON, None when none arrived


async def _demo_jobs(anvil: Any, service: Any, model_id: str, wait_s: float) -> list[DemoResult]:
    from blueprint.devnet.setup import submit_job, wait_for_result
    from blueprint.devnet.stack import chain_client
    from blueprint.jobs.codec import decode_result_json, encode_inputs
    from blueprint.tangle.chain import ChainError

    demo = [
        ("job 0: chat completion", 0, model_id, 32,
         {"messages": [{"role": "user", "content": "Say hello."}]}),
        ("job 1: text completion", 1, model_id, 16, {"prompt": "The operator serves"}),
        ("job 2: embeddings", 2, model_id, 0, {"input": "hello world"}),
        (f"job 0 for {model_id}-b (only B offers it)", 0, f"{model_id}-b", 16,
         {"messages": [{"role": "user", "content": "Who serves this?"}]}),
    ]
    async with chain_client(anvil) as client:
        calls = []
        for title, job, model, max_tokens, body in demo:
            call_id = await submit_job(client, service.owner, service.service_id, job,
                                       encode_inputs(model, max_tokens, body))
            calls.append((title, call_id))

        async def one(title: str, call_id: int) -> DemoResult:
            try:
                found = await wait_for_result(client, service.service_id, call_id, wait_s)
            except ChainError:
                return DemoResult(title, call_id, None, None)
            return DemoResult(title, call_id, found.operator, decode_result_json(found.output))

        return list(await asyncio.gather(*(one(t, c) for t, c in calls)))


def smoke_failures(results: Sequence[DemoResult], logs: Sequence[Path] = ()) -> list[str]:
    """One line per job that did not get a good answer: the error it got, or that none came (then
    with the last error the daemons logged, the likely cause)."""
    causes = []
    for result in results:
        body = result.body
        if body is None:
            hint = _last_logged_error(logs)
            causes.append(f"{result.title} (call {result.call_id}): no result arrived"
                          + (f"; the daemons last logged: {hint}" if hint else ""))
        elif isinstance(body, dict) and isinstance(body.get("error"), dict):
            error = body["error"]
            causes.append(f"{result.title} (call {result.call_id}): error {error.get('code')}: "
                          f"{error.get('message')}")
        elif not isinstance(body, dict):
            causes.append(f"{result.title} (call {result.call_id}): not a JSON object: {str(body)[:200]}")
    return causes


def _last_logged_error(logs: Sequence[Path]) -> str | None:
    last = None
    for path in logs:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            if not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("level") in ("error", "critical"):
                detail = entry.get("error") or entry.get("exception", "")
                last = f"{entry.get('event')}: {detail}".strip()[:300]
    return last


def ready_commands(rpc_url: str, service: Any, plans: Sequence[OperatorPlan], model_id: str) -> str:
    """Commands to paste into another terminal while ``dev`` runs (printed, and checked by a test
    that runs them)."""
    from blueprint.devnet.anvil import DEV_KEYS

    request = json.dumps({"messages": [{"role": "user", "content": "Hello!"}]}, separators=(",", ":"))
    quote_body = json.dumps({"job_index": 0, "model": model_id, "max_tokens": 16,
                             "requester": service.owner.address, "service_id": service.service_id,
                             "request": json.loads(request)}, separators=(",", ":"))
    env = {"HTTP_RPC_URL": rpc_url, "TANGLE_CONTRACT": service.operators[0].tangle_contract,
           "SERVICE_ID": str(service.service_id)}
    lines = [
        "",
        "Try it from another terminal (the chain lives as long as this command):",
        "  export " + " ".join(f"{k}={v}" for k, v in env.items()),
        "  # the service owner, the only permitted caller, is anvil's well-known dev account #0",
        "  # (its key is public: use it on this local chain only)",
        f"  export DEV_OWNER_KEY={DEV_KEYS[0]}",
        "  python -m blueprint operators",
        f"  python -m blueprint submit --private-key-env DEV_OWNER_KEY --job chat --model {model_id} "
        f"--max-tokens 16 --request {shlex.quote(request)}",
        f"  curl -s http://127.0.0.1:{plans[0].port}/v1/quote -H 'Content-Type: application/json' "
        f"-d {shlex.quote(quote_body)}",
        f"  python -m blueprint submit --private-key-env DEV_OWNER_KEY --quote --job chat --model {model_id} "
        f"--max-tokens 16 --request {shlex.quote(request)}",
        "",
    ]
    return "\n".join(lines)


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
