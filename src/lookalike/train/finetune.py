"""Fine-tuning mode: the backbone itself learns (all of it, or its last N layer groups),
with the supervised contrastive loss over P x K batches of images.

Each image is decoded and resized once and kept as uint8 pixels; a batch gets a random
horizontal flip. Batch norm keeps its pretrained statistics (small batches would spoil
them). Mixed precision runs on a GPU. The model folder holds the fine-tuned backbone
weights beside the base encoder's name, and loads like any encoder (ONNX fast path too).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lookalike.encoders.heads import L2Normalized, PixelNormalize
from lookalike.encoders.spec import EncoderSpec
from lookalike.errors import LookalikeError
from lookalike.train.head import _pk_batches
from lookalike.train.loop import Fitted, LoopSettings, fit
from lookalike.train.losses import SupConLoss


@dataclass
class FinetuneConfig:
    epochs: int = 5
    batch_size: int = 32
    per_label: int = 4
    lr: float = 1e-4
    weight_decay: float = 1e-4
    temperature: float = 0.1
    patience: int = 3
    trainable: str = "last:2"  # "all", or "last:N" layer groups
    seed: int = 0

    @property
    def settings(self) -> LoopSettings:
        return LoopSettings(self.epochs, self.lr, self.weight_decay, self.patience)


class _FrozenNorm(nn.Sequential):
    """Pixels -> unit embeddings; batch norm stays in inference mode while training."""

    def train(self, mode: bool = True) -> _FrozenNorm:
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self


def layer_groups(backbone: nn.Module, size: int = 224) -> list[list[nn.Parameter]]:
    """The backbone's parameters that shape its embedding, in groups from input to output:
    timm's own layer groups when it has them (stem, each block, head), else by the first
    numbered container in the parameter's name (`features.17`, `layer4.2`). Parameters the
    embedding does not use (a classifier past the pre-logits) are left out."""
    was_training = backbone.training
    backbone.eval()
    backbone(torch.zeros(1, 3, size, size)).sum().backward()
    used = {id(p) for p in backbone.parameters() if p.grad is not None}
    backbone.zero_grad(set_to_none=True)
    backbone.train(was_training)

    named = dict(backbone.named_parameters())
    timm_model: Any = next((m for m in backbone.modules() if hasattr(m, "group_matcher")),
                           None)
    if timm_model is not None:
        from timm.models import group_parameters

        prefix = next(n for n, m in backbone.named_modules() if m is timm_model)
        found = group_parameters(timm_model, timm_model.group_matcher(coarse=False))
        groups = [[named[f"{prefix}.{n}" if prefix else n] for n in names]
                  for names in found.values()]
    else:
        keyed: dict[str, list[nn.Parameter]] = {}
        for name, param in named.items():
            match = re.match(r"^(.*?\.\d+)\.", name)
            keyed.setdefault(match[1] if match else name.rsplit(".", 1)[0], []).append(param)
        groups = list(keyed.values())
    return [g for g in ([p for p in group if id(p) in used] for group in groups) if g]


def set_trainable(backbone: nn.Module, trainable: str, size: int = 224) -> int:
    """Freeze all but the chosen groups; returns how many parameters will learn."""
    match = re.fullmatch(r"last:(\d+)", trainable)
    if trainable != "all" and not (match and int(match[1]) >= 1):
        raise LookalikeError(f"trainable must be 'all' or 'last:N' (N >= 1), got {trainable!r}")
    groups = layer_groups(backbone, size)
    chosen = groups if trainable == "all" else groups[-int(match[1]):]  # type: ignore[index]
    for param in backbone.parameters():
        param.requires_grad_(False)
    for group in chosen:
        for param in group:
            param.requires_grad_(True)
    return sum(p.numel() for group in chosen for p in group)


def finetune(spec: EncoderSpec, train_pixels: np.ndarray, train_labels: np.ndarray,
             val_pixels: np.ndarray, val_labels: np.ndarray, *,
             config: FinetuneConfig | None = None, device: str | None = None,
             checkpoint: Path | None = None, progress: bool = False,
             on_epoch: Callable[[dict[str, Any]], None] | None = None
             ) -> tuple[nn.Module, Fitted]:
    """Fine-tune `spec`'s backbone on (N, S, S, 3) uint8 pixels with labels; returns the
    backbone with the best epoch's weights (by the held-out items' mAP) and what the run
    did."""
    cfg = config or FinetuneConfig()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    backbone = spec.load(None)
    set_trainable(backbone, cfg.trainable, spec.preprocess.size)
    pre = spec.preprocess
    model = _FrozenNorm(PixelNormalize(pre.mean, pre.std), L2Normalized(backbone)).to(device)
    loss_fn = SupConLoss(cfg.temperature)
    labels = torch.from_numpy(np.unique(train_labels, return_inverse=True)[1]).to(device)

    def batch_loss(index: np.ndarray) -> torch.Tensor:
        pixels = torch.from_numpy(train_pixels[index]).to(device)
        flip = torch.from_numpy(rng.random(len(index)) < 0.5).to(device)
        pixels = torch.where(flip[:, None, None, None], pixels.flip(2), pixels)
        return loss_fn(model(pixels).float(), labels[torch.from_numpy(index).to(device)])

    def embed_validation() -> np.ndarray:
        out = [model(torch.from_numpy(val_pixels[i:i + 64]).to(device)).float().cpu().numpy()
               for i in range(0, len(val_pixels), 64)]
        return np.concatenate(out)

    fitted = fit(model, lambda: _pk_batches(train_labels, cfg.batch_size, cfg.per_label, rng),
                 batch_loss, embed_validation, val_labels, cfg.settings, rng,
                 checkpoint=checkpoint, progress=progress, on_epoch=on_epoch)
    return backbone.cpu().eval(), fitted
