"""A Tangle v2 blueprint operator that serves LLM inference, on chain and over HTTP."""

__version__ = "0.1.0"
