"""Continuous batching for a transformers causal LM, on one dedicated worker thread.

Why our own loop: transformers 5 ships a continuous-batching manager (``generate_batch`` /
``init_continuous_batching``), but it samples the whole batch with one generation config, so it
cannot honour a per-request temperature, top-p or seed, and it is built around paged attention
kernels tuned for GPUs. Serving needs per-request sampling, per-request seeds that give the same
text alone or batched, text-level stop sequences and cancellation, so we run the model's plain
``forward`` with a ``DynamicCache`` ourselves:

* The running batch shares one KV cache, **left-padded**: row ``i`` holds its tokens at the right
  end, and a 2-D attention mask marks real tokens. Each row carries its own position ids, so RoPE
  sees every sequence exactly as if it ran alone.
* Between two decode steps the loop **admits** waiting requests: their prompts are prefilled
  together (left-padded), each samples its first token from the prefill logits, and their caches
  are concatenated onto the running batch's (both padded on the left to the longer length).
* Finished or cancelled rows are dropped from the cache (``index_select`` on the batch dimension)
  and columns that became padding in every row are trimmed, so a long finished request does not
  slow the others down.
* Every row samples with its **own** ``torch.Generator`` (seeded from the request's seed), so a
  seeded request draws the same random numbers whatever it is batched with.
* **Grammars** (a sequence with ``grammar`` set, see :mod:`blueprint.llm.grammar`): before
  sampling, the tokens its grammar forbids get ``-inf`` (masks for all constrained rows are
  computed in one pass, off the GIL); the sampled token advances the grammar; a complete grammar
  ends the sequence with ``stop``, and so does the budget's end where the grammar may end there.
  Stop sequences do not apply to constrained sequences (they would cut a valid answer short).
* **Logprobs** (a sequence with ``logprobs`` set) come from the same step's logits, for the rows
  that asked only: a step where no row asked computes no log-softmax over the vocabulary (see
  :func:`sample_step` for which distribution they describe).

Threading: the asyncio side only calls :meth:`ContinuousBatcher.submit`, :meth:`cancel` and
:meth:`call` (thread-safe, non-blocking); results go back through each sequence's ``emit``
callback, which the engine points at ``loop.call_soon_threadsafe(queue.put_nowait, ...)``.
Only this thread touches the model and the decoding tokenizer.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import queue
import secrets
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
import torch
import torch.nn.functional as F
from transformers import DynamicCache

from blueprint.errors import BackendError, BlueprintError, InvalidRequestError
from blueprint.llm.engines._hf_text import TextAssembler, TokenPieces, decode_windows
from blueprint.llm.grammar import GrammarState, MaskPrefetcher, apply_masks
from blueprint.llm.logprobs import LOGPROB_FLOOR, TokenLogprob, TopLogprob
from blueprint.llm.sampling import SamplingParams

log = structlog.get_logger(__name__)

#: The seeds a torch generator takes (``manual_seed``).
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
#: Padded prompt tokens one prefill may process; more waiting requests wait for the next step.
DEFAULT_PREFILL_TOKEN_BUDGET = 8192


@dataclass(slots=True)
class SeqEvent:
    """What one sequence produced: new text, and at the end its finish reason and token count.

    ``logprobs`` (when the sequence asked for them) describes every token generated since the
    previous event, so the events of a sequence carry each token exactly once, in order, even
    though text may be held back (a split character, a possible stop sequence)."""

    index: int
    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    error: BaseException | None = None
    logprobs: list[TokenLogprob] | None = None
    #: Tokens generated since the previous event (text may lag behind its tokens).
    tokens: int = 0


#: One row's logprobs of one step as :func:`sample_step` returns them: (the sampled token's
#: logprob, the ids of the most likely tokens, their logprobs), most likely first.
RawLogprobs = tuple[float, list[int], list[float]]


@dataclass(eq=False)
class Sequence:
    """One generated sequence (a request with ``n`` > 1 or several prompts has several)."""

    index: int
    prompt_ids: list[int]
    max_new_tokens: int
    params: SamplingParams
    emit: Callable[[SeqEvent], None]
    #: Alternatives wanted per token in the logprobs (0: the sampled token's only); None: no logprobs.
    logprobs: int | None = None
    generated: list[int] = field(default_factory=list)
    #: Logprobs of tokens not yet sent with an event.
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)
    cancelled: bool = False
    done: bool = False
    #: Tokens already accounted for in an event.
    reported: int = 0
    #: The sequence's grammar (``blueprint.llm.grammar.GrammarState``); None: free text.
    grammar: Any = None
    # Set by the worker when the sequence is admitted.
    assembler: TextAssembler | None = None
    generator: torch.Generator | None = None
    counts: torch.Tensor | None = None
    prompt_seen: torch.Tensor | None = None


class ContinuousBatcher:
    """Runs the batching loop (module docstring) on its own thread."""

    def __init__(self, model: Any, tokenizer: Any, *, max_batch_size: int, eos_token_ids: set[int],
                 prefill_token_budget: int = DEFAULT_PREFILL_TOKEN_BUDGET) -> None:
        self._model = model
        # Prefill needs the logits of the last position only: models that can skip the rest
        # (``logits_to_keep``, most causal LMs in transformers 4.50+) save a batch x prompt x
        # vocabulary tensor per prefill (about a gigabyte for a 128k vocabulary at the default budget).
        self._last_logits_only: dict[str, Any] = (
            {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
        )
        # transformers 5.x renamed forward's ``past_key_values`` to ``cache`` (and the output's
        # field with it); the old name still works there but warns on every step.
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters \
            else "past_key_values"
        self._tokenizer = tokenizer
        self._device = model.device
        self._max_batch = max_batch_size
        self._eos = frozenset(eos_token_ids)
        self._prefill_budget = prefill_token_budget
        self._vocab = model.get_output_embeddings().weight.shape[0]
        self._pieces = TokenPieces(tokenizer)
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []
        self._admitting: list[Sequence] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None
        self._next_tokens: torch.Tensor | None = None
        self._positions: torch.Tensor | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._masks: MaskPrefetcher | None = None
        #: Observability (read from other threads; plain ints are safe to read).
        self.peak_batch_size = 0
        self.decode_steps = 0
        self.num_running = 0
        self.num_waiting = 0

    # ------------------------------------------------------------------ public, any thread

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hf-continuous-batcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Fail what is outstanding and end the thread (blocking: call it off the event loop)."""
        if self._thread is None:
            return
        self._inbox.put(("stop", None))
        self._thread.join(timeout)
        self._thread = None
        if self._masks is not None:
            self._masks.close()

    def submit(self, seq: Sequence) -> None:
        self._inbox.put(("add", seq))

    def cancel(self, seq: Sequence) -> None:
        self._inbox.put(("cancel", seq))

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Run ``fn`` on the worker thread between two decode steps (embeddings use this, so that
        only one thread ever runs the model)."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._inbox.put(("call", (fn, future)))
        return future

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                self._drain(block=not (self._running or self._waiting))
                if self._stopping:
                    self._fail_all(BackendError("The transformers engine was stopped."))
                    return
                try:
                    self._drop_cancelled()
                    self._admit()
                    if self._running:
                        self._decode_step()
                except Exception as exc:
                    log.exception("batch_step_failed", running=len(self._running))
                    self._fail_all(BackendError(f"Generation failed: {exc}"))
                self.num_running = len(self._running)
                self.num_waiting = len(self._waiting)

    def _drain(self, *, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            self._handle(*item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _handle(self, kind: str, payload: Any) -> None:
        if kind == "add":
            self._waiting.append(payload)
        elif kind == "cancel":
            payload.cancelled = True
        elif kind == "call":
            fn, future = payload
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except Exception as exc:
                    future.set_exception(exc)
        elif kind == "stop":
            self._stopping = True

    def _fail_all(self, error: BaseException) -> None:
        for seq in [*self._running, *self._admitting, *self._waiting]:
            if not seq.done and not seq.cancelled:
                seq.done = True
                seq.emit(SeqEvent(seq.index, error=error, completion_tokens=len(seq.generated)))
        self._running.clear()
        self._admitting = []
        self._waiting.clear()
        self._reset_batch()

    def _fail_one(self, seq: Sequence, exc: BaseException) -> None:
        """End one sequence with an error (its request's fault: a 400, no harm to the node)."""
        if isinstance(exc, BlueprintError):
            error: BlueprintError = exc
        else:
            error = InvalidRequestError(f"Sampling failed with this request's parameters: "
                                        f"{type(exc).__name__}: {exc}")
        log.warning("sequence_failed", error=error.message)
        if not seq.done and not seq.cancelled:
            seq.done = True
            seq.emit(SeqEvent(seq.index, error=error, completion_tokens=len(seq.generated)))

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]
                ) -> tuple[list[int], list[RawLogprobs | None], dict[int, BaseException]]:
        """:func:`sample_step` over the batch; if it fails, row by row, so that only the rows that
        fail alone are lost (their errors, by row). Every row of several failing alone means the
        node is at fault, not a request: that is raised (the whole batch fails). A single row (a
        request admitted by itself) failing proves nothing against the node: it fails alone, and
        the sequences already decoding go on."""
        try:
            tokens, logprobs = sample_step(logits, seqs)
            return tokens, logprobs, {}
        except Exception as batch_error:
            tokens, logprobs, failed = [0] * len(seqs), [None] * len(seqs), {}
            for row, seq in enumerate(seqs):
                try:
                    (token,), (raw,) = sample_step(logits[row:row + 1], [seq])
                except Exception as exc:
                    failed[row] = exc
                else:
                    tokens[row], logprobs[row] = token, raw
            if len(seqs) > 1 and len(failed) == len(seqs):
                raise batch_error
            return tokens, logprobs, failed

    def _reset_batch(self) -> None:
        self._cache = self._mask = self._next_tokens = self._positions = None

    def _drop_cancelled(self) -> None:
        if any(seq.cancelled for seq in self._waiting):
            self._waiting = deque(seq for seq in self._waiting if not seq.cancelled)
        if any(seq.cancelled for seq in self._running):
            self._keep_rows([i for i, seq in enumerate(self._running) if not seq.cancelled])

    # ------------------------------------------------------------------ admission (prefill)

    def _admit(self) -> None:
        free = self._max_batch - len(self._running)
        new: list[Sequence] = []
        longest = 0
        while self._waiting and len(new) < free:
            length = max(longest, len(self._waiting[0].prompt_ids))
            if new and length * (len(new) + 1) > self._prefill_budget:
                break
            longest = length
            new.append(self._waiting.popleft())
        if not new:
            return
        ready = []
        for seq in new:  # one request's bad parameters fail that request, not its neighbours
            try:
                self._prepare(seq)
            except Exception as exc:
                self._fail_one(seq, exc)
            else:
                ready.append(seq)
        if not ready:
            return
        new = ready
        self._admitting = new  # so that a failing prefill still answers them
        ids, mask = self._left_pad([seq.prompt_ids for seq in new])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self._model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                          **self._last_logits_only)
        tokens, logprobs, failed = self._sample(out.logits[:, -1, :], new)
        keep = self._advance_all(new, tokens, logprobs, failed)
        if keep:
            self._merge(getattr(out, self._cache_arg), mask, [new[r] for r in keep],
                        [tokens[r] for r in keep], keep)
        self._admitting = []
        self._prefetch_masks()
        self.peak_batch_size = max(self.peak_batch_size, len(self._running))

    def _prepare(self, seq: Sequence) -> None:
        """Per-sequence state; raises InvalidRequestError for parameters this model cannot take."""
        seed = seq.params.seed if seq.params.seed is not None else secrets.randbits(63)
        if not SEED_MIN <= seed <= SEED_MAX:
            raise InvalidRequestError(f"seed {seed} is outside [{SEED_MIN}, {SEED_MAX}].", param="seed")
        beyond = [token for token in seq.params.logit_bias if token >= self._vocab]
        if beyond:
            raise InvalidRequestError(f"logit_bias names token {beyond[0]}, beyond this model's vocabulary "
                                      f"of {self._vocab}.", param="logit_bias")
        seq.assembler = TextAssembler(self._tokenizer, seq.prompt_ids, seq.params.stop)
        seq.generator = torch.Generator(device=self._device).manual_seed(seed)
        if seq.params.frequency_penalty or seq.params.presence_penalty:
            seq.counts = torch.zeros(self._vocab, device=self._device)
        if seq.params.repetition_penalty != 1.0:
            seq.prompt_seen = torch.zeros(self._vocab, dtype=torch.bool, device=self._device)
            seq.prompt_seen[torch.tensor(seq.prompt_ids, device=self._device)] = True

    def _left_pad(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(p) for p in prompts)
        pad_id = self._tokenizer.pad_token_id or 0
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt):] = 1
        return ids.to(self._device), mask.to(self._device)

    def _merge(self, cache: DynamicCache, mask: torch.Tensor, seqs: list[Sequence], tokens: list[int],
               rows: list[int]) -> None:
        """Append the prefilled rows ``rows`` of ``cache``/``mask`` to the running batch."""
        index = torch.tensor(rows, device=self._device)
        new_layers = [(k.index_select(0, index), v.index_select(0, index)) for k, v in _layers(cache)]
        new_mask = mask.index_select(0, index)
        if self._cache is None:
            layers, merged_mask = new_layers, new_mask
        else:
            assert self._mask is not None
            width = max(self._mask.shape[1], new_mask.shape[1])
            layers = [
                (torch.cat([_pad_left(k0, width), _pad_left(k1, width)]),
                 torch.cat([_pad_left(v0, width), _pad_left(v1, width)]))
                for (k0, v0), (k1, v1) in zip(_layers(self._cache), new_layers, strict=True)
            ]
            merged_mask = torch.cat([F.pad(self._mask, (width - self._mask.shape[1], 0)),
                                     F.pad(new_mask, (width - new_mask.shape[1], 0))])
        new_tokens = torch.tensor(tokens, dtype=torch.long, device=self._device).unsqueeze(1)
        new_positions = torch.tensor([len(seq.prompt_ids) for seq in seqs], device=self._device)
        self._cache = DynamicCache(ddp_cache_data=layers)
        self._mask = merged_mask
        if self._next_tokens is not None and self._positions is not None:
            new_tokens = torch.cat([self._next_tokens, new_tokens])
            new_positions = torch.cat([self._positions, new_positions])
        self._next_tokens, self._positions = new_tokens, new_positions
        self._running.extend(seqs)

    # ------------------------------------------------------------------ decoding

    def _decode_step(self) -> None:
        assert self._mask is not None and self._positions is not None
        mask = F.pad(self._mask, (0, 1), value=1)
        out = self._model(input_ids=self._next_tokens, attention_mask=mask,
                          position_ids=self._positions.unsqueeze(1), use_cache=True,
                          **{self._cache_arg: self._cache})
        self._cache, self._mask = getattr(out, self._cache_arg), mask
        self.decode_steps += 1
        tokens, logprobs, failed = self._sample(out.logits[:, -1, :], self._running)
        self._positions = self._positions + 1
        self._next_tokens = torch.tensor(tokens, dtype=torch.long, device=self._device).unsqueeze(1)
        alive = self._advance_all(self._running, tokens, logprobs, failed)
        if len(alive) < len(self._running):
            self._keep_rows(alive)
        self._prefetch_masks()

    def _prefetch_masks(self) -> None:
        """Start computing the next step's masks of the constrained rows (they overlap the
        model's forward pass; see :class:`blueprint.llm.grammar.MaskPrefetcher`)."""
        states = [seq.grammar for seq in self._running
                  if isinstance(seq.grammar, GrammarState) and seq.grammar.pending is None]
        if states:
            if self._masks is None:
                self._masks = MaskPrefetcher()
            self._masks.prefetch(states, self._vocab)

    def _advance_all(self, seqs: list[Sequence], tokens: list[int], logprobs: list[RawLogprobs | None],
                     failed: dict[int, BaseException] | None = None) -> list[int]:
        """Account for one sampled token per row (and its logprobs, where the row asked);
        returns the rows that go on (``failed`` rows end with their error). The text of all rows
        is decoded in one tokenizer call."""
        failed = failed or {}
        for row, exc in failed.items():
            self._fail_one(seqs[row], exc)
        staged: dict[int, int] = {}
        windows: list[list[int]] = []
        for row, (seq, token) in enumerate(zip(seqs, tokens, strict=True)):
            if row in failed:
                continue
            if seq.grammar is not None and not seq.grammar.consume(token):
                log.error("grammar_rejected_token", token=token, error=seq.grammar.error[:200])
                seq.grammar = _BROKEN
            if token not in self._eos or (seq.params.ignore_eos and seq.grammar is None):
                assert seq.assembler is not None
                staged[row] = len(windows)
                windows.extend(seq.assembler.stage(token))
        texts = decode_windows(self._tokenizer, windows) if windows else []
        alive = []
        for row, (seq, token) in enumerate(zip(seqs, tokens, strict=True)):
            if row in failed:
                continue
            at = staged.get(row)
            raw = logprobs[row]
            if raw is not None:
                seq.pending_logprobs.append(self._token_logprob(token, raw))
            if self._advance(seq, token, None if at is None else (texts[at], texts[at + 1])):
                alive.append(row)
        return alive

    def _token_logprob(self, token: int, raw: RawLogprobs) -> TokenLogprob:
        """A step's raw logprobs with the texts and bytes of the tokens they name."""
        value, top_ids, top_values = raw
        text, data = self._pieces.get(token)
        top = tuple(TopLogprob(*self._pieces.get(i), v) for i, v in zip(top_ids, top_values, strict=True))
        return TokenLogprob(text, data, value, top)

    @staticmethod
    def _take_logprobs(seq: Sequence) -> list[TokenLogprob] | None:
        if seq.logprobs is None:
            return None
        taken, seq.pending_logprobs = seq.pending_logprobs, []
        return taken

    def _advance(self, seq: Sequence, token: int, decoded: tuple[str, str] | None) -> bool:
        """Account for a sampled token (``decoded``: its staged windows' text, None for an EOS
        that ends the sequence); emit text (with the logprobs gathered since the last event);
        return whether the sequence goes on."""
        assert seq.assembler is not None
        seq.generated.append(token)
        finish: str | None = None
        if decoded is None:
            text, _ = seq.assembler.finish()
            finish = "length" if seq.grammar is _BROKEN else "stop"
        else:
            text, stopped = seq.assembler.accept(*decoded)
            grammar = seq.grammar
            if stopped:
                finish = "stop"
            elif grammar is not None and (grammar.done or (len(seq.generated) >= seq.max_new_tokens
                                                           and grammar.accepting)):
                # The grammar is complete (or may end here and the budget is spent): a valid end.
                tail, _ = seq.assembler.finish()
                text += tail
                finish = "stop"
            elif len(seq.generated) >= seq.max_new_tokens:
                tail, stopped = seq.assembler.finish()
                text += tail
                finish = "stop" if stopped else "length"
        if seq.counts is not None:
            seq.counts[token] += 1
        if finish is not None:
            seq.done = True
            seq.emit(SeqEvent(seq.index, text, finish, len(seq.generated),
                              logprobs=self._take_logprobs(seq), tokens=self._take_tokens(seq)))
            return False
        if text:
            seq.emit(SeqEvent(seq.index, text, logprobs=self._take_logprobs(seq),
                              tokens=self._take_tokens(seq)))
        return True

    @staticmethod
    def _take_tokens(seq: Sequence) -> int:
        count, seq.reported = len(seq.generated) - seq.reported, len(seq.generated)
        return count

    def _keep_rows(self, rows: list[int]) -> None:
        """Keep only ``rows`` of the running batch; trim columns that are padding everywhere."""
        self._running = [self._running[i] for i in rows]
        if not rows:
            self._reset_batch()
            return
        assert self._cache is not None and self._mask is not None
        index = torch.tensor(rows, device=self._device)
        mask = self._mask.index_select(0, index)
        used = mask.any(dim=0).nonzero()
        start = int(used[0]) if used.numel() else 0
        self._mask = mask[:, start:]
        self._cache = DynamicCache(ddp_cache_data=[
            (k.index_select(0, index)[:, :, start:], v.index_select(0, index)[:, :, start:])
            for k, v in _layers(self._cache)
        ])
        assert self._next_tokens is not None and self._positions is not None
        self._next_tokens = self._next_tokens.index_select(0, index)
        self._positions = self._positions.index_select(0, index)


