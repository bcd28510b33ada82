"""A local Tangle v2 devnet: anvil (npm ``@foundry-rs/anvil``, pinned in ``package.json``) loaded
with the TNT Core LocalTestnet state.

Used by ``python -m blueprint dev``, the tests and the benchmarks. The state file is found by, in
order: an explicit argument, ``$TNT_CORE_DIR`` (a folder) or ``$TNT_CORE_STATE`` (the file),
``../shared/tnt-core/`` beside the checkout, ``~/.cache/tangle-llm-blueprint/tnt-core/``, and
last the copy the package carries (``blueprint/devnet_data``, extracted once into the cache).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
STATE_FILE = "localtestnet-state.json"
CHAIN_ID = 31337
ANVIL_VERSION = "1.7.1"
#: anvil's well-known default accounts (mnemonic "test test ... junk"): public test keys only.
DEV_KEYS: tuple[str, ...] = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
    "0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e",
    "0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356",
    "0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97",
    "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6",
)
UPSTREAM_HINT = (
    "Get the TNT Core LocalTestnet snapshot from the tangle-network/blueprint repository "
    "(crates/chain-setup/anvil/snapshots/localtestnet-state.json, anvil 1.7.x format) and pass "
    "--tnt-core DIR, or set TNT_CORE_DIR=DIR (or TNT_CORE_STATE=FILE)."
)


class DevnetError(RuntimeError):
    pass


def find_tnt_core_state(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The LocalTestnet state file, or a DevnetError that says where to get it."""
    candidates: list[Path] = []
    if explicit:
        path = Path(explicit)
        candidates.append(path / STATE_FILE if path.is_dir() else path)
    if os.environ.get("TNT_CORE_STATE"):
        candidates.append(Path(os.environ["TNT_CORE_STATE"]))
    if os.environ.get("TNT_CORE_DIR"):
        candidates.append(Path(os.environ["TNT_CORE_DIR"]) / STATE_FILE)
    candidates.append(REPO_ROOT.parent / "shared" / "tnt-core" / STATE_FILE)
    from blueprint.devnet_data import cache_root

    candidates.append(cache_root() / "tnt-core" / STATE_FILE)  # ~/.cache or $XDG_CACHE_HOME
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if not explicit:
        from blueprint.devnet_data import CarriedDataError, carried_state_file

        try:
            return carried_state_file()
        except (CarriedDataError, OSError) as exc:
            candidates.append(Path(f"the carried copy ({exc})"))
    looked = ", ".join(str(c) for c in candidates)
    raise DevnetError(f"TNT Core state not found (looked in: {looked}). {UPSTREAM_HINT}")


def find_anvil() -> Path:
    """The pinned anvil binary from ``node_modules`` (``npm install`` puts it there)."""
    for candidate in (
        REPO_ROOT / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil",
        REPO_ROOT / "node_modules" / "@foundry-rs" / "anvil-linux-arm64" / "bin" / "anvil",
        REPO_ROOT / "node_modules" / "@foundry-rs" / "anvil-darwin-arm64" / "bin" / "anvil",
        REPO_ROOT / "node_modules" / "@foundry-rs" / "anvil-darwin-amd64" / "bin" / "anvil",
    ):
        if candidate.is_file():
            return candidate
    found = shutil.which("anvil")
    if found:
        return Path(found)
    raise DevnetError(
        f"anvil not found: run `npm ci` in {REPO_ROOT} (installs @foundry-rs/anvil@{ANVIL_VERSION})."
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def rpc(url: str, method: str, params: list | None = None, timeout: float = 10.0) -> object:
    """A plain synchronous JSON-RPC call, for set-up code and tests."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []})
    req = urllib.request.Request(url, data=body.encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        reply = json.loads(resp.read())
    if "error" in reply:
        raise DevnetError(f"{method}: {reply['error']}")
    return reply["result"]


@dataclass
class Anvil:
    """A running anvil process on loopback. Use as a context manager or call ``stop``."""

    port: int
    process: subprocess.Popen[bytes]
    host: str = "127.0.0.1"
    state_path: Path | None = None
    args: list[str] = field(default_factory=list)

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def rpc(self, method: str, params: list | None = None) -> object:
        return rpc(self.http_url, method, params)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Anvil:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_anvil(
    *,
    state: str | os.PathLike[str] | None = None,
    port: int | None = None,
    host: str = "127.0.0.1",
    block_time: float | None = None,
    extra_args: list[str] | None = None,
    load_state: bool = True,
    log_path: str | os.PathLike[str] | None = None,
    timeout: float = 30.0,
) -> Anvil:
    """Start anvil with the TNT Core state and wait until it answers.

    ``block_time`` None means automine (one block per transaction). ``extra_args`` pass through,
    e.g. ``["--state", path]`` to persist across a stop/start for fault tests (then pass
    ``load_state=False`` on the restart).
    """
    port = port or free_port(host)
    args = [
        str(find_anvil()), "--host", host, "--port", str(port), "--chain-id", str(CHAIN_ID),
        "--base-fee", "0", "--gas-price", "0", "--gas-limit", "100000000",
        "--hardfork", "cancun", "--disable-code-size-limit",
    ]
    state_path = None
    if load_state:
        state_path = find_tnt_core_state(state)
        args += ["--load-state", str(state_path)]
    if block_time is not None:
        args += ["--block-time", str(block_time)]
    args += list(extra_args or [])
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    anvil = Anvil(port=port, process=process, host=host, state_path=state_path, args=args)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DevnetError(f"anvil exited with {process.returncode}: {' '.join(args)}")
        with contextlib.suppress(OSError, DevnetError):
            anvil.rpc("eth_blockNumber")
            return anvil
        time.sleep(0.1)
    anvil.stop()
    raise DevnetError(f"anvil did not answer on {anvil.http_url} within {timeout}s")
