"""``dev`` checks the model before it starts anything, says why a smoke run failed, gives its two
operators offers that differ, and prints commands a user can paste (run for real in
tests/e2e/test_dev_command.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blueprint.commands.dev import (
    DemoResult,
    DevError,
    ModelChoice,
    check_model,
    operator_plans,
    ready_commands,
    smoke_failures,
)


def test_an_empty_folder_is_refused_with_what_is_missing(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DevError, match=r"has no config\.json"):
        check_model(str(empty), None, tmp_path)
    (empty / "config.json").write_text(json.dumps({"max_position_embeddings": 1024}))
    with pytest.raises(DevError, match="has no tokenizer"):
        check_model(str(empty), None, tmp_path)
    (empty / "tokenizer.json").write_text("{}")
    choice = check_model(str(empty), None, tmp_path)
    assert (choice.model_id, choice.context_length) == ("empty", 1024)


def test_missing_paths_and_uncached_hub_ids_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DevError, match="no such folder"):
        check_model(str(tmp_path / "nope"), None, tmp_path)
    with pytest.raises(DevError, match="huggingface-cli download some-org/some-model"):
        check_model("some-org/some-model", None, tmp_path)
    afile = tmp_path / "weights.bin"
    afile.write_bytes(b"x")
    with pytest.raises(DevError, match="is a file"):
        check_model(str(afile), None, tmp_path)


def test_the_two_operators_offer_differently() -> None:
    a, b = operator_plans(ModelChoice("/m", "tiny", 512), (9001, 9002), "cpu")
    assert [n["model"] for n in a.nodes] == ["tiny"]
    assert [n["model"] for n in b.nodes] == ["tiny", "tiny-b"]
    assert a.nodes[0]["options"] != b.nodes[0]["options"]  # same model, other prices
    assert all(n["max_output_tokens"] <= 512 for n in a.nodes + b.nodes)


def test_smoke_failures_name_each_cause(tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    log.write_text('not json\n{"event": "node_start_failed", "level": "error", "error": "no weights"}\n')
    results = [
        DemoResult("job 0", 1, "0xA", {"choices": []}),
        DemoResult("job 1", 2, "0xB", {"error": {"code": "no_healthy_node", "message": "No healthy node"}}),
        DemoResult("job 2", 3, None, None),
    ]
    causes = smoke_failures(results, [log])
    assert causes == [
        "job 1 (call 2): error no_healthy_node: No healthy node",
        "job 2 (call 3): no result arrived; the daemons last logged: node_start_failed: no weights",
    ]
    assert smoke_failures(results[:1]) == []


def test_ready_commands_name_the_chain_the_service_and_the_owner_key() -> None:
    class View:
        tangle_contract = "0x0165878A594ca255338adfa4d48449f69242Eb8F"

    class Owner:
        address = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"

    class Service:
        service_id = 7
        operators = (View(),)
        owner = Owner()

    plans = operator_plans(ModelChoice("/m", "tiny", 512), (9001, 9002), "cpu")
    text = ready_commands("http://127.0.0.1:4242", Service(), plans, "tiny")
    assert "HTTP_RPC_URL=http://127.0.0.1:4242" in text and "SERVICE_ID=7" in text
    assert "anvil's well-known dev account #0" in text and "DEV_OWNER_KEY=0xac0974" in text
    assert "python -m blueprint operators" in text
    assert "--private-key-env DEV_OWNER_KEY --job chat --model tiny" in text
    assert "--quote" in text and "http://127.0.0.1:9001/v1/quote" in text
