"""The devnet data the package carries: a plain clone (no ``../shared`` beside it) finds a state
anvil can load, checked against its manifest; a folder given by flag or environment still wins."""

from __future__ import annotations

import hashlib
import json
import lzma
from pathlib import Path

import pytest

import blueprint.devnet.anvil as devnet
from blueprint import devnet_data
from blueprint.devnet_data import STATE_NAME, carried_state_file, manifest, read_carried


@pytest.fixture
def plain_clone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """As if the checkout sat alone in a folder with an empty home and cache."""
    checkout = tmp_path / "clone" / "repo"
    checkout.mkdir(parents=True)
    monkeypatch.setattr(devnet, "REPO_ROOT", checkout)
    monkeypatch.delenv("TNT_CORE_DIR", raising=False)
    monkeypatch.delenv("TNT_CORE_STATE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def test_every_carried_file_matches_its_manifest() -> None:
    for name, expected in manifest().items():
        raw = read_carried(name)
        assert len(raw) == expected["bytes"], name
        assert hashlib.sha256(raw).hexdigest() == expected["sha256"], name
        json.loads(raw)  # each is JSON


def test_the_compressed_files_stay_small() -> None:
    for path in Path(devnet_data.DATA_DIR).rglob("*"):
        if path.is_file():
            assert path.stat().st_size < 1024 * 1024, path  # tracked files over 2 MiB are flagged


def test_a_plain_clone_finds_the_carried_state(plain_clone: Path) -> None:
    found = devnet.find_tnt_core_state()
    assert found.is_relative_to(plain_clone / "cache")
    assert hashlib.sha256(found.read_bytes()).hexdigest() == manifest()[STATE_NAME]["sha256"]
    assert devnet.find_tnt_core_state() == found  # extracted once, then reused


def test_a_sibling_shared_folder_and_the_environment_still_win(plain_clone: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    shared = plain_clone / "clone" / "shared" / "tnt-core"
    shared.mkdir(parents=True)
    (shared / STATE_NAME).write_text("{}")
    assert devnet.find_tnt_core_state() == shared / STATE_NAME
    other = plain_clone / "mine.json"
    other.write_text("{}")
    monkeypatch.setenv("TNT_CORE_STATE", str(other))
    assert devnet.find_tnt_core_state() == other


def test_an_explicit_folder_that_lacks_the_state_is_an_error(plain_clone: Path) -> None:
    with pytest.raises(devnet.DevnetError, match="TNT Core state not found"):
        devnet.find_tnt_core_state(plain_clone / "nowhere")


def test_a_corrupted_carried_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "data"
    fake.mkdir()
    (fake / "manifest.json").write_text(json.dumps(
        {STATE_NAME: {"sha256": "0" * 64, "bytes": 2}}))
    (fake / f"{STATE_NAME}.xz").write_bytes(lzma.compress(b"{}"))
    monkeypatch.setattr(devnet_data, "DATA_DIR", fake)
    devnet_data.manifest.cache_clear()
    try:
        with pytest.raises(devnet_data.CarriedDataError, match="sha256"):
            carried_state_file(tmp_path / "cache")
    finally:
        devnet_data.manifest.cache_clear()
