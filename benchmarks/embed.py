"""End-to-end indexing throughput vs the bare model and a naive loop, side by side.

    .venv/bin/python benchmarks/embed.py [--images 320] [--repeats 3]

(a) bare ONNX Runtime forward pass on pre-decoded tensors (the ceiling);
(b) the loop a user would write: PIL open -> timm transforms -> eager PyTorch, batch 32;
lookalike: JPEG files on disk -> vectors committed in a fresh collection.
Prints images/s medians and the ratios. Targets: lookalike >= 0.8 x (a) and >= 3 x (b).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import timm.data
import torch
from PIL import Image, ImageEnhance

from lookalike import Collection, create_encoder
from lookalike.demo import samples_dir

BATCH = 32


def make_jpegs(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """Camera-like JPEGs (1024 px on the long side) cut and recoloured from the samples."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sources = [Image.open(p).convert("RGB") for p in sorted(samples_dir().glob("*.jpg"))]
    paths = []
    for i in range(count):
        path = folder / f"img{i:05d}.jpg"
        paths.append(path)
        if path.exists():
            continue
        img = sources[i % len(sources)]
        w, h = img.size
        x0, y0 = int(rng.integers(0, w // 4)), int(rng.integers(0, h // 4))
        crop = img.crop((x0, y0, x0 + w * 3 // 4, y0 + h * 3 // 4)).resize((1024, 768))
        ImageEnhance.Color(crop).enhance(float(rng.uniform(0.6, 1.4))).save(path, quality=90)
    return paths


def bare_onnx(encoder, pixels: np.ndarray) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    for i in range(0, len(pixels), BATCH):
        encoder.embed_pixels(pixels[i:i + BATCH])
    return len(pixels) / (time.perf_counter() - start)


def naive_loop(model: torch.nn.Module, transform, paths: list[Path]) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(paths), BATCH):
            batch = torch.stack([transform(Image.open(p).convert("RGB"))
                                 for p in paths[i:i + BATCH]])
            model(batch)
    return len(paths) / (time.perf_counter() - start)


def end_to_end(encoder, folder: Path, count: int) -> float:  # type: ignore[no-untyped-def]
    with tempfile.TemporaryDirectory() as tmp:
        coll = Collection.create(Path(tmp) / "coll", encoder=encoder)
        start = time.perf_counter()
        report = coll.index_folder(folder, batch_size=BATCH)
        elapsed = time.perf_counter() - start
        assert len(report.added) == count, report.summary()
        coll.close()
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path(__file__).parent / "data" / "jpegs")
    args = parser.parse_args()

    paths = make_jpegs(args.data, args.images)
    folder = args.data.parent / f"jpegs-{args.images}"
    folder.mkdir(exist_ok=True)
    for p in paths:
        link = folder / p.name
        if not link.exists():
            link.symlink_to(p.resolve())
    encoder = create_encoder("efficientnet_lite0")
    pixels = np.concatenate([encoder.prepare(p).pixels for p in paths])
    # The same weights as a user would run them: float NCHW input, eager PyTorch.
    eager = create_encoder("efficientnet_lite0", backend="torch").module[1].eval()
    net = eager.net.net
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=net))

    runs: dict[str, list[float]] = {"(a) bare ONNX Runtime": [], "(b) naive PIL+timm+torch": [],
                                    "lookalike index (end to end)": []}
    for _ in range(args.repeats):  # interleaved, so machine noise hits all three alike
        runs["(a) bare ONNX Runtime"].append(bare_onnx(encoder, pixels))
        runs["(b) naive PIL+timm+torch"].append(naive_loop(eager, transform, paths))
        runs["lookalike index (end to end)"].append(end_to_end(encoder, folder, len(paths)))

    med = {k: statistics.median(v) for k, v in runs.items()}
    ours = med["lookalike index (end to end)"]
    print(f"efficientnet_lite0, {len(paths)} JPEGs 1024x768, batch {BATCH}, "
          f"{args.repeats} repeats, torch threads {torch.get_num_threads()}\n")
    print("| pipeline | images/s (median) | runs | lookalike / this |")
    print("|---|---:|---|---:|")
    for name, values in runs.items():
        shown = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {name} | {med[name]:.1f} | {shown} | {ours / med[name]:.2f} x |")


if __name__ == "__main__":
    main()
