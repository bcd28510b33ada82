"""Operator keys: the SDK layout, V3 keystores, and refusing files others can read."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import blake3
import pytest
from eth_account import Account
from eth_keys import keys

from blueprint.config import Settings
from blueprint.devnet.anvil import DEV_KEYS
from blueprint.tangle.keystore import (
    KeystoreError,
    Operator,
    load_operator,
    load_operator_from_settings,
    sdk_key_filename,
    write_sdk_key,
    write_v3_key,
)

KEY = DEV_KEYS[1]
ADDRESS = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
SECRET_HEX = KEY[2:]


@pytest.fixture(autouse=True)
def _no_password_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KEYSTORE_PASSWORD", raising=False)
    monkeypatch.delenv("KEYSTORE_PASSWORD_FILE", raising=False)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _fast_v3(path: Path, password: str) -> Path:
    return write_v3_key(path, KEY, password, kdf="pbkdf2", iterations=2)


def test_operator_public_key_forms() -> None:
    operator = Operator.from_private_key(KEY)
    assert operator.address == ADDRESS
    expected = keys.PrivateKey(bytes.fromhex(SECRET_HEX)).public_key
    assert operator.public_key == b"\x04" + expected.to_bytes() and len(operator.public_key) == 65
    assert operator.compressed_public_key == expected.to_compressed_bytes()
    assert len(operator.compressed_public_key) == 33
    assert SECRET_HEX not in repr(operator)


def test_write_sdk_key_layout_and_modes(tmp_path: Path) -> None:
    root = tmp_path / "keystore"
    path = write_sdk_key(root, KEY)
    operator = Operator.from_private_key(KEY)
    assert path.parent == root / "Ecdsa"
    # the SDK names the file by blake3 of the compressed SEC1 public key
    assert path.name == blake3.blake3(operator.compressed_public_key).hexdigest()
    assert path.name == sdk_key_filename(operator.compressed_public_key)
    public, secret = json.loads(path.read_text())
    assert bytes(public) == operator.compressed_public_key
    assert bytes(secret).hex() == SECRET_HEX
    assert _mode(path) == 0o600
    assert _mode(root) == 0o700 and _mode(root / "Ecdsa") == 0o700
    loaded = load_operator(root)
    assert loaded.address == ADDRESS and loaded.source == path
    assert load_operator(f"file://{root}").address == ADDRESS
    assert load_operator(path).address == ADDRESS


def test_sdk_file_with_uncompressed_public_key(tmp_path: Path) -> None:
    operator = Operator.from_private_key(KEY)
    folder = tmp_path / "ks" / "Ecdsa"
    folder.mkdir(parents=True)
    path = folder / sdk_key_filename(operator.public_key)
    path.write_text(json.dumps([list(operator.public_key), list(bytes.fromhex(SECRET_HEX))]))
    path.chmod(0o600)
    assert load_operator(tmp_path / "ks").public_key == operator.public_key


def test_sdk_file_whose_public_key_does_not_match_is_refused(tmp_path: Path) -> None:
    other = Operator.from_private_key(DEV_KEYS[2])
    folder = tmp_path / "Ecdsa"
    folder.mkdir()
    path = folder / sdk_key_filename(other.compressed_public_key)
    path.write_text(json.dumps([list(other.compressed_public_key), list(bytes.fromhex(SECRET_HEX))]))
    path.chmod(0o600)
    with pytest.raises(KeystoreError, match="does not match") as info:
        load_operator(tmp_path)
    assert SECRET_HEX not in str(info.value)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = write_sdk_key(tmp_path / "ks", KEY)
    path.chmod(mode)
    with pytest.raises(KeystoreError) as info:
        load_operator(tmp_path / "ks")
    message = str(info.value)
    assert str(path) in message and f"chmod 600 {path}" in message
    assert SECRET_HEX not in message


def test_several_sdk_keys_need_a_choice(tmp_path: Path) -> None:
    write_sdk_key(tmp_path, KEY)
    write_sdk_key(tmp_path, DEV_KEYS[2])
    with pytest.raises(KeystoreError, match="2 ECDSA keys"):
        load_operator(tmp_path)
    wanted = Operator.from_private_key(DEV_KEYS[2])
    assert load_operator(tmp_path, public_key=wanted.public_key).address == wanted.address
    by_hex = load_operator(tmp_path, public_key="0x" + wanted.compressed_public_key.hex())
    assert by_hex.address == wanted.address
    with pytest.raises(KeystoreError, match="no ECDSA key"):
        load_operator(tmp_path, public_key=Operator.from_private_key(DEV_KEYS[3]).public_key)


def test_v3_keystore_with_password_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _fast_v3(tmp_path / "operator.json", "hunter2")
    assert _mode(path) == 0o600
    with pytest.raises(KeystoreError, match="KEYSTORE_PASSWORD"):
        load_operator(path)
    monkeypatch.setenv("KEYSTORE_PASSWORD", "hunter2")
    assert load_operator(path).address == ADDRESS
    # a folder holding exactly one V3 file works too
    assert load_operator(tmp_path).address == ADDRESS


def test_v3_keystore_wrong_password_hides_secrets(tmp_path: Path) -> None:
    path = _fast_v3(tmp_path / "operator.json", "right-password")
    with pytest.raises(KeystoreError, match="wrong password") as info:
        load_operator(path, password="wrong-password")
    assert "wrong-password" not in str(info.value) and "right-password" not in str(info.value)


def test_v3_password_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _fast_v3(tmp_path / "operator.json", "s3cret")
    password_file = tmp_path / "password"
    password_file.write_text("s3cret\n")
    password_file.chmod(0o600)
    assert load_operator(path, password_file=password_file).address == ADDRESS
    monkeypatch.setenv("KEYSTORE_PASSWORD_FILE", str(password_file))
    assert load_operator(path).address == ADDRESS
    password_file.chmod(0o644)
    with pytest.raises(KeystoreError, match="chmod 600") as info:
        load_operator(path)
    assert "s3cret" not in str(info.value)


def test_load_from_settings(tmp_path: Path) -> None:
    path = _fast_v3(tmp_path / "operator.json", "pw")
    settings = Settings(keystore_uri=str(path), keystore_password="pw")
    assert load_operator_from_settings(settings).address == ADDRESS
    write_sdk_key(tmp_path / "sdk", KEY)
    assert load_operator_from_settings(Settings(keystore_uri=str(tmp_path / "sdk"))).address == ADDRESS


@pytest.mark.parametrize("content", ["not json", "{}", "[1]", '[[1, 2], "x"]', "[[], []]"])
def test_malformed_key_files(tmp_path: Path, content: str) -> None:
    path = tmp_path / "key"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(KeystoreError):
        load_operator(path)


def test_missing_or_empty_keystore(tmp_path: Path) -> None:
    with pytest.raises(KeystoreError, match="not found"):
        load_operator(tmp_path / "nope")
    with pytest.raises(KeystoreError, match="no operator key"):
        load_operator(tmp_path)


@pytest.mark.parametrize("bad", ["0x" + "ab" * 31, "zz" * 32, b"\x00" * 32, b"\xff" * 32])
def test_invalid_private_keys_are_not_echoed(bad: str | bytes) -> None:
    with pytest.raises(KeystoreError) as info:
        Operator.from_private_key(bad)
    shown = bad.hex() if isinstance(bad, bytes) else bad.removeprefix("0x")
    assert shown not in str(info.value)


def test_existing_keystore_folder_keeps_its_mode(tmp_path: Path) -> None:
    root = tmp_path / "ks"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    path = write_sdk_key(root, KEY)
    assert _mode(root) == 0o755 and _mode(path) == 0o600
    assert Account.from_key(KEY).address == load_operator(root).address
