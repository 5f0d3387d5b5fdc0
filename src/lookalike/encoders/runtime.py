"""Where the forward pass runs: ONNX Runtime on CPU (the fast path), PyTorch on GPU.

The ONNX graph is exported once per (encoder, weights fingerprint) and cached under the
user's cache dir, written atomically so concurrent or interrupted exports never leave a
broken file.
"""

from __future__ import annotations

import copy
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

import numpy as np

from lookalike.atomic import current_umask

if TYPE_CHECKING:
    from torch import nn

_EXPORT_VERSION = 3  # bump when the exported graph changes for the same weights
_QUANTIZE_VERSION = 1  # ... and this when an INT8 graph is made differently from it


def cache_dir() -> Path:
    """`$LOOKALIKE_CACHE`, else `$XDG_CACHE_HOME/lookalike`, else `~/.cache/lookalike`."""
    if env := os.environ.get("LOOKALIKE_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lookalike"


class Backend(Protocol):
    name: str

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """(B, S, S, 3) uint8 -> (B, D) float32 unit rows."""
        ...

    def run(self, pixels: np.ndarray) -> list[np.ndarray]:
        """Every output of the network, as float32 arrays."""
        ...


class TorchBackend:
    name = "torch"

    def __init__(self, module: nn.Module, device: str) -> None:
        import torch

        self.device = torch.device(device)
        self.module = module.to(self.device).eval()

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self.run(pixels)[0]

    def run(self, pixels: np.ndarray) -> list[np.ndarray]:
        import torch

        batch = torch.from_numpy(pixels).to(self.device, non_blocking=True)
        with torch.inference_mode(), torch.autocast(self.device.type,
                                                    enabled=self.device.type == "cuda"):
            out = self.module(batch)
        outputs = out if isinstance(out, tuple) else (out,)
        return [o.float().cpu().numpy() for o in outputs]


class OnnxBackend:
    name = "onnx"

    def __init__(self, path: Path, threads: int | None = None, *, spinning: bool = True
                 ) -> None:
        """`spinning=False` for callers that run at once (a server's threads): the pool's
        threads then wait instead of spinning, which on two cores measured 280 images/s from
        two callers against 235 (and 220 against 280 from one caller alone)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self.run(pixels)[0]

    def run(self, pixels: np.ndarray) -> list[np.ndarray]:
        outputs = self.session.run(None, {self.input_name: pixels})
        return [np.asarray(out, dtype=np.float32) for out in outputs]


def default_threads() -> int:
    """`OMP_NUM_THREADS` when set (the usual knob, which Ray sets to an actor's CPUs), else
    the CPUs this process may run on."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)


def onnx_path(encoder_name: str, weights_fingerprint: str) -> Path:
    safe = encoder_name.replace(":", "-").replace("/", "_")
    version = f"v{_EXPORT_VERSION}" + (f"q{_QUANTIZE_VERSION}" if ":int8" in encoder_name
                                       else "")
    return cache_dir() / "onnx" / f"{safe}-{weights_fingerprint[:16]}-{version}.onnx"


def freeze_same_padding(module: nn.Module, size: int) -> nn.Module:
    """Replace timm's TF-style 'same' convolutions, which compute their padding from the
    input shape on every call, by a fixed pad and a plain convolution for `size` px inputs.

    The dynamic version exports as shape arithmetic that ONNX Runtime cannot fold (about
    30 % slower for EfficientNet-Lite on CPU); a constant pad fuses into the convolution.
    """
    import torch
    from timm.layers import Conv2dSame
    from timm.layers.padding import get_same_padding
    from torch import nn

    shapes: dict[str, tuple[int, int]] = {}
    hooks = [
        sub.register_forward_pre_hook(
            lambda _m, args, name=name: shapes.__setitem__(name, tuple(args[0].shape[-2:]))
        )
        for name, sub in module.named_modules() if isinstance(sub, Conv2dSame)
    ]
    with torch.no_grad():
        module(torch.zeros(1, size, size, 3, dtype=torch.uint8))
    for hook in hooks:
        hook.remove()
    for name, (height, width) in shapes.items():
        conv = cast(nn.Conv2d, module.get_submodule(name))
        (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
        pad_h = get_same_padding(height, kh, sh, dh)
        pad_w = get_same_padding(width, kw, sw, dw)
        plain = nn.Conv2d(conv.in_channels, conv.out_channels, (kh, kw), (sh, sw), 0,
                          (dh, dw), conv.groups, conv.bias is not None)
        plain.load_state_dict(conv.state_dict())
        pad = nn.ZeroPad2d((pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        parent_name, _, attr = name.rpartition(".")
        setattr(module.get_submodule(parent_name), attr, nn.Sequential(pad, plain))
    return module


def export_onnx(module: nn.Module, size: int, path: Path,
                outputs: tuple[str, ...] = ("embedding",)) -> Path:
    """Export `module` (batch dimension dynamic) to `path` unless it is already there."""
    if path.is_file():
        return path
    import torch

    module = freeze_same_padding(copy.deepcopy(module).cpu().eval(), size)
    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(2, size, size, 3, dtype=torch.uint8)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".onnx.tmp")
    os.fchmod(fd, 0o666 & ~current_umask())  # a cache others may share, as `open` makes it
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, (dummy,), tmp, input_names=["pixels"], output_names=list(outputs),
                dynamic_axes={name: {0: "batch"} for name in ("pixels", *outputs)},
                opset_version=17, dynamo=False,
            )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
