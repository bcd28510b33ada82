"""The TNT Core devnet data this package carries, so a plain clone runs the devnet without
``../shared``: the LocalTestnet anvil state and the upstream ABIs, xz-compressed, each with the
sha256 of its uncompressed bytes in ``manifest.json``. Provenance in ``README.md`` beside this
file.

anvil's ``--load-state`` wants a plain file, so :func:`carried_state_file` extracts the state
once into the user cache (checked against the manifest, written atomically so that parallel test
runs never see half a file) and returns that path.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent
STATE_NAME = "localtestnet-state.json"


class CarriedDataError(RuntimeError):
    """The carried data is missing or does not match its manifest (a broken install)."""


@cache
def manifest() -> dict[str, dict[str, Any]]:
    """``name -> {"sha256", "bytes"}`` of every carried file, uncompressed."""
    return json.loads((DATA_DIR / "manifest.json").read_text())


def read_carried(name: str) -> bytes:
    """The uncompressed bytes of a carried file (e.g. ``abi/ITangleFull.json``), checked."""
    expected = manifest().get(name)
    source = DATA_DIR / f"{name}.xz"
    if expected is None or not source.is_file():
        raise CarriedDataError(f"{name} is not carried by this package (looked for {source})")
    raw = lzma.decompress(source.read_bytes())
    if hashlib.sha256(raw).hexdigest() != expected["sha256"]:
        raise CarriedDataError(f"{source} does not match its sha256 in manifest.json: reinstall")
    return raw


def carried_abi(name: str) -> list[dict[str, Any]]:
    """An upstream TNT Core ABI (``ITangleFull``, ``IMultiAssetDelegation``...) as a list."""
    doc = json.loads(read_carried(f"abi/{name}.json"))
    return doc["abi"] if isinstance(doc, dict) else doc


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tangle-llm-blueprint"


def carried_state_file(cache_dir: Path | None = None) -> Path:
    """A plain-file copy of the carried LocalTestnet state, extracted once per content hash."""
    digest = manifest()[STATE_NAME]["sha256"]
    folder = (cache_dir or cache_root()) / "carried" / digest[:16]
    target = folder / STATE_NAME
    if target.is_file() and target.stat().st_size == manifest()[STATE_NAME]["bytes"]:
        return target
    raw = read_carried(STATE_NAME)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".state-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(raw)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
