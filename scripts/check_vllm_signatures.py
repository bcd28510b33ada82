"""Check the in-process vLLM engine's calls against the vLLM installed here (opt-in).

vLLM has no CPU wheel, so the suite tests our vLLM engine only through its pure mappings. On a
machine where vLLM installs (a CUDA GPU: ``bash scripts/setup.sh --vllm``), run

    python scripts/check_vllm_signatures.py

to see that every name and keyword argument ``blueprint/llm/engines/vllm.py`` passes to vLLM
exists in that version: the engine arguments (with every typed ``[nodes.vllm]`` field set), the
sampling parameters (every request field we map), the pooling parameters, the engine's methods.
Exit 0: all found; 1: something is missing (listed); 2: vLLM is not installed (nothing checked).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blueprint.llm.config import NodeConfig, VllmSettings
from blueprint.llm.engines.vllm import _SAMPLING_FIELDS, engine_args

#: Engine methods we call, with the keyword arguments we pass by name (positional ones: []).
ENGINE_METHODS: dict[str, list[str]] = {
    "generate": ["prompt", "sampling_params", "request_id"],
    "encode": [],
    "abort": [],
    "check_health": [],
    "get_tokenizer": [],
    "from_engine_args": [],
}
SAMPLING_EXTRA = ["max_tokens", "stop", "logit_bias", "logprobs", "output_kind"]
POOLING_ARGS = ["task", "dimensions"]


def accepted_names(target: Any) -> set[str] | None:
    """Keyword names ``target`` (a class or callable) accepts; None when it takes ``**kwargs``."""
    names: set[str] = set()
    if dataclasses.is_dataclass(target):
        names |= {f.name for f in dataclasses.fields(target)}
    names |= set(getattr(target, "__struct_fields__", ()))  # msgspec structs (SamplingParams)
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return names or None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()) and not names:
        return None
    return names | {name for name, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}


def missing(target: Any, wanted: list[str], what: str) -> list[str]:
    names = accepted_names(target)
    if names is None:
        return []
    return [f"{what}: no argument {name!r}" for name in wanted if name not in names]


def full_node() -> NodeConfig:
    """A node with every typed vLLM setting set, so each becomes an engine argument."""
    return NodeConfig(engine="vllm", model="m", path="/models/m", context_length=4096, vllm=VllmSettings(
        gpu_memory_utilization=0.9, tensor_parallel_size=1, pipeline_parallel_size=1,
        distributed_executor_backend="mp", quantization="fp8", enable_prefix_caching=True,
        enforce_eager=True, max_num_batched_tokens=8192))


def check(vllm: Any) -> list[str]:
    """Every problem found in the module ``vllm`` (empty: our calls match it)."""
    problems: list[str] = []
    for name in ("AsyncEngineArgs", "AsyncLLMEngine", "SamplingParams", "PoolingParams"):
        if not hasattr(vllm, name):
            problems.append(f"vllm.{name} does not exist")
    if problems:
        return problems
    problems += missing(vllm.AsyncEngineArgs, sorted(engine_args(full_node())), "AsyncEngineArgs")
    problems += missing(vllm.SamplingParams, sorted({*_SAMPLING_FIELDS.values(), *SAMPLING_EXTRA}),
                        "SamplingParams")
    problems += missing(vllm.PoolingParams, POOLING_ARGS, "PoolingParams")
    engine = vllm.AsyncLLMEngine
    for method, keywords in ENGINE_METHODS.items():
        function = getattr(engine, method, None)
        if function is None:
            problems.append(f"AsyncLLMEngine.{method} does not exist")
        else:
            problems += missing(function, keywords, f"AsyncLLMEngine.{method}")
    if not (hasattr(engine, "model_config") or hasattr(engine, "get_model_config")):
        problems.append("AsyncLLMEngine has neither model_config nor get_model_config")
    try:
        kinds = importlib.import_module(f"{vllm.__name__}.sampling_params").RequestOutputKind
        problems += [f"RequestOutputKind.{k} does not exist" for k in ("DELTA", "FINAL_ONLY")
                     if not hasattr(kinds, k)]
    except (ImportError, AttributeError):
        problems.append("vllm.sampling_params.RequestOutputKind does not exist")
    try:
        outputs = importlib.import_module(f"{vllm.__name__}.outputs")
        if not hasattr(outputs.EmbeddingRequestOutput, "from_base"):
            problems.append("EmbeddingRequestOutput.from_base does not exist")
    except (ImportError, AttributeError):
        problems.append("vllm.outputs.EmbeddingRequestOutput does not exist")
    return problems


def main() -> int:
    try:
        vllm = importlib.import_module("vllm")
    except ImportError:
        print("vLLM is not installed here: nothing checked (bash scripts/setup.sh --vllm on a CUDA "
              "machine)", file=sys.stderr)
        return 2
    problems = check(vllm)
    version = getattr(vllm, "__version__", "?")
    for problem in problems:
        print(f"MISMATCH vllm {version}: {problem}")
    if not problems:
        print(f"ok: every call of blueprint/llm/engines/vllm.py matches vllm {version}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
