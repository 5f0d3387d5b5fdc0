"""From images and a notion of "similar" to a trained model folder, in any mode.

Positives come from class subfolders (same folder = similar), or from graded judgements:
a query image and every database image it judged at least `threshold` are similar, and
so, transitively, are images that share such a partner (the connected components of the
judgement graph: instance groups at a high threshold, categories at a low one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np

from lookalike.encoders.preprocess import Preprocess
from lookalike.errors import LookalikeError
from lookalike.train.finetune import FinetuneConfig
from lookalike.train.head import HeadConfig
from lookalike.train.loop import Fitted
from lookalike.train.validation import held_out_groups
from lookalike.trec import Query

Mode = Literal["head", "self-supervised", "finetune"]


def folder_labels(root: Path) -> tuple[list[Path], np.ndarray]:
    """Every image under `root`, labelled by its subfolder."""
    from lookalike.folder import scan_images

    images = scan_images(root)
    names = [Path(i).parent.as_posix() for i in images]
    if len(set(names)) < 2:
        raise LookalikeError(f"{root}: needs images in at least two labelled subfolders")
    return list(images.values()), np.unique(names, return_inverse=True)[1]


def judged_labels(root: Path, queries: Sequence[Query], qrels: Mapping[str, Mapping[str, int]],
                  threshold: int = 1) -> tuple[list[Path], np.ndarray]:
    """The query images and the judged images under `root` (ids relative to it), labelled
    by connected component of "judged at least `threshold`"; images without any such
    partner are left out (they have no positive)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nodes: dict[Path, int] = {}
    edges: list[tuple[int, int]] = []
    for query in queries:
        for doc, grade in qrels.get(query.id, {}).items():
            if grade >= threshold and (root / doc).is_file():
                a = nodes.setdefault(query.image.resolve(), len(nodes))
                edges.append((a, nodes.setdefault((root / doc).resolve(), len(nodes))))
    if not edges:
        raise LookalikeError(f"no judgement of grade >= {threshold} pairs a query with an "
                             f"image under {root}")
    rows, cols = np.array(edges).T
    graph = coo_matrix((np.ones(len(edges)), (rows, cols)), shape=(len(nodes), len(nodes)))
    _, labels = connected_components(graph, directed=False)
    if labels.max() < 1:
        raise LookalikeError(f"every judged image is similar to every other at grade >= "
                             f"{threshold}: nothing to contrast; raise the threshold")
    return list(nodes), labels


def _pixels(paths: Sequence[Path], resize: Preprocess, progress: bool) -> np.ndarray:
    """Decode and resize every image once, in parallel, as (N, S, S, 3) uint8."""
    from tqdm import tqdm

    from lookalike.images import decode

    def load(path: Path) -> np.ndarray:
        return resize(decode(path, draft_size=resize.size).image)

    with ThreadPoolExecutor() as pool:
        out = list(tqdm(pool.map(load, paths), total=len(paths), unit="img",
                        disable=not progress, desc="decoding"))
    return np.stack(out)


