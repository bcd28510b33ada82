"""Fixtures of the end-to-end tests (the set-up helpers live in :mod:`tests.devnet_support`).

* ``anvil``: a fresh anvil with the TNT Core state per test (not per module as in ``tests/tangle``:
  these tests count transactions and metrics from zero, so each starts on an untouched chain).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from blueprint.devnet.anvil import Anvil
from tests.devnet_support import devnet_anvil


@pytest.fixture
def anvil() -> Iterator[Anvil]:
    with devnet_anvil() as node:
        yield node
