"""Judgements for image folders users already have, written as `queries.jsonl` + `qrels.txt`
beside nothing else: the images stay where they are and the folder is indexed as is.

- class-per-folder: `ROOT/<class>/<image>`; every image queries, its class-mates are
  relevant (grade 1). The query image is in the database too, so evaluate with the run's
  self-match removed, or use `lookalike evaluate --labelled ROOT` (leave-one-out).
- revisited Oxford/Paris: the `gnd_r*.pkl` ground truth (`revisited_judgements`).
- UKBench-style groups: images sorted by name form groups of `group_size` consecutive images
  (UKBench: 4 views of one object); every image queries, its group is relevant (grade 1).
"""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path
from typing import Any

from lookalike.atomic import atomic_write
from lookalike.errors import LookalikeError
from lookalike.folder import scan_images
from lookalike.images import decode


def _write(out: Path, root: Path, groups: dict[str, list[str]]) -> Path:
    """One query per image, relevant = the other members of its group."""
    with atomic_write(out / "queries.jsonl") as queries, atomic_write(out / "qrels.txt") as qrels:
        for members in groups.values():
            for image_id in members:
                qid = image_id.replace("/", "_")
                queries.write(json.dumps({"id": qid, "image": str((root / image_id).resolve()),
                                          "crop": None}) + "\n")
                qrels.writelines(f"{qid} 0 {other} 1\n" for other in members
                                 if other != image_id)
    return out


def class_folder_judgements(root: Path, out: Path) -> Path:
    groups: dict[str, list[str]] = {}
    for image_id in scan_images(root):
        if "/" in image_id:
            groups.setdefault(image_id.split("/", 1)[0], []).append(image_id)
    if len(groups) < 2:
        raise LookalikeError(f"{root}: expected images in at least two class subfolders")
    return _write(out, root, groups)


def ukbench_judgements(root: Path, out: Path, group_size: int = 4) -> Path:
    ids = list(scan_images(root))
    if not ids or len(ids) % group_size:
        raise LookalikeError(f"{root}: {len(ids)} images do not form groups of {group_size}")
    return _write(out, root, {str(i): ids[i:i + group_size]
                              for i in range(0, len(ids), group_size)})


class _GroundTruthUnpickler(pickle.Unpickler):
    """Loads the revisited ground truth's lists, dicts and NumPy arrays, and nothing that
    could run code."""

    def find_class(self, module: str, name: str) -> Any:
        numpy_core = module in ("numpy.core.multiarray", "numpy._core.multiarray")
        if not ((module == "numpy" and name in ("ndarray", "dtype"))
                or (numpy_core and name in ("_reconstruct", "scalar"))):
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        return super().find_class(module, name)


def revisited_judgements(root: Path, ground_truth: Path, out: Path, *, easy: int = 5,
                         hard: int = 3) -> Path:
    """Revisited Oxford/Paris (`gnd_roxford5k.pkl`, `gnd_rparis6k.pkl`; images in ROOT as
    `<name>.jpg`). Each query is its image cropped to the landmark's box; easy positives get
    grade `easy`, hard ones `hard`. Junk images are left unjudged (grade 0): the official
    protocol drops them from the ranking instead, so scores are a little lower than published
    ones. Binary metrics at threshold 1 follow the Medium protocol; `--threshold 4` counts
    only the easy positives."""
    try:
        with open(ground_truth, "rb") as handle:
            data = _GroundTruthUnpickler(handle).load()
        names, query_names, truth = data["imlist"], data["qimlist"], data["gnd"]
        if len(truth) != len(query_names):
            raise ValueError(f"{len(query_names)} query names but {len(truth)} entries")
    except OSError as exc:
        raise LookalikeError(f"{ground_truth}: cannot read ({exc.strerror})") from None
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as exc:
        raise LookalikeError(f"{ground_truth}: not a revisited Oxford/Paris ground-truth "
                             f"file ({exc})") from None
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "queries.jsonl") as queries, atomic_write(out / "qrels.txt") as qrels:
        for name, entry in zip(query_names, truth, strict=True):
            image = (root / f"{name}.jpg").resolve()
            crop = _box_inside(entry["bbx"], image) if entry.get("bbx") is not None else None
            queries.write(json.dumps({"id": name, "image": str(image), "crop": crop}) + "\n")
            for key, grade in (("easy", easy), ("hard", hard)):
                qrels.writelines(f"{name} 0 {names[int(i)]}.jpg {grade}\n"
                                 for i in entry.get(key, ()))
    return out


def _box_inside(box: Any, image: Path) -> list[int]:
    """The ground truth's float box, rounded outwards and clipped to the image."""
    width, height = decode(image, draft_size=64).full_size  # the header's size, EXIF applied
    x0, y0, x1, y1 = (float(v) for v in box)
    return [max(0, math.floor(x0)), max(0, math.floor(y0)),
            min(width, math.ceil(x1)), min(height, math.ceil(y1))]
