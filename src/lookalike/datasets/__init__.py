"""Evaluation sets that can be built offline, in one layout (see `layout`)."""

from __future__ import annotations

from pathlib import Path

from lookalike.datasets.builders import BUILDERS
from lookalike.errors import LookalikeError


def build_dataset(name: str, out: str | Path, **options: int) -> Path:
    """Write the set `name` under `out`; `options`: db_size, queries, seed."""
    if name not in BUILDERS:
        raise LookalikeError(f"unknown dataset {name!r}; choose one of {', '.join(BUILDERS)}")
    return BUILDERS[name](Path(out), **options)


__all__ = ["BUILDERS", "build_dataset"]
