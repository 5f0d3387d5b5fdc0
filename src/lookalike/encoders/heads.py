"""Small wrappers that turn a classification network into an embedding network, so each
backbone is used as its library defines it and only the last step is ours."""

from __future__ import annotations

from typing import Any

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
