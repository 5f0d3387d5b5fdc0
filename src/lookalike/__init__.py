"""lookalike: find the images that look like this one, or like this part of it.

Names are imported on first use (PEP 562), so `lookalike metrics` and other light commands
start without loading PyTorch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Collection": "lookalike.collection",
    "Hit": "lookalike.collection",
    "IndexReport": "lookalike.collection",
    "ImageError": "lookalike.errors",
    "LookalikeError": "lookalike.errors",
    "create_encoder": "lookalike.encoders",
    "list_encoders": "lookalike.encoders",
    "register_encoder": "lookalike.encoders",
    "create_index": "lookalike.index",
    "evaluate": "lookalike.metrics",
}

if TYPE_CHECKING:
    from lookalike.collection import Collection, Hit, IndexReport
    from lookalike.encoders import create_encoder, list_encoders, register_encoder
    from lookalike.errors import ImageError, LookalikeError
    from lookalike.index import create_index
    from lookalike.metrics import evaluate


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lookalike' has no attribute {name!r}")


__all__ = [
    "Collection",
    "Hit",
    "ImageError",
    "IndexReport",
    "LookalikeError",
    "__version__",
    "create_encoder",
    "create_index",
    "evaluate",
    "list_encoders",
    "register_encoder",
]
