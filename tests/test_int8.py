"""INT8 encoders: made the same way each time, close to float32, a precision of their own
in a collection, and still seeing what the float32 network sees."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch

from lookalike import Collection, LookalikeError, create_encoder
from lookalike.encoders import Encoder
from lookalike.encoders.quantize import calibration_pixels, quantize_graph
from lookalike.encoders.runtime import OnnxBackend, export_onnx

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def int8() -> Encoder:
    return create_encoder("efficientnet_lite0:int8")


def test_int8_vectors_stay_close_to_float32(int8: Encoder, encoder: Encoder,
                                            samples: list[Path]) -> None:
    assert int8.backend.name == "onnx" and int8.describe()["name"] == "efficientnet_lite0:int8"
    assert int8.fingerprint == encoder.fingerprint  # the same weights, another precision
    cosine = np.sum(int8.encode(samples) * encoder.encode(samples), axis=1)
    assert np.median(cosine) >= 0.98 and cosine.min() >= 0.95


def test_int8_export_is_deterministic(tmp_path: Path, encoder: Encoder) -> None:
    assert np.array_equal(calibration_pixels(64, 8), calibration_pixels(64, 8))
    made = export_onnx(encoder.module, 224, tmp_path / "float.onnx")
    first = quantize_graph(made, tmp_path / "one.onnx", 224)
    second = quantize_graph(made, tmp_path / "two.onnx", 224)
    assert first.read_bytes() == second.read_bytes()
    assert first.stat().st_size < made.stat().st_size / 3  # INT8 weights


def test_a_collection_refuses_the_other_precision(tmp_path: Path, int8: Encoder,
                                                  encoder: Encoder, samples: list[Path]
                                                  ) -> None:
    with Collection.create(tmp_path / "coll", encoder=int8) as coll:
        coll.index_folder(samples[0].parent)
    with pytest.raises(LookalikeError, match="efficientnet_lite0:int8"):
        Collection.open(tmp_path / "coll", encoder=encoder)
    with Collection.open(tmp_path / "coll") as coll:  # queries embedded at its precision
        assert coll.encoder.name == "efficientnet_lite0:int8"
        assert coll.search(samples[3], k=1)[0].id == samples[3].name


@pytest.mark.parametrize("name", ["efficientnet_lite0", "mobilenet_v2"])
def test_the_int8_classifier_still_sees_a_cat(name: str, tmp_path: Path,
                                              samples: list[Path]) -> None:
    encoder = create_encoder(name, backend="torch")
    to_input, embedder = cast(Any, encoder.module)  # PixelNormalize, L2Normalized(head)
    classifier = torch.nn.Sequential(to_input, embedder.net.net)  # the whole ImageNet network
    made = export_onnx(classifier, 224, tmp_path / "float.onnx", outputs=("logits",))
    logits = OnnxBackend(quantize_graph(made, tmp_path / "int8.onnx", 224)).run(
        encoder.prepare(next(p for p in samples if p.stem == "chelsea")).pixels)[0]
    assert int(logits.argmax()) in IMAGENET_CATS
