"""Turn a chat conversation into the prompt text a causal LM continues.

The tokenizer's own chat template (``tokenizer.chat_template``, jinja) is always preferred: it is
what the model was trained on. Base models ship without one; for them we use a documented
fallback, a plain transcript that any LM continues sensibly::

    <bos>System: You are terse.
    User: Hello
    Assistant: Hi.
    User: How are you?
    Assistant:

Roles are capitalised names (``developer`` reads as System, ``tool`` as Tool), messages are
separated by newlines, and the prompt ends with ``"Assistant:"`` so that the model answers as the
assistant. With this fallback a client should pass ``stop: ["\\nUser:"]`` to stop the model from
writing the user's next turn.
"""

from __future__ import annotations

from typing import Any

from blueprint.llm.types import ChatMessage

FALLBACK_ROLE_NAMES = {
    "system": "System", "developer": "System", "user": "User", "assistant": "Assistant", "tool": "Tool",
}


def render_fallback(messages: list[ChatMessage], bos_token: str | None = None) -> str:
    """The fallback transcript (module docstring), ending with the assistant's cue."""
    lines = [f"{FALLBACK_ROLE_NAMES[m.role]}: {m.text()}" for m in messages]
    lines.append("Assistant:")
    return (bos_token or "") + "\n".join(lines)


def render_chat(tokenizer: Any, messages: list[ChatMessage]) -> str:
    """The prompt text for ``messages``: the tokenizer's template when it has one, else the fallback.

    The result already holds any BOS token the template adds, so encode it with
    ``add_special_tokens=False``.
    """
    if getattr(tokenizer, "chat_template", None):
        plain = [{"role": m.role, "content": m.text(), **({"name": m.name} if m.name else {})}
                 for m in messages]
        return tokenizer.apply_chat_template(plain, add_generation_prompt=True, tokenize=False)
    return render_fallback(messages, getattr(tokenizer, "bos_token", None))
