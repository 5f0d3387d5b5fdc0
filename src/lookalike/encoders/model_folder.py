"""A trained model as a folder that `create_encoder(folder)` and `--model folder` load like a
shipped encoder: the base encoder's name, the fine-tuned backbone weights and/or the
projection head, and how it was trained. Backbone and head export to one ONNX graph."""

from __future__ import annotations

import json
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lookalike.atomic import atomic_write
from lookalike.errors import LookalikeError

if TYPE_CHECKING:  # PyTorch loads only when a model is saved or loaded
    import torch
    from torch import nn

    from lookalike.encoders.heads import ProjectionHead

MODEL_FILE = "lookalike-model.json"


def save_model(folder: Path, base_encoder: str, head: ProjectionHead | None,
               history: list[dict[str, Any]], config: Any, *,
               backbone: nn.Module | None = None,
               held_out: dict[str, Any] | None = None) -> None:
    """Write the weights first and the description last, each atomically, so a folder
    with a description is complete. `held_out`: how it compares with the frozen encoder on
    groups it never trained on."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"base": base_encoder, "head": None, "backbone": None,
                            "training": asdict(config) if is_dataclass(config)
                            and not isinstance(config, type) else config,
                            "history": history, "held_out": held_out}
    if head is not None:
        with atomic_write(folder / "head.pt", "wb") as fh:
            torch.save(head.state_dict(), fh)
        meta["head"] = head.config()
    if backbone is not None:
        with atomic_write(folder / "backbone.pt", "wb") as fh:
            torch.save(backbone.state_dict(), fh)
        meta["backbone"] = "backbone.pt"
    with atomic_write(folder / MODEL_FILE, "w") as fh:
        json.dump(meta, fh, indent=2)


def is_model_folder(path: Path) -> bool:
    return (path / MODEL_FILE).is_file()


def load_model(folder: Path) -> tuple[str, dict[str, torch.Tensor] | None, ProjectionHead | None]:
    """(base encoder name, fine-tuned backbone weights or None, trained head or None)."""
    import torch

    from lookalike.encoders.heads import ProjectionHead

    try:
        meta = json.loads((folder / MODEL_FILE).read_text())
        head = None
        if meta.get("head"):
            head = ProjectionHead(**meta["head"])
            head.load_state_dict(torch.load(folder / "head.pt", weights_only=True))
            head.eval()
        backbone = (torch.load(folder / meta["backbone"], weights_only=True)
                    if meta.get("backbone") else None)
        return str(meta["base"]), backbone, head
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise LookalikeError(f"{folder}: not a readable trained model ({exc})") from None