def train_model(paths: Sequence[Path], labels: np.ndarray | None, out: Path, *,
                base: str = "efficientnet_lite0", mode: Mode = "head",
                config: HeadConfig | FinetuneConfig | None = None,
                val_fraction: float = 0.1, resume: bool = False, progress: bool = True,
                seed: int = 0) -> Fitted:
    """Hold whole groups (about `val_fraction` of the images) out for validation, train,
    and write the model folder `out` with its loss/metric curve and the held-out
    comparison with the frozen encoder. When no epoch beats the frozen encoder there, the
    folder holds the frozen encoder unchanged (`Fitted.held_out.fell_back`).

    `labels` may be None only in self-supervised mode: held-out images then validate by
    finding an augmented view of themselves. A checkpoint is written to `out` after each
    epoch; `resume` continues from it, otherwise training starts afresh."""
    from lookalike.encoders.model_folder import save_model
    from lookalike.train.finetune import finetune
    from lookalike.train.head import plot_history, train_head

    rng = np.random.default_rng(seed)
    if labels is None and mode != "self-supervised":
        raise LookalikeError(f"{mode} training needs labels (subfolders or judgements)")
    val = (held_out_groups(labels, val_fraction, rng) if labels is not None else
           _held_out_images(len(paths), val_fraction, rng))
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / "checkpoint.pt"
    if not resume:
        for written in out.glob("checkpoint*.pt"):
            written.unlink()
    head_cfg = config if isinstance(config, HeadConfig) else HeadConfig()
    if mode == "head" and labels is not None:
        from lookalike.encoders import create_encoder

        vectors = create_encoder(base).encode(list(paths), progress=progress)
        head, fitted = train_head(vectors[~val], labels[~val], vectors[val], labels[val],
                                  config=head_cfg, checkpoint=checkpoint, progress=progress)
        save_model(out, base, head, fitted.history, head_cfg,
                   held_out=fitted.held_out.to_dict())
    elif mode == "self-supervised":
        train_x, views, val_x, val_y = _self_supervised_features(base, paths, labels, val, rng,
                                                                 progress)
        head, fitted = train_head(train_x, None, val_x, val_y, config=head_cfg, views=views,
                                  checkpoint=checkpoint, progress=progress)
        save_model(out, base, head, fitted.history, head_cfg,
                   held_out=fitted.held_out.to_dict())
    elif mode == "finetune" and labels is not None:
        from lookalike.encoders.encoder import resolve_spec

        tune_cfg = config if isinstance(config, FinetuneConfig) else FinetuneConfig()
        spec = resolve_spec(base)
        pixels = _pixels(paths, spec.preprocess, progress)
        backbone, fitted = finetune(spec, pixels[~val], labels[~val], pixels[val],
                                    labels[val], config=tune_cfg, checkpoint=checkpoint,
                                    progress=progress)
        save_model(out, base, None, fitted.history, tune_cfg, backbone=backbone,
                   held_out=fitted.held_out.to_dict())
    else:
        raise LookalikeError(f"mode must be 'head', 'self-supervised' or 'finetune', got "
                             f"{mode!r}")
    plot_history(fitted.history, out / "curve.png")
    for written in out.glob("checkpoint*.pt"):
        written.unlink()
    return fitted


def _held_out_images(count: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Self-supervised without labels: a `fraction` of the images (at least 8) validate."""
    held = max(8, round(fraction * count))
    if count - held < 8:
        raise LookalikeError(f"{count} images are too few for self-supervised training "
                             "(at least 16: 8 to train on, 8 to validate)")
    val = np.zeros(count, bool)
    val[rng.permutation(count)[:held]] = True
    return val


def _self_supervised_features(base: str, paths: Sequence[Path], labels: np.ndarray | None,
                              val: np.ndarray, rng: np.random.Generator, progress: bool
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two augmented views of each training image (no labels used), and the held-out
    items: their groups when labelled, else each image with one augmented view of it."""
    from PIL import Image

    from lookalike.encoders import create_encoder
    from lookalike.images import decode
    from lookalike.train.head import augmented_view

    encoder = create_encoder(base)
    train = [p for p, held in zip(paths, val, strict=True) if not held]

    def views(chosen: Sequence[Path]) -> np.ndarray:
        size = 2 * encoder.preprocess.size
        images: list[Image.Image] = [augmented_view(decode(p, draft_size=size).image, rng)
                                     for p in chosen]
        return encoder.encode(images, progress=progress)

    held = [p for p, v in zip(paths, val, strict=True) if v]
    if labels is not None:
        val_x, val_y = encoder.encode(held, progress=progress), labels[val]
    else:
        numbers = np.arange(len(held))
        val_x = np.concatenate([encoder.encode(held, progress=progress), views(held)])
        val_y = np.concatenate([numbers, numbers])
    return views(train), views(train), val_x, val_y
