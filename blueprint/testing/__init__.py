"""Helpers shared by the tests, ``python -m blueprint dev`` and the benchmarks."""

from blueprint.testing.tiny_model import build_tiny_model

__all__ = ["build_tiny_model"]
