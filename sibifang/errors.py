"""Errors a person can act on, whose message is for her (in Chinese)."""

from __future__ import annotations


class FlowParameterError(ValueError):
    """A run asked for by hand with parameters that cannot be used (an unknown grid, a period
    that names no days); ``sibifang run`` prints the message alone, without a traceback."""
