"""The errors lookalike raises on bad input: each says what was wrong with which input."""

from __future__ import annotations


class LookalikeError(Exception):
    """Bad input or usage; the CLI prints the message on one line and exits with status 2."""


class ImageError(LookalikeError, ValueError):
    """An image that cannot be used, with the file (or input) it came from."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason
