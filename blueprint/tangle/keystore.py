"""The operator's ECDSA key, loaded from ``KEYSTORE_URI``.

Two formats are accepted, so an operator can reuse what the Rust blueprint SDK wrote or what any
Ethereum wallet exports:

* the SDK's file layout: ``<root>/Ecdsa/<hex(blake3(public key bytes))>``, each file a JSON pair
  ``[[public key bytes], [secret bytes]]`` (secp256k1; the SDK stores the SEC1 *compressed*
  33-byte public key, we also accept the 65-byte uncompressed form);
* an encrypted Ethereum V3 keystore JSON, unlocked with ``KEYSTORE_PASSWORD`` or a password file.

``KEYSTORE_URI`` may be a directory (the SDK root, or a folder holding exactly one V3 file), a
file of either format, and may carry a ``file://`` prefix. A key or password file that the group
or others can read is refused: the daemon signs with real money, so a leak is not a warning.
Secrets never appear in logs or in exception messages.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import blake3
import structlog
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_keys import keys

from blueprint.errors import BlueprintError

if TYPE_CHECKING:
    from pydantic import SecretStr

log = structlog.get_logger(__name__)

ECDSA_DIR = "Ecdsa"
PASSWORD_ENV = "KEYSTORE_PASSWORD"
PASSWORD_FILE_ENV = "KEYSTORE_PASSWORD_FILE"


class KeystoreError(BlueprintError):
    """The operator key cannot be loaded (missing, malformed, unsafe permissions, bad password)."""

    code = "keystore_error"


@dataclass(frozen=True)
class Operator:
    """The operator's identity: its signing account and the public key forms the chain wants."""

    account: LocalAccount = field(repr=False)
    #: checksummed address
    address: str
    #: ``0x04 || X || Y``, 65 bytes: what ``registerOperator`` takes as ``ecdsaPublicKey``
    public_key: bytes
    #: the SEC1 compressed 33-byte form, what the SDK stores and hashes for the file name
    compressed_public_key: bytes
    #: the file the key came from (None when built in memory)
    source: Path | None = None

    @classmethod
    def from_private_key(cls, private_key: bytes | str, source: Path | None = None) -> Operator:
        """Build from a 32-byte secret (bytes or hex); the error never echoes the key."""
        secret = _secret_bytes(private_key)
        try:
            pk = keys.PrivateKey(secret)
        except Exception as exc:  # eth_keys raises ValidationError for out-of-range scalars
            raise KeystoreError("the private key is not a valid secp256k1 secret") from exc
        account: LocalAccount = Account.from_key(secret)
        public = pk.public_key
        return cls(
            account=account,
            address=account.address,
            public_key=b"\x04" + public.to_bytes(),
            compressed_public_key=public.to_compressed_bytes(),
            source=source,
        )


def _secret_bytes(private_key: bytes | str) -> bytes:
    if isinstance(private_key, str):
        text = private_key[2:] if private_key.startswith(("0x", "0X")) else private_key
        try:
            private_key = bytes.fromhex(text)
        except ValueError:
            raise KeystoreError("the private key is not valid hex") from None
    if len(private_key) != 32:
        raise KeystoreError(f"the private key must be 32 bytes, got {len(private_key)}")
    return bytes(private_key)


def check_private_file(path: Path) -> None:
    """Refuse a file whose mode lets the group or others read, write or run it."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise KeystoreError(f"cannot stat {path}: {exc.strerror}") from None
    if stat.S_IMODE(mode) & 0o077:
        raise KeystoreError(
            f"{path} is accessible by group/others (mode {stat.S_IMODE(mode):o}); "
            f"restrict it with: chmod 600 {path}"
        )


def _read_private(path: Path) -> bytes:
    check_private_file(path)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeystoreError(f"cannot read {path}: {exc.strerror}") from None


def sdk_key_filename(public_key: bytes) -> str:
    """The SDK's file name for a public key: hex of its blake3 hash."""
    return blake3.blake3(public_key).hexdigest()


