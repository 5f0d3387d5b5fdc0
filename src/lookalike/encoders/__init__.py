"""Pretrained backbones behind one registry, and `Encoder.encode()`."""

from lookalike.encoders import builtin as _builtin  # noqa: F401  (registers the encoders)
from lookalike.encoders.encoder import (
    BatchEncoder,
    EncodedBatch,
    EncodeInput,
    Encoder,
    cached_encoder,
    create_encoder,
)
from lookalike.encoders.preprocess import Preprocess
from lookalike.encoders.registry import (
    DEFAULT_ENCODER,
    EncoderSpec,
    get_spec,
    list_encoders,
    register_encoder,
)

__all__ = [
    "DEFAULT_ENCODER",
    "BatchEncoder",
    "EncodeInput",
    "EncodedBatch",
    "Encoder",
    "EncoderSpec",
    "Preprocess",
    "cached_encoder",
    "create_encoder",
    "get_spec",
    "list_encoders",
    "register_encoder",
]
