"""Any timm model as an encoder: `timm:convnext_tiny.fb_in22k`, weights from the hub when
online or from a local file (`create_encoder(name, weights=FILE)`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
from timm.data import resolve_data_config
from torch import nn

from lookalike.encoders.heads import PreLogits
from lookalike.encoders.preprocess import Preprocess
from lookalike.encoders.spec import EncoderSpec
from lookalike.errors import LookalikeError


def timm_spec(model_name: str) -> EncoderSpec:
    """Build the architecture once (no weights) to learn its dim and preprocessing."""
    try:
        probe: Any = timm.create_model(model_name, pretrained=False, num_classes=0)
    except RuntimeError as exc:  # timm's "Unknown model"
        raise LookalikeError(f"timm:{model_name}: {exc}") from None
    cfg = resolve_data_config({}, model=probe)
    interpolation = cfg.get("interpolation", "bilinear")
    preprocess = Preprocess(
        size=int(cfg["input_size"][-1]),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        interpolation=interpolation if interpolation in ("bilinear", "bicubic") else "bilinear",
    )

    def load(weights: Path | None) -> nn.Module:
        if weights is not None:
            if not weights.is_file():
                raise LookalikeError(f"{weights}: no such weights file")
            net = timm.create_model(
                model_name, pretrained=True, num_classes=0,
                pretrained_cfg_overlay={"file": str(weights)},
            )
        else:
            try:
                net = timm.create_model(model_name, pretrained=True, num_classes=0)
            except Exception as exc:  # offline, or no pretrained tag
                raise LookalikeError(
                    f"timm:{model_name}: cannot fetch pretrained weights ({exc}); "
                    "pass a local file with --weights"
                ) from None
        return PreLogits(net.eval())

    return EncoderSpec(
        name=f"timm:{model_name}",
        dim=int(probe.num_features),
        preprocess=preprocess,
        weights_source="timm (hub or local file)",
        description=f"timm model {model_name}",
        load=load,
    )
