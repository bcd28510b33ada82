"""The one configuration model of the operator.

Sources, highest priority first: command-line flags (passed as init arguments by the CLI), the
environment (the blueprint manager's names, e.g. ``HTTP_RPC_URL``, ``SERVICE_ID``; nested tables
with ``__``, e.g. ``SERVER__PORT``), a TOML file (``--config`` or ``BLUEPRINT_CONFIG``), defaults.
"""

from __future__ import annotations

import os
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from blueprint.balancer.settings import BalancerSettings
from blueprint.config_checks import check_settings
from blueprint.config_errors import ConfigError, config_error, problems_from_validation, toml_error
from blueprint.jobs.settings import JobsSettings
from blueprint.llm.config import NodeConfig
from blueprint.server.settings import ServerSettings
from blueprint.tracing.settings import TracingSettings

CONFIG_ENV = "BLUEPRINT_CONFIG"
#: The TOML file :func:`load_settings` was given, seen by the sources while it builds Settings
#: (a context variable, so loading never writes to the process environment).
_CONFIG_FILE: ContextVar[Path | None] = ContextVar("blueprint_config_file", default=None)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_nested_delimiter="__", extra="forbid", case_sensitive=False, populate_by_name=True
    )

    # --- the blueprint manager's environment (../shared/DESIGN.md section 3) ---
    http_rpc_url: str = Field(
        default="http://127.0.0.1:8545", description="HTTP JSON-RPC endpoint of the chain."
    )
    ws_rpc_url: str | None = Field(
        default=None, description="WebSocket endpoint: logs pushed by subscription (else polled)."
    )
    keystore_uri: str = Field(
        default="./keystore", description="SDK keystore folder (`Ecdsa/<blake3>`) or a V3 keystore JSON file."
    )
    keystore_password: SecretStr | None = Field(default=None, description="Password of a V3 keystore.")
    keystore_password_file: Path | None = Field(
        default=None, description="File holding that password (mode 600)."
    )
    data_dir: Path = Field(default=Path("./data"), description="Where the job ledger (SQLite) lives.")
    blueprint_id: int | None = Field(default=None, description="The blueprint this operator serves.")
    service_id: int | None = Field(default=None, description="Absent: registration mode.")
    protocol: Literal["tangle"] = Field(default="tangle", description="Only Tangle v2 (EVM) is supported.")
    chain: Literal["local_testnet", "local_mainnet", "testnet", "mainnet"] = Field(
        default="local_testnet", description="Network name (as the blueprint manager passes it)."
    )
    tangle_contract: str = Field(
        default="0x0165878A594ca255338adfa4d48449f69242Eb8F", description="Tangle proxy address."
    )
    staking_contract: str = Field(
        default="0xDc64a140Aa3E981100a9becA4E685f962f0cF6C9",
        description="MultiAssetDelegation proxy address.",
    )
    status_registry_contract: str = Field(
        default="0x2bdCC0de6bE1f7D2ee689a0342D76F52E8EFABa3",
        description="OperatorStatusRegistry (heartbeats).",
    )
    registration_mode_on: bool = Field(default=False, description="Write registration inputs and exit.")
    registration_output_path: Path | None = Field(
        default=None, description="Where registration mode writes them."
    )
    registration_capture_only: bool = Field(default=False, description="Capture registration inputs only.")
    test_mode: bool = Field(default=False, description="Set by the manager in test runs.")
    dry_run: bool = Field(default=False, description="Compute results but never submit them.")

    # --- LLM nodes, balancer and HTTP API ---
    nodes: list[NodeConfig] = Field(default_factory=list)
    balancer: BalancerSettings = Field(default_factory=BalancerSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    jobs: JobsSettings = Field(default_factory=JobsSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_path = _CONFIG_FILE.get() or os.environ.get(CONFIG_ENV)
        if config_path:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_path)))
        return tuple(sources)


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from a TOML file (argument, else ``BLUEPRINT_CONFIG``), the environment and
    ``overrides`` (flags; ``None`` values are dropped so an unset flag never hides the env).

    Types and values are checked here (:mod:`blueprint.config_checks`): a problem raises
    :class:`~blueprint.config_errors.ConfigError` naming the file and line (or the environment
    variable) and the key."""
    flags = {key: value for key, value in overrides.items() if value is not None}
    path = Path(config_file) if config_file is not None else None
    if path is None and os.environ.get(CONFIG_ENV):
        path = Path(os.environ[CONFIG_ENV])
    if path is not None and not path.is_file():
        raise ConfigError(f"config file not found: {path} (pass --config FILE or set {CONFIG_ENV})")
    token = _CONFIG_FILE.set(path)
    try:
        settings = Settings(**flags)
    except ValidationError as exc:
        raise config_error(problems_from_validation(exc, Settings), path) from None
    except tomllib.TOMLDecodeError as exc:
        raise toml_error(exc, path or Path("config")) from None
    finally:
        _CONFIG_FILE.reset(token)
    problems = check_settings(settings)
    if problems:
        raise config_error(problems, path)
    return settings
