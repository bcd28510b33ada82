"""Loading the settings: the TOML file reaches the model without touching the environment."""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

import pytest

from blueprint.config import CONFIG_ENV, load_settings


class _ReadOnlyEnviron(dict):  # type: ignore[type-arg]
    """``os.environ`` stand-in that fails the test on any write."""

    def __setitem__(self, key: str, value: str) -> None:
        raise AssertionError(f"load_settings wrote {key} to the environment")

    def __delitem__(self, key: str) -> None:
        raise AssertionError(f"load_settings removed {key} from the environment")

    def pop(self, key: str, *default: object) -> object:
        raise AssertionError(f"load_settings removed {key} from the environment")


def test_load_settings_reads_the_file_without_writing_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "op.toml"
    path.write_text('data_dir = "/srv/ledger"\n[jobs]\nconfirmations = 3\n')
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    environ: MutableMapping[str, str] = _ReadOnlyEnviron(os.environ)
    real, os.environ = os.environ, environ  # type: ignore[assignment]
    try:  # only while loading: pytest itself writes to the environment between phases
        settings = load_settings(path, service_id=7)
    finally:
        os.environ = real  # noqa: B003
    assert settings.data_dir == Path("/srv/ledger")
    assert settings.jobs.confirmations == 3
    assert settings.service_id == 7
    assert CONFIG_ENV not in environ


def test_the_config_variable_still_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "op.toml"
    path.write_text("[jobs]\nconfirmations = 5\n")
    monkeypatch.setenv(CONFIG_ENV, str(path))
    assert load_settings().jobs.confirmations == 5
    other = tmp_path / "other.toml"
    other.write_text("[jobs]\nconfirmations = 1\n")
    assert load_settings(other).jobs.confirmations == 1  # an explicit file wins over the variable
    assert os.environ[CONFIG_ENV] == str(path)
