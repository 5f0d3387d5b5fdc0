"""Judgements for image folders users already have, written as `queries.jsonl` + `qrels.txt`
beside nothing else: the images stay where they are and the folder is indexed as is.

- class-per-folder: `ROOT/<class>/<image>`; every image queries, its class-mates are
  relevant (grade 1). The query image is in the database too, so evaluate with the run's
  self-match removed, or use `lookalike evaluate --labelled ROOT` (leave-one-out).
- UKBench-style groups: images sorted by name form groups of `group_size` consecutive images
  (UKBench: 4 views of one object); every image queries, its group is relevant (grade 1).
"""

from __future__ import annotations

import json
from pathlib import Path

from lookalike.atomic import atomic_write
from lookalike.collection import scan_images
from lookalike.errors import LookalikeError


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
