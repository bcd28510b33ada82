"""Custom engines plug in by dotted path or by a ``blueprint.engines`` entry point; both are
proved here with a real module written to a temporary directory (and, for the entry point, a real
``.dist-info`` that ``importlib.metadata`` discovers on ``sys.path``)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from blueprint.errors import InvalidRequestError
from blueprint.llm import registry
from blueprint.llm.config import NodeConfig
from blueprint.llm.engines.openai_http import OpenAIHttpClient
from blueprint.llm.registry import create_client, resolve_engine
from blueprint.llm.types import ChatCompletionRequest, parse_request

ECHO_ENGINE = textwrap.dedent('''
    """A custom engine as a user would write one: it echoes the last user message."""
    from blueprint.llm.client import Capabilities, LlmClient, MetricsTracker
    from blueprint.llm.types import (ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk,
                                     ChatDelta, ChatMessage, Completion, CompletionChoice,
                                     CompletionChunk, ModelInfo, Usage)


    class EchoEngine(LlmClient):
        def __init__(self, config):
            self.name = config.node_name
            self.model = config.model
            self.tracker = MetricsTracker()

        def models(self):
            return [ModelInfo(id=self.model)]

        def capabilities(self):
            return Capabilities()

        def metrics(self):
            return self.tracker.snapshot()

        async def chat(self, request):
            text = request.messages[-1].text()
            return ChatCompletion(model=self.model, usage=Usage.of(1, len(text.split())), choices=[
                ChatChoice(message=ChatMessage(role="assistant", content=text), finish_reason="stop")])

        async def chat_stream(self, request):
            for word in request.messages[-1].text().split():
                yield ChatCompletionChunk(id="echo", model=self.model,
                                          choices=[ChatChunkChoice(delta=ChatDelta(content=word))])

        async def complete(self, request):
            return Completion(model=self.model, choices=[CompletionChoice(text=request.prompts()[0])])

        async def complete_stream(self, request):
            yield CompletionChunk(id="echo", model=self.model,
                                  choices=[CompletionChoice(text=request.prompts()[0])])


    class NotAnEngine:
        def __init__(self, config):
            pass
''')


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory on sys.path holding ``echo_plugin.py`` and its installed-distribution metadata
    (the ``.dist-info`` pip would write), whose entry point names the engine ``echo``."""
    module_name = f"echo_plugin_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module_name}.py").write_text(ECHO_ENGINE)
    dist_info = tmp_path / "echo_plugin-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-plugin\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(
        f"[blueprint.engines]\necho = {module_name}:EchoEngine\n"
        f"broken = {module_name}:DoesNotExist\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _module(plugin_dir: Path) -> str:
    return f"echo_plugin_{plugin_dir.name.replace('-', '_')}"


async def _assert_echoes(config: NodeConfig) -> None:
    client = create_client(config)
    await client.start()
    request = parse_request(ChatCompletionRequest, {
        "model": config.model, "messages": [{"role": "user", "content": "plug me in"}]})
    answer = await client.chat(request)
    assert answer.choices[0].message.content == "plug me in"
    streamed = [c.choices[0].delta.content async for c in client.chat_stream(request)]
    assert streamed == ["plug", "me", "in"]
    await client.close()


async def test_custom_engine_by_dotted_path(plugin_dir: Path) -> None:
    config = NodeConfig(engine=f"{_module(plugin_dir)}:EchoEngine", model="echo-model")
    assert type(create_client(config)).__name__ == "EchoEngine"
    await _assert_echoes(config)


async def test_custom_engine_by_entry_point(plugin_dir: Path) -> None:
    factory = resolve_engine("echo")
    assert factory.__name__ == "EchoEngine" and factory.__module__ == _module(plugin_dir)
    await _assert_echoes(NodeConfig(engine="echo", model="echo-model"))


def test_entry_point_lookup_by_monkeypatched_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry asks importlib.metadata for the group, and loads only the matching name."""
    from importlib.metadata import EntryPoint

    asked: list[str] = []

    def fake_entry_points(*, group: str) -> list[EntryPoint]:
        asked.append(group)
        return [EntryPoint(name="other", value="no.such.module:Nope", group=group),
                EntryPoint(name="http-proxy", value="blueprint.llm.engines.openai_http:OpenAIHttpClient",
                           group=group)]

    monkeypatch.setattr(registry, "entry_points", fake_entry_points)
    assert resolve_engine("http-proxy") is OpenAIHttpClient
    assert asked == ["blueprint.engines"]


def test_builtin_engine_names_resolve_lazily() -> None:
    client = create_client(NodeConfig(engine="openai", model="m", base_url="http://127.0.0.1:9/v1"))
    assert isinstance(client, OpenAIHttpClient) and client.name == "openai:m"


@pytest.mark.parametrize(("engine", "message"), [
    ("no_such_engine", "Unknown engine"),
    ("no.such.module:Engine", "Cannot import"),
    ("blueprint.llm.engines.openai_http:Missing", "has no 'Missing'"),
    ("broken", "cannot be loaded"),
])
def test_bad_engine_names_are_configuration_errors(engine: str, message: str, plugin_dir: Path) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        resolve_engine(engine)


def test_a_factory_that_is_not_an_llm_client_is_refused(plugin_dir: Path) -> None:
    with pytest.raises(InvalidRequestError, match="did not produce an LlmClient"):
        create_client(NodeConfig(engine=f"{_module(plugin_dir)}:NotAnEngine", model="m"))


@pytest.mark.parametrize("path", ["models/\x00tiny", "a\nb", "\x7f"])
def test_a_node_path_with_control_characters_is_refused_at_validation(path: str) -> None:
    """The admin API fuzz found a NUL in ``path`` reaching ``os.stat`` (a ValueError, then a 500):
    no file system path or hub id holds a control character, so it is a 400 at parse time."""
    with pytest.raises(InvalidRequestError, match="path"):
        parse_request(NodeConfig, {"engine": "transformers", "model": "m", "path": path})
