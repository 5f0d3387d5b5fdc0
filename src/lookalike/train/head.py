"""Head mode: a small projection head trained on frozen, cached backbone features.

The backbone embeds the training images once (self-supervised: two augmented views of
each, `augmented_view`); only the head learns, so an epoch over ten
thousand images takes seconds on a CPU. Batches are drawn P x K (P labels, K items of each)
so that every anchor has positives for the supervised contrastive loss. Each epoch is
scored on a validation split with `lookalike.metrics` (leave-one-out: every validation item
queries the others, same label = relevant); the best epoch is kept (early stopping), saved
as a model folder (`lookalike.encoders.model_folder`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from lookalike.atomic import atomic_write
from lookalike.encoders.heads import ProjectionHead
from lookalike.train.loop import Fitted, LoopSettings, fit
from lookalike.train.losses import InfoNCELoss, SupConLoss
from lookalike.train.validation import per_query_metrics
from lookalike.train.whitening import best_whitening


@dataclass
class HeadConfig:
    epochs: int = 30
    batch_size: int = 256
    per_label: int = 4  # K of P x K batches
    lr: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.1
    patience: int = 5  # epochs without a better validation mAP before stopping
    dim_out: int | None = None
    hidden: int = 1024
    whiten: bool = True  # start from a learned whitening when one helps (supervised)
    seed: int = 0

    @property
    def settings(self) -> LoopSettings:
        return LoopSettings(self.epochs, self.lr, self.weight_decay, self.patience)


def _pk_batches(labels: np.ndarray, batch_size: int, per_label: int,
                rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of P x K batches: each label's items shuffled and dealt K at a time."""
    groups = [rng.permutation(np.flatnonzero(labels == v)) for v in np.unique(labels)]
    chunks = [g[i:i + per_label] for g in groups if len(g) > 1
              for i in range(0, len(g) - 1, per_label)]
    chunks = [chunks[i] for i in rng.permutation(len(chunks))]
    batches, current = [], []
    for chunk in chunks:
        current.append(chunk)
        if sum(map(len, current)) >= batch_size:
            batches.append(np.concatenate(current))
            current = []
    if current:
        batches.append(np.concatenate(current))
    return batches


def train_head(train_x: np.ndarray, train_labels: np.ndarray | None, val_x: np.ndarray,
               val_labels: np.ndarray, *, config: HeadConfig | None = None,
               views: np.ndarray | None = None,
               on_epoch: Callable[[dict[str, Any]], None] | None = None,
               checkpoint: Path | None = None, progress: bool = False
               ) -> tuple[ProjectionHead, Fitted]:
    """Train; returns the best head (by the held-out items' mAP; `val_x` and `val_labels`
    should be whole groups the training never sees), or the identity when nothing beat the
    frozen encoder there, and what the run did.

    Supervised with `train_labels`: SupCon over P x K batches, from the identity and, when
    a learned whitening (`lookalike.train.whitening`) beats the frozen encoder on the
    held-out groups, from that whitening too; the better of the two runs there is kept
    (the whitening carried best to new copy groups, the identity to new emoji).
    Self-supervised with `views`, the features of a second augmented view of each training
    image: InfoNCE, row i of `train_x` against row i of `views`, the rest of the batch as
    negatives. `checkpoint`: see `lookalike.train.loop` (a second run adds `-whitened`).
    """
    cfg = config or HeadConfig()
    if views is None and train_labels is None:
        raise ValueError("give train_labels (supervised) or views (self-supervised)")
    frozen = per_query_metrics(val_x, val_labels)
    runs = [_run(train_x, train_labels, views, val_x, val_labels, None, cfg, frozen,
                 checkpoint, progress, on_epoch)]
    whitening = (best_whitening(train_x, train_labels, val_x, val_labels)
                 if train_labels is not None and cfg.whiten and cfg.dim_out in (None,
                                                                              train_x.shape[1])
                 else None)
    if whitening is not None:
        named = checkpoint.with_name(f"{checkpoint.stem}-whitened{checkpoint.suffix}") \
            if checkpoint is not None else None
        runs.append(_run(train_x, train_labels, views, val_x, val_labels, whitening[:2], cfg,
                         frozen, named, progress, on_epoch))
    head, fitted = max(runs, key=lambda run: run[1].held_out.trained_map)
    if fitted.held_out.fell_back:  # the frozen encoder as it is
        head = ProjectionHead(train_x.shape[1], cfg.dim_out, cfg.hidden)
    return head.eval(), fitted


