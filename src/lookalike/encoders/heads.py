"""Small wrappers that turn a classification network into an embedding network, so each
backbone is used as its library defines it and only the last step is ours."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn


class PreLogits(nn.Module):
    """timm models: the pooled features before the classifier, `forward_head(pre_logits=True)`
    (global average pool for CNNs, the class token for ViTs). `net` keeps its classifier."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net: Any = net  # library-specific methods (forward_head, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)


class PooledFeatures(nn.Module):
    """torchvision models with a `features` trunk: global average pool of its last map."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net: Any = net  # library-specific methods (forward_head, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x).mean(dim=(2, 3))


class TanhOutput(nn.Module):
    """The network's output through tanh (imgsim's self-supervised 768-d head)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net: Any = net  # library-specific methods (forward_head, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(x))


class L2Normalized(nn.Module):
    """Unit-length rows, so that inner product is cosine similarity."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net: Any = net  # library-specific methods (forward_head, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.net(x), dim=1)


class PixelNormalize(nn.Module):
    """uint8 (B, H, W, 3) pixels -> the float (B, 3, H, W) input the network was trained on."""

    def __init__(self, mean: tuple[float, float, float], std: tuple[float, float, float]
                 ) -> None:
        super().__init__()
        self.scale: torch.Tensor
        self.shift: torch.Tensor
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(std).view(1, 3, 1, 1)))
        self.register_buffer("shift", torch.tensor(mean).view(1, 3, 1, 1) / torch.tensor(
            std).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).float()
        return x * self.scale - self.shift


class WithActivations(nn.Module):
    """The embedding network, returning also where it was active: the channel sum of its
    last spatial feature map, (B, h, w), from the same forward pass. Region proposals are
    chosen from it (`lookalike.regions`)."""

    def __init__(self, net: nn.Module, size: int) -> None:
        super().__init__()
        self.net = net
        self.layer = _last_spatial_layer(net, size)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        captured: list[torch.Tensor] = []
        hook = self.net.get_submodule(self.layer).register_forward_hook(
            lambda _m, _i, out: captured.append(out))
        try:
            embedding = self.net(pixels)
        finally:
            hook.remove()
        return embedding, captured[-1].clamp(min=0).sum(dim=1)


def _last_spatial_layer(net: nn.Module, size: int) -> str:
    """The name of the last module whose output is a (B, C, h, w) map with h, w > 1: the
    final convolutional stage of a CNN (a ViT's patch embedding)."""
    produced: list[str] = []
    hooks = [module.register_forward_hook(
        lambda _m, _i, out, name=name: produced.append(name)
        if isinstance(out, torch.Tensor) and out.ndim == 4 and min(out.shape[2:]) > 1 else None)
        for name, module in net.named_modules() if name and not list(module.children())]
    try:
        with torch.no_grad():
            net(torch.zeros(1, size, size, 3, dtype=torch.uint8))
    finally:
        for hook in hooks:
            hook.remove()
    if not produced:
        raise ValueError("the network has no spatial feature map to propose regions from")
    return produced[-1]


class ProjectionHead(nn.Module):
    """Two layers with a skip connection after a shift: starts as the identity map of the
    backbone's embedding (so epoch 0 is the frozen baseline), or as a linear whitening
    (`whiten`), and learns a correction."""

    def __init__(self, dim_in: int, dim_out: int | None = None, hidden: int = 1024) -> None:
        super().__init__()
        self.dim_in, self.dim_out, self.hidden = dim_in, dim_out or dim_in, hidden
        self.shift: torch.Tensor
        self.register_buffer("shift", torch.zeros(dim_in))
        last = nn.Linear(hidden, self.dim_out)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.mlp = nn.Sequential(nn.Linear(dim_in, hidden), nn.GELU(), last)
        self.skip = nn.Linear(dim_in, self.dim_out, bias=False)
        with torch.no_grad():
            self.skip.weight.copy_(torch.eye(self.dim_out, dim_in))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x - self.shift
        return self.skip(x) + self.mlp(x)

    def whiten(self, mean: np.ndarray, w: np.ndarray) -> None:
        """Start as (x - mean) @ w instead of the identity (square heads only)."""
        with torch.no_grad():
            self.shift.copy_(torch.from_numpy(mean))
            self.skip.weight.copy_(torch.from_numpy(w.T))

    def load_state_dict(self, state: Any, strict: bool = True, assign: bool = False) -> Any:
        """Heads saved before the shift existed load with no shift."""
        state = dict(state)
        state.setdefault("shift", torch.zeros(self.dim_in))
        return super().load_state_dict(state, strict=strict, assign=assign)

    def config(self) -> dict[str, int]:
        return {"dim_in": self.dim_in, "dim_out": self.dim_out, "hidden": self.hidden}
