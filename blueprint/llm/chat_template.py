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

import json
from typing import Any

from blueprint import safejson
from blueprint.errors import InvalidRequestError
from blueprint.llm.tool_calls import CALL_PREFIX, CALL_SUFFIX, render_call
from blueprint.llm.types import ChatMessage

FALLBACK_ROLE_NAMES = {
    "system": "System", "developer": "System", "user": "User", "assistant": "Assistant", "tool": "Tool",
}


def render_fallback(messages: list[ChatMessage], bos_token: str | None = None,
                    tools: list[dict[str, Any]] | None = None) -> str:
    """The fallback transcript (module docstring), ending with the assistant's cue. Tools are
    listed in a first System line with how to call them; an assistant's calls are written as
    call blocks, a tool's answer as a ``Tool:`` line."""
    lines = []
    if tools:
        lines.append("System: You may call these tools, one block per call: "
                     f"{CALL_PREFIX!r}{{\"name\": ..., \"arguments\": {{...}}}}{CALL_SUFFIX!r}. "
                     f"Tools: {json.dumps([t.get('function', t) for t in tools], ensure_ascii=False)}")
    for m in messages:
        text = m.text()
        if m.tool_calls:
            calls = "\n".join(render_call(c.function.name, c.function.arguments) for c in m.tool_calls)
            text = f"{text}\n{calls}" if text else calls
        lines.append(f"{FALLBACK_ROLE_NAMES[m.role]}: {text}")
    lines.append("Assistant:")
    return (bos_token or "") + "\n".join(lines)


def template_message(message: ChatMessage) -> dict[str, Any]:
    """A message as Hugging Face chat templates read it: text content, ``tool_calls`` with their
    arguments as objects (most templates ``tojson`` them), ``tool_call_id`` on tool answers."""
    out: dict[str, Any] = {"role": message.role, "content": message.text()}
    if message.name:
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = [{"id": c.id, "type": "function",
                              "function": {"name": c.function.name,
                                           "arguments": _arguments(c.function.arguments)}}
                             for c in message.tool_calls]
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    return out


def _arguments(text: str) -> Any:
    try:
        return safejson.loads(text)  # a client's text: depth-bounded
    except ValueError:
        return text


def render_chat(tokenizer: Any, messages: list[ChatMessage], *,
                tools: list[dict[str, Any]] | None = None, **template_kwargs: Any) -> str:
    """The prompt text for ``messages``: the tokenizer's template when it has one (given the
    ``tools`` as OpenAI sends them), else the fallback.

    The result already holds any BOS token the template adds, so encode it with
    ``add_special_tokens=False``.
    """
    if getattr(tokenizer, "chat_template", None):
        from jinja2 import TemplateError

        plain = [template_message(m) for m in messages]
        try:
            return tokenizer.apply_chat_template(plain, tools=tools or None, add_generation_prompt=True,
                                                 tokenize=False, **template_kwargs)
        except TemplateError as exc:  # the template refuses this conversation: the client's mistake
            raise InvalidRequestError(f"The model's chat template rejects these messages: {exc}",
                                      param="messages") from None
    return render_fallback(messages, getattr(tokenizer, "bos_token", None), tools)