def _run(train_x: np.ndarray, train_labels: np.ndarray | None, views: np.ndarray | None,
         val_x: np.ndarray, val_labels: np.ndarray,
         whitening: tuple[np.ndarray, np.ndarray] | None, cfg: HeadConfig,
         frozen: dict[str, np.ndarray], checkpoint: Path | None, progress: bool,
         on_epoch: Callable[[dict[str, Any]], None] | None) -> tuple[ProjectionHead, Fitted]:
    """One training run of `train_head` from the identity or from `whitening`."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    head = ProjectionHead(train_x.shape[1], cfg.dim_out, cfg.hidden)
    if whitening is not None:
        head.whiten(*whitening)
    x = torch.from_numpy(np.ascontiguousarray(train_x, np.float32))
    if views is not None:
        info_nce, other = InfoNCELoss(cfg.temperature), torch.from_numpy(views.astype(np.float32))

        def batches() -> list[np.ndarray]:
            order = rng.permutation(len(x))
            return [order[i:i + cfg.batch_size] for i in range(0, len(order) - 1,
                                                                 cfg.batch_size)]

        def batch_loss(index: torch.Tensor) -> torch.Tensor:
            return info_nce(head(x[index]), head(other[index]))
    else:
        assert train_labels is not None
        sup_con = SupConLoss(cfg.temperature)
        y = torch.from_numpy(np.unique(train_labels, return_inverse=True)[1])
        labels = train_labels

        def batches() -> list[np.ndarray]:
            return _pk_batches(labels, cfg.batch_size, cfg.per_label, rng)

        def batch_loss(index: torch.Tensor) -> torch.Tensor:
            return sup_con(head(x[index]), y[index])
    val = torch.from_numpy(val_x.astype(np.float32))
    fitted = fit(head, batches, lambda batch: batch_loss(torch.from_numpy(batch)),
                 lambda: head(val).numpy(), val_labels, cfg.settings, rng, frozen=frozen,
                 checkpoint=checkpoint, progress=progress, on_epoch=on_epoch)
    return head, fitted


def augmented_view(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One SimCLR-style view: random resized crop (20-100 % of the area), flip, colour
    jitter (p 0.8), grayscale (p 0.2), blur (p 0.5)."""
    from torchvision.transforms import v2

    torch.manual_seed(int(rng.integers(1 << 31)))
    transform = v2.Compose([
        v2.RandomResizedCrop(image.size[::-1], scale=(0.2, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        v2.RandomApply([v2.GaussianBlur(9, sigma=(0.1, 2.0))], p=0.5),
    ])
    return transform(image.convert("RGB"))


def plot_history(history: list[dict[str, Any]], path: Path) -> None:
    """Training loss and validation mAP / R@1 by epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    trained = [h for h in history if h["loss"] is not None]
    left.plot([h["epoch"] for h in trained], [h["loss"] for h in trained], "o-")
    left.set(xlabel="epoch", ylabel="training loss", title="SupCon loss")
    for name in ("map", "r@1", "ndcg@10"):
        right.plot([h["epoch"] for h in history], [h[name] for h in history], "o-", label=name)
    right.set(xlabel="epoch (0 = frozen backbone)", title="validation")
    right.legend()
    fig.tight_layout()
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)