def _uncompressed_from(public: bytes) -> bytes:
    if len(public) == 33 and public[0] in (2, 3):
        return b"\x04" + keys.PublicKey.from_compressed_bytes(public).to_bytes()
    if len(public) == 65 and public[0] == 4:
        return public
    if len(public) == 64:
        return b"\x04" + public
    raise KeystoreError(f"unrecognised public key encoding ({len(public)} bytes)")


def _load_sdk_pair(path: Path, raw: bytes) -> Operator:
    try:
        pair = json.loads(raw)
        public = bytes(pair[0])
        secret = bytes(pair[1])
    except (ValueError, TypeError, IndexError, KeyError):
        raise KeystoreError(f"{path} is not an SDK key file ([[public bytes], [secret bytes]])") from None
    operator = Operator.from_private_key(secret, source=path)
    try:
        stored = _uncompressed_from(public)
    except Exception as exc:
        raise KeystoreError(f"{path}: the stored public key does not decode") from exc
    if stored != operator.public_key:
        raise KeystoreError(f"{path}: the stored public key does not match its secret")
    if path.name != sdk_key_filename(public):
        log.warning("keystore.sdk_name_mismatch", path=str(path), expected=sdk_key_filename(public))
    return operator


def _is_v3(doc: Any) -> bool:
    return isinstance(doc, dict) and ("crypto" in doc or "Crypto" in doc)


def resolve_password(password: str | None = None, password_file: str | os.PathLike[str] | None = None) -> str:
    """The V3 password: the argument, else ``KEYSTORE_PASSWORD``, else the password file
    (argument or ``KEYSTORE_PASSWORD_FILE``), which must not be readable by others."""
    if password is not None:
        return password
    if os.environ.get(PASSWORD_ENV) is not None:
        return os.environ[PASSWORD_ENV]
    file = password_file or os.environ.get(PASSWORD_FILE_ENV)
    if file:
        text = _read_private(Path(file)).decode("utf-8", errors="strict")
        return text.rstrip("\r\n")
    raise KeystoreError(
        f"the keystore is encrypted: set {PASSWORD_ENV} or {PASSWORD_FILE_ENV} (a file with mode 600)"
    )


def _load_v3(path: Path, doc: dict[str, Any], password: str | None, password_file: Any) -> Operator:
    secret_password = resolve_password(password, password_file)
    try:
        secret = Account.decrypt(doc, secret_password)
    except ValueError:
        raise KeystoreError(f"{path}: wrong password or corrupt V3 keystore") from None
    except Exception as exc:
        raise KeystoreError(f"{path}: cannot decrypt the V3 keystore ({type(exc).__name__})") from None
    return Operator.from_private_key(bytes(secret), source=path)


def _load_file(path: Path, password: str | None, password_file: Any) -> Operator:
    raw = _read_private(path)
    try:
        doc = json.loads(raw)
    except ValueError:
        raise KeystoreError(f"{path} is not JSON (expected an SDK key pair or a V3 keystore)") from None
    if _is_v3(doc):
        return _load_v3(path, doc, password, password_file)
    if isinstance(doc, list):
        return _load_sdk_pair(path, raw)
    raise KeystoreError(f"{path} is neither an SDK key pair nor a V3 keystore")


def _strip_uri(uri: str | os.PathLike[str]) -> Path:
    text = os.fspath(uri)
    if text.startswith("file://"):
        text = text[len("file://"):]
    return Path(text).expanduser()


