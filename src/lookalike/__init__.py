"""lookalike: find the images that look like this one, or like this part of it."""

from lookalike.collection import Collection, Hit, IndexReport
from lookalike.encoders import create_encoder, list_encoders, register_encoder
from lookalike.errors import ImageError, LookalikeError
from lookalike.index import create_index

__version__ = "0.1.0"

__all__ = [
    "Collection",
    "Hit",
    "ImageError",
    "IndexReport",
    "LookalikeError",
    "__version__",
    "create_encoder",
    "create_index",
    "list_encoders",
    "register_encoder",
]
