"""Exact search: every stored vector scored, one matrix product per batch of queries."""

from __future__ import annotations

from lookalike.index.stored import StoredIndex


class FlatIndex(StoredIndex):
    """Brute force; the truth every approximate index is measured against."""

    family = "flat"
