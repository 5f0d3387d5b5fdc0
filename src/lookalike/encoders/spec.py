"""What a registry entry knows before anything is loaded."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lookalike.encoders.preprocess import Preprocess

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class EncoderSpec:
    """What a registry entry knows before anything is loaded.

    `load(weights)` builds the architecture and loads weights (from `weights` when given,
    else from the entry's own source) and returns a module mapping a `(B, 3, S, S)` batch
    to `(B, dim)` embeddings, not yet normalised.
    """

    name: str
    dim: int
    preprocess: Preprocess
    weights_source: str
    description: str
    load: Callable[[Path | None], nn.Module]
    graph_key: str | None = None  # names its cached ONNX graphs when `name` cannot (a path)

    @property
    def graph_name(self) -> str:
        return self.graph_key or self.name
