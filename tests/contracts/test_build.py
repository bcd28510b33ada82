"""The committed manager artifact is exactly what the pinned solcjs builds from contracts/."""

from __future__ import annotations

import shutil

import pytest

from blueprint.contracts import load_artifact
from blueprint.contracts.build import REPO_ROOT, compile_contracts, render, stale_artifacts


@pytest.mark.skipif(shutil.which("node") is None or not (REPO_ROOT / "node_modules" / "solc").is_dir(),
                    reason="node and npm solc are needed to rebuild")
def test_committed_artifact_equals_fresh_build() -> None:
    fresh = compile_contracts()
    assert stale_artifacts(fresh) == []
    # Twice the same bytes: no timestamps, paths or metadata hash leak into the output.
    assert render(compile_contracts()["LlmServiceManager"]) == render(fresh["LlmServiceManager"])
    artifact = load_artifact()
    assert artifact["compiler"]["version"].startswith("0.8.26+")
    assert artifact["bytecode"].startswith("0x6")
    names = {item.get("name") for item in artifact["abi"]}
    assert {"onRegister", "onJobCall", "onJobResult", "getServiceOffers", "updateOffer"} <= names
