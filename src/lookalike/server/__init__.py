"""HTTP API and web page over one collection (`lookalike serve`; needs the `serve` extra)."""

from lookalike.server.app import address, bind, create_app, run_server

__all__ = ["address", "bind", "create_app", "run_server"]
