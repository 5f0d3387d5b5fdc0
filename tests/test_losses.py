"""The contrastive losses against slow reference loops, known values and gradcheck."""

from __future__ import annotations

import math

import pytest
import torch

from lookalike.train import InfoNCELoss, SupConLoss


def _cos(u: torch.Tensor, v: torch.Tensor) -> float:
    return float(u @ v / (u.norm() * v.norm()))


def _infonce_loop(a: torch.Tensor, b: torch.Tensor, tau: float) -> float:
    total = 0.0
    for i in range(len(a)):
        sims = [math.exp(_cos(a[i], b[j]) / tau) for j in range(len(b))]
        total += -math.log(sims[i] / sum(sims))
    return total / len(a)


def _supcon_loop(x: torch.Tensor, labels: list[int], tau: float) -> float:
    losses = []
    for i in range(len(x)):
        positives = [p for p in range(len(x)) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denom = sum(math.exp(_cos(x[i], x[j]) / tau) for j in range(len(x)) if j != i)
        losses.append(-sum(math.log(math.exp(_cos(x[i], x[p]) / tau) / denom)
                           for p in positives) / len(positives))
    return sum(losses) / len(losses)


def test_infonce_equals_the_reference_loop() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    one_way = InfoNCELoss(0.2, symmetric=False)(a, b)
    assert float(one_way) == pytest.approx(_infonce_loop(a, b, 0.2), rel=1e-5)
    both = InfoNCELoss(0.2)(a, b)
    expected = (_infonce_loop(a, b, 0.2) + _infonce_loop(b, a, 0.2)) / 2
    assert float(both) == pytest.approx(expected, rel=1e-5)


def test_equal_similarities_give_log_n_and_perfect_pairs_approach_zero() -> None:
    same = torch.ones(8, 4)
    assert float(InfoNCELoss(0.5)(same, same)) == pytest.approx(math.log(8), rel=1e-6)
    eye = torch.eye(6)
    assert float(InfoNCELoss(0.01)(eye, eye)) < 1e-6


def test_supcon_equals_the_reference_loop_and_skips_lonely_anchors() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 6, generator=g)
    labels = [0, 0, 1, 1, 1, 2, 3, 3, 0]  # label 2 has no positive
    loss = SupConLoss(0.3)(x, torch.tensor(labels))
    assert float(loss) == pytest.approx(_supcon_loop(x, labels, 0.3), rel=1e-5)
    with pytest.raises(ValueError, match="no item of the batch has a positive"):
        SupConLoss()(x[:3], torch.tensor([0, 1, 2]))


def test_gradients_match_finite_differences() -> None:
    g = torch.Generator().manual_seed(2)
    a = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    info = InfoNCELoss(0.5).double()
    assert torch.autograd.gradcheck(info, (a, b))
    labels = torch.tensor([0, 0, 1, 1, 2])
    sup = SupConLoss(0.5).double()
    assert torch.autograd.gradcheck(lambda x: sup(x, labels), (a,))


def test_learnable_temperature_learns_and_bad_arguments_fail() -> None:
    loss = InfoNCELoss(0.5, learnable=True)
    a = torch.eye(4)
    loss(a, a).backward()
    assert loss.log_scale.grad is not None and float(loss.log_scale.grad) < 0  # sharpen
    assert loss.temperature == pytest.approx(0.5)
    with pytest.raises(ValueError, match="temperature must be positive"):
        InfoNCELoss(0.0)
    with pytest.raises(ValueError, match=r"two \(N, d\) views"):
        InfoNCELoss()(torch.ones(3, 2), torch.ones(4, 2))
