"""The training loop both modes share: AdamW with a cosine schedule, mixed precision on a
GPU, a validation row an epoch, the best epoch kept (early stopping), a progress bar, and a
checkpoint after every epoch that `resume` continues from exactly (weights, optimiser,
schedule, history and the batch sampler's random state)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from lookalike.atomic import atomic_write
from lookalike.errors import LookalikeError


@dataclass(frozen=True)
class LoopSettings:
    epochs: int
    lr: float
    weight_decay: float
    patience: int  # epochs without a better validation mAP before stopping


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def fit(model: nn.Module, batches: Callable[[], Iterable[Any]],
        batch_loss: Callable[[Any], torch.Tensor], validate: Callable[[], dict[str, float]],
        settings: LoopSettings, rng: np.random.Generator, *, checkpoint: Path | None = None,
        progress: bool = False, on_epoch: Callable[[dict[str, Any]], None] | None = None
        ) -> list[dict[str, Any]]:
    """Train the parameters of `model` that require grad; leaves the best epoch's weights in
    `model` and returns one history row an epoch (epoch 0: before training). With an
    existing `checkpoint`, training resumes after its last finished epoch."""
    params = [p for p in model.parameters() if p.requires_grad]
    device = next(model.parameters()).device
    amp = device.type == "cuda"
    optimiser = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=settings.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    if checkpoint is not None and checkpoint.exists():
        try:
            saved = torch.load(checkpoint, weights_only=False)
            model.load_state_dict(saved["model"])
            optimiser.load_state_dict(saved["optimiser"])
            schedule.load_state_dict(saved["schedule"])
            scaler.load_state_dict(saved["scaler"])
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            raise LookalikeError(f"{checkpoint}: cannot resume from it ({exc})") from None
        rng.bit_generator.state = saved["rng"]
        history, best_state, waited = saved["history"], saved["best"], saved["waited"]
    else:
        model.eval()
        history, best_state, waited = [{"epoch": 0, "loss": None, **validate()}], _state(model), 0
    best_map = max(float(h["map"]) for h in history)

    for epoch in range(len(history), settings.epochs + 1):
        if waited >= settings.patience:
            break
        model.train()
        losses = []
        bar = tqdm(list(batches()), desc=f"epoch {epoch}/{settings.epochs}", unit="batch",
                   disable=not progress, leave=False)
        for batch in bar:
            with torch.autocast(device.type, enabled=amp):
                loss = batch_loss(batch)
            optimiser.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        schedule.step()
        model.eval()
        row: dict[str, Any] = {"epoch": epoch, "loss": float(np.mean(losses)), **validate()}
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if progress:
            tqdm.write(f"epoch {epoch}: loss {row['loss']:.4f}  validation mAP {row['map']:.4f}"
                       f"  R@1 {row['r@1']:.4f}")
        if row["map"] > best_map:
            best_state, best_map, waited = _state(model), row["map"], 0
        else:
            waited += 1
        if checkpoint is not None:
            with atomic_write(checkpoint, "wb") as fh:
                torch.save({"model": model.state_dict(), "optimiser": optimiser.state_dict(),
                            "schedule": schedule.state_dict(), "scaler": scaler.state_dict(),
                            "rng": rng.bit_generator.state, "history": history,
                            "best": best_state, "waited": waited}, fh)
    model.load_state_dict(best_state)
    return history
