"""The training loop both modes share: AdamW with a cosine schedule, mixed precision on a
GPU, a validation row an epoch on held-out groups, the best epoch kept (early stopping),
one progress bar for the run, and a checkpoint after every epoch that `resume` continues
from exactly (weights, optimiser, schedule, history and the batch sampler's random
state)."""

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
from lookalike.train.validation import HeldOutComparison, compare_to_frozen, per_query_metrics


@dataclass(frozen=True)
class LoopSettings:
    epochs: int
    lr: float
    weight_decay: float
    patience: int  # epochs without a better validation mAP before stopping


@dataclass(frozen=True)
class Fitted:
    """What a training run did: one history row an epoch (epoch 0: before training, the
    frozen encoder) and the best epoch against epoch 0 on the held-out groups."""

    history: list[dict[str, Any]]
    held_out: HeldOutComparison

    @property
    def best_epoch(self) -> int:
        return self.held_out.best_epoch


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _means(per_query: dict[str, np.ndarray]) -> dict[str, float]:
    return {name: float(values.mean()) for name, values in per_query.items()}


def fit(model: nn.Module, batches: Callable[[], Iterable[Any]],
        batch_loss: Callable[[Any], torch.Tensor], embed_validation: Callable[[], np.ndarray],
        val_labels: np.ndarray, settings: LoopSettings, rng: np.random.Generator, *,
        frozen: dict[str, np.ndarray] | None = None, checkpoint: Path | None = None,
        progress: bool = False, on_epoch: Callable[[dict[str, Any]], None] | None = None
        ) -> Fitted:
    """Train the parameters of `model` that require grad, scoring each epoch on the held-out
    items `embed_validation()` embeds (labelled `val_labels`); leaves the best epoch's
    weights in `model` (epoch 0: as it came). `frozen`: the frozen encoder's per-query
    figures there, when `model` does not start as the frozen encoder. With an existing
    `checkpoint`, training resumes after its last finished epoch."""

    def validate() -> dict[str, np.ndarray]:
        with torch.no_grad():
            return per_query_metrics(embed_validation(), val_labels)

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
        frozen, best = saved["frozen"], saved["best_queries"]
    else:
        model.eval()
        start = best = validate()
        frozen = start if frozen is None else frozen
        history, best_state, waited = [{"epoch": 0, "loss": None, **_means(start)}], \
            _state(model), 0
    best_row = max(history, key=lambda h: float(h["map"]))

    bar = tqdm(total=settings.epochs, initial=len(history) - 1, unit="epoch",
               desc="training", disable=not progress)
    for epoch in range(len(history), settings.epochs + 1):
        if waited >= settings.patience:
            break
        model.train()
        losses = []
        for batch in batches():
            with torch.autocast(device.type, enabled=amp):
                loss = batch_loss(batch)
            optimiser.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
            losses.append(float(loss.detach()))
        schedule.step()
        model.eval()
        scored = validate()
        row: dict[str, Any] = {"epoch": epoch, "loss": float(np.mean(losses)), **_means(scored)}
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if row["map"] > best_row["map"]:
            best_state, best_row, best, waited = _state(model), row, scored, 0
        else:
            waited += 1
        bar.update()
        bar.set_postfix(loss=f"{row['loss']:.3f}", held_out_map=f"{row['map']:.3f}",
                        best=best_row["epoch"])
        if checkpoint is not None:
            with atomic_write(checkpoint, "wb") as fh:
                torch.save({"model": model.state_dict(), "optimiser": optimiser.state_dict(),
                            "schedule": schedule.state_dict(), "scaler": scaler.state_dict(),
                            "rng": rng.bit_generator.state, "history": history,
                            "best": best_state, "waited": waited, "frozen": frozen,
                            "best_queries": best}, fh)
    bar.close()
    model.load_state_dict(best_state)
    return Fitted(history, compare_to_frozen(frozen, best, val_labels, int(best_row["epoch"])))
