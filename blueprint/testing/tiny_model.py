"""Build a tiny random-weight Llama-style model and its tokenizer, offline, in a few seconds.

Tests, ``python -m blueprint dev`` and the benchmarks need a real model directory that
``AutoTokenizer``/``AutoModelForCausalLM`` load through the real loading code, without any hub
download. The weights are random (the text it writes is gibberish), but every code path an
operator's real model takes is exercised: the byte-level BPE tokenizer (so partial UTF-8 bytes
really happen while streaming), the chat template, bos/eos/pad tokens, the KV cache and RoPE.

The result is deterministic: the same arguments give the same files (same seed, same corpus).
"""

from __future__ import annotations

import json
from pathlib import Path

#: Special tokens, in id order (they get the first ids of the vocabulary).
BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|tool|>", "<|end|>")
SPECIAL_TOKENS = (BOS, EOS, PAD, *ROLE_TOKENS)

#: A jinja chat template in the tokenizer (the engine's primary path): role tokens around each
#: message, the assistant header when a generation prompt is asked for; tools (when given) in a
#: first system turn, an assistant's calls as Hermes-style ``<tool_call>`` blocks.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}<|system|>\nYou may call these tools, one block per call: "
    "<tool_call>\n{\"name\": ..., \"arguments\": {...}}\n</tool_call>\n"
    "{{ tools | tojson }}<|end|>\n{% endif %}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}"
    "{% for call in message.tool_calls or [] %}<tool_call>\n{\"name\": {{ call.function.name | tojson }}, "
    "\"arguments\": {{ call.function.arguments | tojson }}}\n</tool_call>{% endfor %}<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

#: The little corpus the BPE merges are learned from. Mixed scripts on purpose, so that the
#: vocabulary holds tokens that are only part of a multi-byte UTF-8 character.
_CORPUS = """
The operator serves language models to anyone who pays for a job on chain.
A blueprint routes each job by its index to a handler, which answers with a completion.
Hello, world! How are you today? I am fine, thank you. What is the capital of France? Paris.
Tokens stream to the client as soon as the model produces them, one after another.
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 1000 3.14159 2.71828.
Café, naïve, résumé, jalapeño, über, smørrebrød, crème brûlée.
日本語のテキストも少しあります。こんにちは世界。
Ελληνικά, Русский текст, العربية, עברית, हिन्दी.
Emoji: 🙂 🚀 🌍 ✨ 🎉 — and some punctuation: « » “ ” … ¿ ¡.
def add(a, b):\n    return a + b\nprint(add(2, 3))
{"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
""".strip()


def build_tiny_model(
    directory: str | Path,
    *,
    hidden_size: int = 64,
    layers: int = 2,
    vocab_size: int = 512,
    heads: int | None = None,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 512,
    seed: int = 0,
    chat_template: bool = True,
) -> Path:
    """Write a random Llama-style causal LM and a byte-level BPE tokenizer to ``directory``.

    ``hidden_size``/``layers``/``heads``/``intermediate_size`` size the model (the benchmark
    builds a larger one with the same function); ``chat_template=False`` leaves the tokenizer
    without a template, to exercise the engine's documented fallback. Returns the directory.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS), model_max_length=max_position_embeddings,
    )
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)

    heads = heads or max(1, hidden_size // 32)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or hidden_size * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.bos_token_id = fast.bos_token_id
    model.generation_config.eos_token_id = fast.eos_token_id
    model.generation_config.pad_token_id = fast.pad_token_id
    model.save_pretrained(out)
    (out / "tiny_model.json").write_text(json.dumps({
        "hidden_size": hidden_size, "layers": layers, "vocab_size": len(fast), "seed": seed,
        "note": "random weights, built by blueprint.testing.build_tiny_model",
    }, indent=2))
    return out
