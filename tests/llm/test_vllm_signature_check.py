"""``scripts/check_vllm_signatures.py`` (opt-in, for a machine with vLLM) finds a keyword argument
the installed vLLM lacks. Checked here against stand-in modules shaped like vLLM's, one matching
our calls and one where a name was dropped: this tests the checker, not vLLM."""

from __future__ import annotations

import importlib.util
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_vllm_signatures.py"


def load_checker() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("check_vllm_signatures", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stand_in(monkeypatch: pytest.MonkeyPatch, *, drop_sampling: str | None = None) -> types.ModuleType:
    vllm = types.ModuleType("vllm")

    @dataclass
    class AsyncEngineArgs:
        model: str = ""
        served_model_name: Any = None
        dtype: str = "auto"
        max_num_seqs: int | None = None
        max_model_len: int | None = None
        gpu_memory_utilization: float = 0.9
        tensor_parallel_size: int = 1
        pipeline_parallel_size: int = 1
        distributed_executor_backend: Any = None
        quantization: Any = None
        enable_prefix_caching: Any = None
        enforce_eager: bool = False
        max_num_batched_tokens: Any = None
        extra: dict = field(default_factory=dict)

    names = ["max_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "frequency_penalty",
             "presence_penalty", "repetition_penalty", "n", "stop", "logit_bias", "logprobs", "output_kind"]
    names = [n for n in names if n != drop_sampling]
    sampling = types.new_class("SamplingParams")
    sampling.__struct_fields__ = tuple(names)
    sampling.__signature__ = None  # msgspec-like: fields only

    class PoolingParams:
        def __init__(self, task: str | None = None, dimensions: int | None = None) -> None: ...

    class AsyncLLMEngine:
        model_config = None

        @classmethod
        def from_engine_args(cls, engine_args: AsyncEngineArgs) -> AsyncLLMEngine: ...
        async def generate(self, prompt: Any, sampling_params: Any, request_id: str) -> Any: ...
        async def encode(self, prompt: Any, pooling_params: Any, request_id: str) -> Any: ...
        async def abort(self, request_id: str) -> None: ...
        async def check_health(self) -> None: ...
        async def get_tokenizer(self) -> Any: ...

    vllm.AsyncEngineArgs, vllm.SamplingParams = AsyncEngineArgs, sampling
    vllm.PoolingParams, vllm.AsyncLLMEngine = PoolingParams, AsyncLLMEngine
    params_module = types.ModuleType("vllm.sampling_params")
    params_module.RequestOutputKind = types.SimpleNamespace(DELTA=1, FINAL_ONLY=2)
    outputs_module = types.ModuleType("vllm.outputs")
    outputs_module.EmbeddingRequestOutput = type("EmbeddingRequestOutput", (),
                                                 {"from_base": staticmethod(id)})
    for name, module in (("vllm", vllm), ("vllm.sampling_params", params_module),
                         ("vllm.outputs", outputs_module)):
        monkeypatch.setitem(sys.modules, name, module)
    return vllm


def test_a_matching_vllm_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    checker = load_checker()
    assert checker.check(stand_in(monkeypatch)) == []
    assert checker.main() == 0


def test_a_dropped_keyword_is_reported(monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture) -> None:
    checker = load_checker()
    problems = checker.check(stand_in(monkeypatch, drop_sampling="min_p"))
    assert problems == ["SamplingParams: no argument 'min_p'"]
    assert checker.main() == 1
    assert "MISMATCH" in capsys.readouterr().out


def test_without_vllm_nothing_is_claimed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)
    assert load_checker().main() == 2
