"""HTTP API and web page over one collection (`lookalike serve`; needs the `serve` extra)."""

from lookalike.server.app import create_app

__all__ = ["create_app"]