def load_operator(
    uri: str | os.PathLike[str],
    *,
    password: str | None = None,
    password_file: str | os.PathLike[str] | None = None,
    public_key: bytes | str | None = None,
) -> Operator:
    """Load the operator key named by ``KEYSTORE_URI``.

    A directory is searched as the SDK root (``Ecdsa/``), then for a single V3 file. When the SDK
    root holds several ECDSA keys, ``public_key`` (either encoding, bytes or hex) picks one.
    """
    path = _strip_uri(uri)
    if path.is_file():
        return _load_file(path, password, password_file)
    if not path.is_dir():
        raise KeystoreError(f"keystore not found at {path}")
    ecdsa = path / ECDSA_DIR
    candidates = sorted(p for p in ecdsa.iterdir() if p.is_file()) if ecdsa.is_dir() else []
    if candidates:
        if public_key is not None:
            wanted = _public_bytes(public_key)
            names = {sdk_key_filename(wanted)}
            if len(wanted) == 65:
                names.add(sdk_key_filename(keys.PublicKey(wanted[1:]).to_compressed_bytes()))
            candidates = [p for p in candidates if p.name in names]
            if not candidates:
                raise KeystoreError(f"no ECDSA key for that public key under {ecdsa}")
        if len(candidates) > 1:
            raise KeystoreError(
                f"{len(candidates)} ECDSA keys under {ecdsa}: keep one, or pass the public key to use"
            )
        operator = _load_file(candidates[0], password, password_file)
        log.info("keystore.loaded", format="sdk", address=operator.address)
        return operator
    v3_files = sorted(p for p in path.iterdir() if p.is_file() and _looks_like_v3(p))
    if len(v3_files) == 1:
        operator = _load_file(v3_files[0], password, password_file)
        log.info("keystore.loaded", format="v3", address=operator.address)
        return operator
    if len(v3_files) > 1:
        raise KeystoreError(f"{len(v3_files)} V3 keystores in {path}: point KEYSTORE_URI at one file")
    raise KeystoreError(
        f"no operator key in {path}: expected {path / ECDSA_DIR}/<blake3 hex> or a V3 keystore JSON"
    )


def _public_bytes(value: bytes | str) -> bytes:
    if isinstance(value, bytes):
        return value
    try:
        return bytes.fromhex(value[2:] if value.startswith("0x") else value)
    except ValueError:
        raise KeystoreError("the public key is not valid hex") from None


def _looks_like_v3(path: Path) -> bool:
    """Whether a file is a V3 keystore, judged without reading a file others could read."""
    if path.suffix != ".json" and not path.name.startswith("UTC--"):
        return False
    try:
        if path.stat().st_size > 64 * 1024:
            return False
        return _is_v3(json.loads(path.read_bytes()))
    except (OSError, ValueError):
        return False


class KeystoreSettings(Protocol):
    """Where the operator's key is (:class:`blueprint.config.Settings` has these fields)."""

    @property
    def keystore_uri(self) -> str: ...
    @property
    def keystore_password(self) -> SecretStr | None: ...
    @property
    def keystore_password_file(self) -> Path | None: ...


def load_operator_from_settings(settings: KeystoreSettings) -> Operator:
    """``load_operator`` with the blueprint manager's settings (``keystore_uri`` and password)."""
    secret = settings.keystore_password
    return load_operator(
        settings.keystore_uri,
        password=secret.get_secret_value() if secret is not None else None,
        password_file=settings.keystore_password_file,
    )


def _ensure_private_dir(path: Path) -> None:
    """Create ``path`` with mode 700; an existing folder keeps the mode its owner chose."""
    if not path.is_dir():
        path.mkdir(parents=True, mode=0o700)
        os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask


def _write_private(path: Path, data: bytes) -> None:
    """Write with mode 600 from the first byte (no window where the file is world-readable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def write_sdk_key(root: str | os.PathLike[str], private_key: bytes | str) -> Path:
    """Store a key in the SDK layout under ``root`` (dirs 700, file 600); returns the file path.

    Used by ``python -m blueprint dev`` and tests; the result loads in the Rust SDK too.
    """
    operator = Operator.from_private_key(private_key)
    secret = _secret_bytes(private_key)
    base = _strip_uri(root)
    _ensure_private_dir(base)
    _ensure_private_dir(base / ECDSA_DIR)
    public = operator.compressed_public_key
    path = base / ECDSA_DIR / sdk_key_filename(public)
    _write_private(path, json.dumps([list(public), list(secret)]).encode())
    return path


def write_v3_key(path: str | os.PathLike[str], private_key: bytes | str, password: str,
                 *, kdf: str = "scrypt", iterations: int | None = None) -> Path:
    """Write an encrypted V3 keystore (mode 600). Tests pass ``kdf="pbkdf2", iterations=2`` for speed."""
    secret = _secret_bytes(private_key)
    doc = Account.encrypt(secret, password, kdf=kdf, iterations=iterations)
    target = _strip_uri(path)
    _ensure_private_dir(target.parent)
    _write_private(target, json.dumps(doc).encode())
    return target
