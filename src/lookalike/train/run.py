"""From images and a notion of "similar" to a trained model folder, in either mode.

Positives come from class subfolders (same folder = similar), or from graded judgements:
a query image and every database image it judged at least `threshold` are similar, and
so, transitively, are images that share such a partner (the connected components of the
judgement graph: instance groups at a high threshold, categories at a low one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lookalike.encoders.preprocess import Preprocess
from lookalike.errors import LookalikeError
from lookalike.train.finetune import FinetuneConfig
from lookalike.train.head import HeadConfig
from lookalike.trec import Query

Mode = Literal["head", "finetune"]


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


def validation_split(labels: np.ndarray, fraction: float, rng: np.random.Generator
                     ) -> np.ndarray:
    """Which items validate, so that each keeps a positive beside it: a `fraction` (at
    least two, leaving two to train on) of every label with 4 items or more, and whole
    pairs and triples (instance groups) with probability `fraction`."""
    val = np.zeros(len(labels), bool)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        if len(members) >= 4:
            val[members[:min(len(members) - 2, max(2, round(fraction * len(members))))]] = True
        elif rng.random() < fraction:
            val[members] = True
    return val


def train_model(paths: Sequence[Path], labels: np.ndarray, out: Path, *,
                base: str = "efficientnet_lite0", mode: Mode = "head",
                config: HeadConfig | FinetuneConfig | None = None,
                val_fraction: float = 0.1, resume: bool = False, progress: bool = True,
                seed: int = 0) -> list[dict[str, Any]]:
    """Hold `val_fraction` of the images out for validation, train, and write the model
    folder `out` with its loss/metric curve. A checkpoint is written to `out` after each
    epoch; `resume` continues from it, otherwise training starts afresh."""
    from lookalike.encoders.model_folder import save_model
    from lookalike.train.finetune import finetune
    from lookalike.train.head import plot_history, train_head

    val = validation_split(labels, val_fraction, np.random.default_rng(seed))
    if val.sum() < 2 or (~val).sum() < 2:
        raise LookalikeError(f"{len(labels)} images are too few to hold {val_fraction:.0%} "
                             "out for validation")
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / "checkpoint.pt"
    if not resume:
        checkpoint.unlink(missing_ok=True)
    if mode == "head":
        from lookalike.encoders import create_encoder

        head_cfg = config if isinstance(config, HeadConfig) else HeadConfig()
        vectors = create_encoder(base).encode(list(paths), progress=progress)
        head, history = train_head(vectors[~val], labels[~val], vectors[val], labels[val],
                                   config=head_cfg, checkpoint=checkpoint, progress=progress)
        save_model(out, base, head, history, head_cfg)
    elif mode == "finetune":
        from lookalike.encoders.encoder import resolve_spec

        tune_cfg = config if isinstance(config, FinetuneConfig) else FinetuneConfig()
        spec = resolve_spec(base)
        pixels = _pixels(paths, spec.preprocess, progress)
        backbone, history = finetune(spec, pixels[~val], labels[~val], pixels[val],
                                     labels[val], config=tune_cfg, checkpoint=checkpoint,
                                     progress=progress)
        save_model(out, base, None, history, tune_cfg, backbone=backbone)
    else:
        raise LookalikeError(f"mode must be 'head' or 'finetune', got {mode!r}")
    plot_history(history, out / "curve.png")
    checkpoint.unlink(missing_ok=True)
    return history
