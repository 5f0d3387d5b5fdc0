"""The encoder registry: one name -> one spec, the one path `create_encoder` and the CLI take.

Names are registered names (`efficientnet_lite0`), `timm:MODEL` for any timm model (weights
from the hub when online, or from a file), or a folder holding a trained model.
"""

from __future__ import annotations

import fnmatch
from dataclasses import replace

from lookalike.encoders.spec import EncoderSpec
from lookalike.errors import LookalikeError

INT8 = ":int8"  # a name's suffix for its INT8 graph

#: The encoder used when none is named.
DEFAULT_ENCODER = "efficientnet_lite0"


_REGISTRY: dict[str, EncoderSpec] = {}


def register_encoder(spec: EncoderSpec) -> EncoderSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"encoder {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def list_encoders(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style pattern, e.g. `list_encoders("*lite*")`."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_spec(name: str) -> EncoderSpec:
    """The spec for `name`: a registered name or `timm:MODEL`, either with `:int8` for its
    INT8 graph (see `lookalike.encoders.quantize`)."""
    if name.endswith(INT8):
        base = get_spec(name.removesuffix(INT8))
        return replace(base, name=name, description=f"{base.description}; INT8")
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name.startswith("timm:"):
        from lookalike.encoders.timm_models import timm_spec

        return timm_spec(name.removeprefix("timm:"))
    raise LookalikeError(
        f"unknown encoder {name!r}; choose one of {', '.join(list_encoders())} "
        "or timm:MODEL_NAME"
    )