def _layers(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (keys, values) of each layer; refuses cache layouts the merge cannot handle."""
    pairs = []
    for layer in cache.layers:
        if getattr(layer, "is_sliding", False) or not hasattr(layer, "keys"):
            raise BackendError(f"Continuous batching supports full-attention KV caches only, "
                               f"not {type(layer).__name__}.")
        pairs.append((layer.keys, layer.values))
    return pairs


def _pad_left(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Pad a [batch, heads, seq, dim] cache tensor with zeros on the left of ``seq``."""
    missing = width - tensor.shape[-2]
    return F.pad(tensor, (0, 0, missing, 0)) if missing else tensor


class _BrokenGrammar:
    """Stands in for a grammar that rejected a sampled token (a bug): the sequence then ends at
    its budget with ``length``, never as a complete answer."""

    done = False
    accepting = False

    def consume(self, token: int) -> bool:
        return True


_BROKEN = _BrokenGrammar()


def sample_next(logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
    """The next token of each row, each with its own sampling parameters and generator
    (:func:`sample_step` without the logprobs)."""
    return sample_step(logits, seqs)[0]


def sample_step(logits: torch.Tensor,
                seqs: list[Sequence]) -> tuple[list[int], list[RawLogprobs | None]]:
    """The next token of each row, and the logprobs of the rows whose sequence asked for them.

    Sampling order: penalties and logit bias on the raw logits; then greedy rows take the argmax;
    the others divide by their temperature, softmax, cut by top-k / top-p / min-p, and draw one
    token with one uniform number from their own generator (inverse CDF).

    Logprobs describe the **processed** distribution the token was drawn from, not the raw model
    (vLLM's default, ``logprobs_mode="raw_logprobs"``, is the raw one):
    ``log_softmax((logits + penalties + logit_bias) / temperature)``, with temperature 1 for a
    greedy request (temperature 0 has no distribution; its argmax is the same). Top-k, top-p and
    min-p truncation is *not* applied: it would give most of the vocabulary ``-inf``, which JSON
    cannot carry, while the untruncated values still rank every candidate. So with greedy
    decoding the sampled token is the first of the top logprobs; values are floored at
    :data:`LOGPROB_FLOOR` as OpenAI does. Rows that did not ask cost nothing: with no such row in
    the batch, no log-softmax runs at all.
    """
    logits = logits.float()
    cloned = False
    if any(s.params.has_penalties or s.params.logit_bias for s in seqs):
        logits, cloned = logits.clone(), True
        for row, seq in enumerate(seqs):
            _apply_penalties(logits[row], seq)
    constrained = [row for row, seq in enumerate(seqs) if isinstance(seq.grammar, GrammarState)]
    if constrained:
        logits = logits if cloned else logits.clone()
        apply_masks(logits, constrained, [seqs[row].grammar for row in constrained])
    tokens = _pick(logits, seqs)
    wanted = [row for row, seq in enumerate(seqs) if seq.logprobs is not None]
    if not wanted:
        return tokens, [None] * len(seqs)
    return tokens, _step_logprobs(logits, seqs, tokens, wanted)


def _step_logprobs(logits: torch.Tensor, seqs: list[Sequence], tokens: list[int],
                   rows: list[int]) -> list[RawLogprobs | None]:
    """The logprobs of ``rows`` (processed logits, see :func:`sample_step`), moved to the host in
    one transfer per kind."""
    device = logits.device
    temps = torch.tensor([seqs[r].params.temperature or 1.0 for r in rows], device=device).unsqueeze(1)
    logprobs = torch.log_softmax(logits[rows] / temps, dim=-1)
    picked = torch.tensor([tokens[r] for r in rows], device=device).unsqueeze(1)
    chosen = logprobs.gather(1, picked).squeeze(1).clamp(min=LOGPROB_FLOOR).tolist()
    wanted = [seqs[r].logprobs or 0 for r in rows]
    k = min(max(wanted), logprobs.shape[-1])
    top_values: list[list[float]] = [[] for _ in rows]
    top_ids: list[list[int]] = [[] for _ in rows]
    if k:
        values, ids = logprobs.topk(k, dim=-1)
        top_values, top_ids = values.clamp(min=LOGPROB_FLOOR).tolist(), ids.tolist()
    result: list[RawLogprobs | None] = [None] * len(seqs)
    for i, row in enumerate(rows):
        n = wanted[i]
        result[row] = (chosen[i], top_ids[i][:n], top_values[i][:n])
    return result


def _pick(logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
    """The sampling proper, on processed logits (see :func:`sample_step`)."""
    tokens = [0] * len(seqs)
    greedy = [row for row, seq in enumerate(seqs) if seq.params.greedy]
    if greedy:
        for row, token in zip(greedy, logits[greedy].argmax(dim=-1).tolist(), strict=True):
            tokens[row] = token
    sampled = [row for row, seq in enumerate(seqs) if not seq.params.greedy]
    if not sampled:
        return tokens
    params = [seqs[row].params for row in sampled]
    temps = torch.tensor([p.temperature for p in params], device=logits.device).unsqueeze(1)
    probs = torch.softmax(logits[sampled] / temps, dim=-1)
    # Rows that truncate their distribution draw from it sorted; the others draw from it as is.
    # Which path a row takes depends on its own parameters only, never on its batch neighbours.
    filtered = [i for i, p in enumerate(params) if p.needs_filtering]
    # Inverse-CDF sampling: one uniform draw per row from the row's own generator, then one
    # vectorised search (much cheaper than a torch.multinomial call per row).
    uniforms = torch.cat([torch.rand(1, generator=seqs[row].generator, device=probs.device)
                          for row in sampled])
    picked = _inverse_cdf(probs, uniforms).tolist()
    if filtered:
        kept, order = _truncate(probs[filtered], [params[i] for i in filtered])
        sorted_picks = _inverse_cdf(kept, uniforms[filtered])
        for j, i in enumerate(filtered):
            picked[i] = int(order[j, sorted_picks[j]])
    for i, row in enumerate(sampled):
        tokens[row] = picked[i]
    return tokens


def _inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """The index where each row's cumulative (unnormalised) probability first exceeds
    ``uniform * total``; a zero-probability entry can never be chosen."""
    cdf = probs.cumsum(dim=-1)
    total = cdf[:, -1:]
    targets = torch.minimum(uniforms.unsqueeze(1) * total, total * (1 - 1e-6))
    return torch.searchsorted(cdf, targets, right=True).squeeze(1).clamp(max=probs.shape[-1] - 1)


def _truncate(probs: torch.Tensor, params: list[SamplingParams]) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k, top-p and min-p on probability rows: (kept probabilities sorted descending, the
    token id of each sorted position). The most likely token always survives."""
    probs, order = probs.sort(dim=-1, descending=True)
    vocab = probs.shape[-1]
    device = probs.device
    ranks = torch.arange(vocab, device=device).unsqueeze(0)
    top_k = torch.tensor([min(p.top_k, vocab) or vocab for p in params], device=device).unsqueeze(1)
    top_p = torch.tensor([p.top_p for p in params], device=device).unsqueeze(1)
    min_p = torch.tensor([p.min_p for p in params], device=device).unsqueeze(1)
    drop = (ranks >= top_k) | ((probs.cumsum(dim=-1) - probs) > top_p) | (probs < min_p * probs[:, :1])
    drop[:, 0] = False
    return probs.masked_fill(drop, 0.0), order


def _apply_penalties(row_logits: torch.Tensor, seq: Sequence) -> None:
    """OpenAI's frequency/presence penalties over generated tokens, the HF-style repetition
    penalty over prompt and generated tokens, then logit bias; in place on one row."""
    p = seq.params
    if seq.counts is not None:
        row_logits -= p.frequency_penalty * seq.counts + p.presence_penalty * (seq.counts > 0)
    if seq.prompt_seen is not None:
        seen = seq.prompt_seen.clone()
        if seq.generated:
            seen[torch.tensor(seq.generated, device=row_logits.device)] = True
        penalized = torch.where(row_logits > 0, row_logits / p.repetition_penalty,
                                row_logits * p.repetition_penalty)
        row_logits.copy_(torch.where(seen, penalized, row_logits))
    for token, bias in p.logit_bias.items():
        if token < row_logits.shape[0]:
            row_logits[token] += bias


def mean_pooled_embeddings(model: Any, batch: list[list[int]], pad_id: int) -> torch.Tensor:
    """L2-normalised mean of the last hidden state over each input's real tokens, [len(batch), hidden].

    Runs the base model (without the LM head: its vocabulary-sized output is not needed)."""
    width = max(len(ids) for ids in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, tokens in enumerate(batch):
        ids[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[row, :len(tokens)] = 1
    ids, mask = ids.to(model.device), mask.to(model.device)
    with torch.inference_mode():
        hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
    return F.normalize(pooled, p=2, dim=-1)
