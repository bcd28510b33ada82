"""Grammar-constrained decoding with llguidance: compiled grammars, per-sequence token masks.

Why llguidance rather than xgrammar: on PyPI both have CPU wheels for Python 3.11, but xgrammar
0.2 requires ``triton`` and ``apache-tvm-ffi`` (hundreds of megabytes beside our pinned CPU torch),
while llguidance is one self-contained abi3 wheel with no dependencies. It computes masks lazily
(no ahead-of-time compilation over the vocabulary, so a new schema costs milliseconds), supports
JSON schema and Lark grammars with embedded ``%json`` (which our tool-call syntax needs), is the
library behind OpenAI's structured outputs, and vLLM accepts the same grammars through its
``guidance`` backend, so the in-process vLLM engine can reuse our bounded grammars as they are.

:class:`GrammarCompiler` (one per engine) wraps the model's tokenizer once (llguidance needs the
vocabulary's bytes) and caches a pristine matcher per grammar; each sequence gets a deep copy
(:class:`GrammarState`). Masks are computed for every constrained row of a batch at once
(:func:`apply_masks`, off the GIL) and laid on the logits as ``-inf``.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections import OrderedDict
from typing import Any

import structlog
import torch

from blueprint.errors import InvalidRequestError
from blueprint.llm.structured import GrammarSpec

log = structlog.get_logger(__name__)

#: Compiled grammars kept per engine (a pristine matcher each; sequences get deep copies).
CACHE_SIZE = 256


class GrammarCompiler:
    """The model's vocabulary as llguidance sees it, and a cache of compiled grammars."""

    def __init__(self, tokenizer: Any, *, eos_token_ids: set[int], vocab_size: int) -> None:
        import llguidance
        import llguidance.hf

        self._llg = llguidance
        eos = sorted(eos_token_ids) or None
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, eos_token=eos)
        self.vocab_size = vocab_size
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def supports(tokenizer: Any) -> bool:
        """llguidance reads fast (Rust) tokenizers only."""
        return getattr(tokenizer, "backend_tokenizer", None) is not None

    def state(self, spec: GrammarSpec) -> GrammarState:
        """A fresh matcher for one sequence (blocking: compiles on a cache miss, milliseconds)."""
        with self._lock:
            template = self._cache.get(spec.key)
            if template is not None:
                self._cache.move_to_end(spec.key)
                self.hits += 1
        if template is None:
            template = self._compile(spec)
            with self._lock:
                self.misses += 1
                self._cache[spec.key] = template
                while len(self._cache) > CACHE_SIZE:
                    self._cache.popitem(last=False)
        return GrammarState(template.deep_copy(), spec)

    def _compile(self, spec: GrammarSpec) -> Any:
        matcher_cls = self._llg.LLMatcher
        if spec.kind == "json":
            grammar = matcher_cls.grammar_from_json_schema(spec.source)
        else:
            grammar = matcher_cls.grammar_from_lark(spec.source)
        error = matcher_cls.validate_grammar(grammar, self.tokenizer)
        if error:
            raise InvalidRequestError(f"The schema cannot be enforced: {_first_line(error)}",
                                      param="response_format" if spec.kind == "json" else "tools")
        matcher = matcher_cls(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise InvalidRequestError(f"The schema cannot be enforced: {_first_line(matcher.get_error())}",
                                      param="response_format" if spec.kind == "json" else "tools")
        return matcher


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else "invalid grammar"


class GrammarState:
    """One sequence's position in its grammar (used by the batching thread, and by the mask
    prefetcher between a step's sampling and the next step's)."""

    __slots__ = ("matcher", "pending", "spec")

    def __init__(self, matcher: Any, spec: GrammarSpec) -> None:
        self.matcher = matcher
        self.spec = spec
        #: A mask being computed ahead for the next step: (future, bitmask, row).
        self.pending: tuple[concurrent.futures.Future[None], torch.Tensor, int] | None = None

    def consume(self, token: int) -> bool:
        return bool(self.matcher.consume_token(token))

    @property
    def done(self) -> bool:
        """Nothing but the end may follow: the output is complete."""
        return bool(self.matcher.is_stopped())

    @property
    def accepting(self) -> bool:
        return bool(self.matcher.is_accepting())

    @property
    def error(self) -> str:
        return str(self.matcher.get_error())


_SHIFTS: dict[torch.device, torch.Tensor] = {}


def _fill(states: list[GrammarState], bitmask: torch.Tensor) -> None:
    """Each state's allowed-token bits into its row of ``bitmask`` (int32 words, GIL released).

    Row by row: llguidance's parallel executor spins worker threads that fight torch's for the
    cores (a 50x slowdown on a busy 2-core CPU), while one row's mask costs 20-200 µs. (Not
    ``llguidance.torch``'s helpers either: that module runs ``torch.compile`` at import, seconds
    on CPU.)"""
    row_bytes = bitmask.shape[1] * 4
    base = bitmask.data_ptr()
    for i, state in enumerate(states):
        state.matcher.unsafe_compute_mask_ptr(base + i * row_bytes, row_bytes)


class MaskPrefetcher:
    """Computes the next step's masks on one helper thread while the model runs its forward
    pass (a step's grammar state is known as soon as its token is sampled), so that constrained
    rows cost the decode loop almost nothing beyond laying the mask on the logits."""

    def __init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="grammar-masks")

    def prefetch(self, states: list[GrammarState], vocab_size: int) -> None:
        if not states:
            return
        bitmask = torch.zeros((len(states), (vocab_size + 31) // 32), dtype=torch.int32)
        future = self._pool.submit(_fill, states, bitmask)
        for row, state in enumerate(states):
            state.pending = (future, bitmask, row)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def apply_masks(logits: torch.Tensor, rows: list[int], states: list[GrammarState]) -> None:
    """Set to ``-inf``, in place, the logits of tokens each row's grammar forbids now (masks
    prefetched where they were, computed here for the others)."""
    words = (logits.shape[-1] + 31) // 32
    bitmask = torch.zeros((len(rows), words), dtype=torch.int32)
    missing: list[GrammarState] = []
    missing_rows: list[int] = []
    for i, state in enumerate(states):
        pending, state.pending = state.pending, None
        if pending is not None and pending[1].shape[1] == words:
            future, prefetched, row = pending
            future.result()
            bitmask[i] = prefetched[row]
        else:
            missing.append(state)
            missing_rows.append(i)
    if missing:
        computed = torch.zeros((len(missing), words), dtype=torch.int32)
        _fill(missing, computed)
        bitmask[missing_rows] = computed
    device = logits.device
    shifts = _SHIFTS.get(device)
    if shifts is None:
        shifts = _SHIFTS[device] = torch.arange(32, dtype=torch.int32, device=device)
    bits = ((bitmask.to(device).unsqueeze(-1) >> shifts) & 1).view(len(rows), -1)[:, :logits.shape[-1]]
    index = torch.tensor(rows, device=device)
    allowed = bits.bool()
    selected = logits.index_select(0, index).masked_fill(~allowed, float("-inf"))
    logits.index_copy_(0, index, selected)

