"""Setting values are checked at load, naming the file, line and key: strategy and engine names
against their registries (entry points included), model paths, URLs, addresses."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

import blueprint.config_checks as checks
from blueprint.config import load_settings
from blueprint.config_errors import ConfigError, find_line


def load(tmp_path: Path, text: str) -> ConfigError:
    config = tmp_path / "operator.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    return caught.value


@pytest.fixture(autouse=True)
def _no_config_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BLUEPRINT_CONFIG", "HTTP_RPC_URL", "WS_RPC_URL", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)


def test_unknown_strategy_names_the_line_and_the_closest_name(tmp_path: Path) -> None:
    error = load(tmp_path, '[balancer]\nstrategy = "least_load"\n')
    assert str(error).startswith(f"{tmp_path / 'operator.toml'}:2: balancer.strategy: unknown strategy "
                                 "'least_load' (did you mean 'least_loaded'?); use one of cache_aware,")


def test_per_model_strategies_are_checked_too(tmp_path: Path) -> None:
    error = load(tmp_path, '[balancer]\nper_model = { "m" = "cache_awre" }\n')
    assert "balancer.per_model.m: unknown strategy 'cache_awre' (did you mean 'cache_aware'?)" in str(error)


def test_unknown_engine(tmp_path: Path) -> None:
    error = load(tmp_path, '[[nodes]]\nmodel = "m"\nengine = "transfomers"\npath = "org/m"\n')
    assert ":3: nodes[0].engine: unknown engine 'transfomers' (did you mean 'transformers'?)" in str(error)


def test_engine_entry_points_and_importable_modules_are_accepted(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = EntryPoint(name="echo", value="bench.echo_engine:EchoClient", group="blueprint.engines")
    monkeypatch.setattr(checks, "entry_points", lambda group: [plugin])
    config = tmp_path / "ok.toml"
    config.write_text('[[nodes]]\nmodel = "a"\nengine = "echo"\n'
                      '[[nodes]]\nmodel = "b"\nengine = "bench.echo_engine:EchoClient"\n')
    assert [n.engine for n in load_settings(config).nodes] == ["echo", "bench.echo_engine:EchoClient"]
    error = load(tmp_path, '[[nodes]]\nmodel = "a"\nengine = "no_such_pkg.mod:Engine"\n')
    assert "cannot find the module 'no_such_pkg.mod'" in str(error)


def test_model_paths(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    error = load(tmp_path, f'[[nodes]]\nmodel = "m"\npath = "{empty}"\n')
    assert f"nodes[0].path: '{empty}' has no config.json" in str(error)
    error = load(tmp_path, f'[[nodes]]\nmodel = "m"\npath = "{tmp_path / "missing"}"\n')
    assert "no such folder" in str(error)
    config = tmp_path / "ok.toml"
    config.write_text(f'[[nodes]]\nmodel = "m"\npath = "{tiny_model_dir}"\n'
                      '[[nodes]]\nmodel = "h"\npath = "meta-llama/Llama-3.2-1B-Instruct"\n')
    assert len(load_settings(config).nodes) == 2  # a folder, and a Hugging Face id
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(checks, "_in_hf_cache", lambda repo_id: False)
    error = load(tmp_path, '[[nodes]]\nmodel = "h"\npath = "meta-llama/Llama-3.2-1B-Instruct"\n')
    assert "not in the local cache and HF_HUB_OFFLINE is set" in str(error)


def test_urls_and_addresses(tmp_path: Path) -> None:
    error = load(tmp_path, 'http_rpc_url = "127.0.0.1:8545"\n')
    assert ":1: http_rpc_url: not a http:// or https:// URL: '127.0.0.1:8545'" in str(error)
    error = load(tmp_path, '[[nodes]]\nmodel = "m"\nengine = "openai"\nbase_url = "localhost:8000/v1"\n')
    assert "nodes[0].base_url: not a http:// or https:// URL" in str(error)
    error = load(tmp_path, '[[nodes]]\nmodel = "m"\nengine = "openai"\n')
    assert "nodes[0].base_url: required by the openai engine" in str(error)
    error = load(tmp_path, 'tangle_contract = "0x1234"\n')
    assert "tangle_contract: not a contract address" in str(error)


def test_a_bad_value_from_the_environment_names_the_variable(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_RPC_URL", "localhost")
    with pytest.raises(ConfigError, match=r"^environment HTTP_RPC_URL: http_rpc_url: not a http"):
        load_settings()


def test_at_most_two_problems_are_spelled_out(tmp_path: Path) -> None:
    error = load(tmp_path, '[[nodes]]\nmodel = "a"\nengine = "x1"\n[[nodes]]\nmodel = "b"\nengine = "x2"\n'
                           '[[nodes]]\nmodel = "c"\nengine = "x3"\n')
    lines = str(error).splitlines()
    assert len(lines) == 2 and lines[1].endswith("(and 1 more)")
    assert len(error.problems) == 3


def test_missing_file_and_broken_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.toml"):
        load_settings(tmp_path / "nope.toml")
    error = load(tmp_path, "[[nodes]\n")
    assert str(error).startswith(f"{tmp_path / 'operator.toml'}: not valid TOML")


def test_find_line_follows_tables_and_arrays_of_tables() -> None:
    text = '# top\nhttp_rpc_url = "x"\n[[nodes]]\nmodel = "a"\n[[nodes]]\nmodel = "b"\n[nodes.options]\n' \
           'k = 1\n[balancer.health]\nwindow_s = 1\n'
    assert find_line(text, ("http_rpc_url",)) == 2
    assert find_line(text, ("nodes", 1, "model")) == 6
    assert find_line(text, ("nodes", 1, "options", "k")) == 8
    assert find_line(text, ("balancer", "health", "window_s")) == 10
    assert find_line(text, ("nodes", 2, "model")) is None
