"""Contrastive losses as small modules: softmax over similarities / temperature, then
cross-entropy on the positives.

`InfoNCELoss` (NT-Xent, SimCLR / CLIP): two views `a`, `b` of N items; row i of `a` must pick
row i of `b` among all N rows (the other N - 1 are in-batch negatives):

    loss_i = -log( exp(s(a_i, b_i) / tau) / sum_j exp(s(a_i, b_j) / tau) )

with s the cosine similarity, averaged over i; `symmetric=True` also lets `b` pick in `a`
and averages both directions. All similarities equal gives exactly log(N).

`SupConLoss` (Khosla et al. 2020): one batch with labels; every other item with the same
label is a positive of an anchor, the loss averages -log softmax over the positives:

    loss_i = -1/|P(i)| sum_{p in P(i)} log( exp(s_ip / tau) / sum_{j != i} exp(s_ij / tau) )

Anchors without a positive are left out. The softmax is a training-time normalisation over
the batch: its probabilities depend on which other items were drawn and on tau, so they
are not relevance scores (see `lookalike.calibration` for those).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class _Temperature(nn.Module):
    """A fixed tau, or a learnable one kept as log(1/tau) (as CLIP does) and clamped."""

    def __init__(self, temperature: float, learnable: bool) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        log_scale = torch.tensor(math.log(1.0 / temperature))
        if learnable:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    @property
    def temperature(self) -> float:
        return float(torch.exp(-self.log_scale.detach()))

    def scale(self) -> torch.Tensor:
        return self.log_scale.clamp(max=math.log(100.0)).exp()


class InfoNCELoss(_Temperature):
    def __init__(self, temperature: float = 0.1, *, symmetric: bool = True,
                 learnable: bool = False) -> None:
        super().__init__(temperature, learnable)
        self.symmetric = symmetric

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape != b.shape or a.ndim != 2:
            raise ValueError(f"two (N, d) views expected, got {tuple(a.shape)} and "
                             f"{tuple(b.shape)}")
        logits = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T * self.scale()
        target = torch.arange(a.shape[0], device=a.device)
        loss = F.cross_entropy(logits, target)
        if self.symmetric:
            loss = (loss + F.cross_entropy(logits.T, target)) / 2
        return loss


class SupConLoss(_Temperature):
    def __init__(self, temperature: float = 0.1, *, learnable: bool = False) -> None:
        super().__init__(temperature, learnable)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or labels.shape != (x.shape[0],):
            raise ValueError(f"(N, d) features and (N,) labels expected, got "
                             f"{tuple(x.shape)} and {tuple(labels.shape)}")
        z = F.normalize(x, dim=1)
        logits = z @ z.T * self.scale()
        self_mask = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
        logits = logits.masked_fill(self_mask, float("-inf"))
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        positive = (labels[:, None] == labels[None, :]) & ~self_mask
        count = positive.sum(dim=1)
        anchors = count > 0
        if not anchors.any():
            raise ValueError("no item of the batch has a positive (another with its label)")
        per_anchor = -(log_prob.masked_fill(~positive, 0.0).sum(dim=1)[anchors]
                       / count[anchors])
        return per_anchor.mean()
