"""INT8 graphs: an encoder's float32 ONNX graph quantised by ONNX Runtime, for CPUs with
integer dot-product instructions (AVX-512 VNNI, AMX), where INT8 convolutions run several
times faster than float32 ones.

Static quantisation in the QDQ format: weights per output channel (signed), activations per
tensor (unsigned), their ranges calibrated on `CALIBRATION_CROPS` crops of the photos the
package ships (`lookalike/samples`, fixed seed), so that the same weights always give the
same INT8 graph. The graph is cached beside the float32 one, keyed the same way (name with
`:int8`, weights fingerprint), and written atomically.

An INT8 encoder is named `NAME:int8` (`efficientnet_lite0:int8`): the name is part of what
a collection records, so vectors of the two precisions never mix.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.atomic import current_umask
from lookalike.encoders.registry import INT8
from lookalike.errors import LookalikeError

CALIBRATION_CROPS = 256
CALIBRATION_METHOD = "MinMax"  # Entropy and Percentile measured the same: RESULTS.md
SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def is_int8(name: str) -> bool:
    return INT8 in name


def float_name(name: str) -> str:
    """The float32 encoder an INT8 one is made from (`a:int8@160` -> `a@160`)."""
    return name.replace(INT8, "")


def calibration_pixels(size: int, count: int = CALIBRATION_CROPS, seed: int = 0
                       ) -> np.ndarray:
    """(count, size, size, 3) uint8: square crops of the shipped photos at 20-100 % of
    their short side, half of them mirrored, as an encoder's input is prepared."""
    from PIL import Image, ImageOps

    photos = [Image.open(path).convert("RGB") for path in sorted(SAMPLES.glob("*.jpg"))]
    rng = np.random.default_rng(seed)
    out = np.empty((count, size, size, 3), np.uint8)
    for i in range(count):
        photo = photos[i % len(photos)]
        side = int(min(photo.size) * rng.uniform(0.2, 1.0))
        x = int(rng.integers(0, photo.width - side + 1))
        y = int(rng.integers(0, photo.height - side + 1))
        crop = photo.crop((x, y, x + side, y + side)).resize((size, size),
                                                             Image.Resampling.BILINEAR)
        out[i] = np.asarray(ImageOps.mirror(crop) if rng.random() < 0.5 else crop)
    return out


class _Pixels:
    """ONNX Runtime's calibration reader over prepared pixels, a batch at a time."""

    def __init__(self, input_name: str, pixels: np.ndarray, batch: int = 16) -> None:
        self.batches = iter([{input_name: pixels[i:i + batch]}
                             for i in range(0, len(pixels), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def _before_first_conv(graph: Any) -> list[str]:
    """The pixel normalisation ahead of the network: left in float32, since quantised it
    cost a third of the INT8 graph's time (a requantised multiply over every input pixel)
    and gained nothing."""
    names = []
    for node in graph.node:  # in topological order
        if node.op_type == "Conv":
            break
        names.append(node.name)
    return names


def quantize_graph(float_graph: Path, out: Path, size: int,
                   method: str = CALIBRATION_METHOD) -> Path:
    """Write the INT8 version of `float_graph` (inputs `size` px) to `out`, unless there."""
    if out.is_file():
        return out
    try:
        import onnx
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:  # pragma: no cover - both are dependencies
        raise LookalikeError(f"INT8 needs onnx and onnxruntime: {exc}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as work:
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(float_graph), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared)).graph
        made = Path(work) / "int8.onnx"
        options: dict[str, Any] = {"ActivationSymmetric": False, "WeightSymmetric": True}
        logging.disable(logging.WARNING)  # per-channel notes on every layer norm of a ViT
        try:
            quantize_static(str(prepared), str(made),
                            _Pixels(graph.input[0].name, calibration_pixels(size)),
                            quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=getattr(CalibrationMethod, method),
                            nodes_to_exclude=_before_first_conv(graph),
                            extra_options=options)
        finally:
            logging.disable(logging.NOTSET)
        os.chmod(made, 0o666 & ~current_umask())  # a cache others may share
        os.replace(made, out)
    return out
