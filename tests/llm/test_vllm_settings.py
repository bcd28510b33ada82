"""The in-process vLLM engine's typed settings, its loading off the event loop and its error
mapping. vLLM cannot run here (no CPU wheel): the engine is driven through a stand-in module that
records how it is called, so what is tested is our side of each call, not vLLM."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import types
from pathlib import Path

import pytest
from pydantic import ValidationError

from blueprint.balancer.balancer import _counts_against_node
from blueprint.config import load_settings
from blueprint.errors import BackendError, ContextLengthExceededError, InvalidRequestError
from blueprint.llm.config import NodeConfig, VllmSettings
from blueprint.llm.engines.vllm import VllmClient, engine_args, map_engine_error


def test_typed_settings_become_engine_arguments() -> None:
    node = NodeConfig(engine="vllm", model="llama", path="/models/llama", context_length=8192,
                      max_batch_size=64, vllm=VllmSettings(
                          gpu_memory_utilization=0.85, tensor_parallel_size=4, pipeline_parallel_size=2,
                          distributed_executor_backend="ray", quantization="fp8",
                          enable_prefix_caching=True),
                      options={"engine_args": {"swap_space": 8, "tensor_parallel_size": 8}})
    assert engine_args(node) == {
        "model": "/models/llama", "served_model_name": "llama", "dtype": "auto", "max_num_seqs": 64,
        "max_model_len": 8192, "gpu_memory_utilization": 0.85, "pipeline_parallel_size": 2,
        "distributed_executor_backend": "ray", "quantization": "fp8", "enable_prefix_caching": True,
        "swap_space": 8, "tensor_parallel_size": 8,  # options.engine_args is applied last
    }
    assert engine_args(NodeConfig(engine="vllm", model="m")) == {
        "model": "m", "served_model_name": "m", "dtype": "auto", "max_num_seqs": 16}


def test_bad_values_stop_at_load(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        VllmSettings(gpu_memory_utilization=1.5)
    config = tmp_path / "operator.toml"
    config.write_text('[[nodes]]\nengine = "vllm"\nmodel = "m"\npath = "org/m"\n'
                      '[nodes.vllm]\ntensor_paralel_size = 2\n')
    with pytest.raises(ValueError, match=r":6: nodes\[0\]\.vllm\.tensor_paralel_size: unknown key "
                                         r"\(did you mean 'tensor_parallel_size'\?\)"):
        load_settings(config)


class EngineDeadError(Exception):
    """Stands in for vllm.v1.engine.exceptions.EngineDeadError."""


@pytest.mark.parametrize(("raised", "expected", "status"), [
    (ValueError("top_k must be -1 (disable), or at least 1, got 0."), InvalidRequestError, 400),
    (TypeError("unexpected keyword argument 'foo'"), InvalidRequestError, 400),
    (ValueError("This model's maximum context length is 2048 tokens."), ContextLengthExceededError, 413),
    (EngineDeadError("EngineCore encountered an issue."), BackendError, 502),
])
def test_validation_errors_are_the_clients_and_never_trip_the_breaker(
        raised: Exception, expected: type, status: int) -> None:
    mapped = map_engine_error(raised, "vllm:m")
    assert type(mapped) is expected and mapped.http_status == status
    assert _counts_against_node(mapped) is (status == 502)


def stand_in_vllm(load_seconds: float) -> types.ModuleType:
    """A module with vLLM's names, whose engine takes ``load_seconds`` to build and records the
    thread it was built on."""
    module = types.ModuleType("vllm")
    built: dict[str, object] = {}

    class AsyncEngineArgs:
        def __init__(self, **kwargs: object) -> None:
            self.kwargs = kwargs

    class Engine:
        model_config = types.SimpleNamespace(max_model_len=4096, runner_type="generate")

        def get_tokenizer(self) -> object:
            return types.SimpleNamespace(encode=lambda text, add_special_tokens=True: [1],
                                         convert_ids_to_tokens=lambda ids: ["a"], decode=lambda ids: "a")

    class AsyncLLMEngine:
        @staticmethod
        def from_engine_args(args: AsyncEngineArgs) -> Engine:
            time.sleep(load_seconds)
            built.update(thread=threading.current_thread(), args=args.kwargs)
            return Engine()

    module.AsyncEngineArgs = AsyncEngineArgs
    module.AsyncLLMEngine = AsyncLLMEngine
    module.built = built
    return module


async def test_loading_runs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = stand_in_vllm(load_seconds=0.5)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    client = VllmClient(NodeConfig(engine="vllm", model="m", vllm=VllmSettings(tensor_parallel_size=2)))
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.02)
            ticks += 1

    ticker = asyncio.create_task(tick())
    await client.start()
    ticker.cancel()
    assert fake.built["thread"] is not threading.main_thread()
    assert ticks >= 10  # the loop kept running while the weights "loaded"
    assert fake.built["args"]["tensor_parallel_size"] == 2
    assert client.models()[0].context_length == 4096
