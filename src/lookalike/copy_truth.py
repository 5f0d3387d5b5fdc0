"""Judged copy groups, and how well reported duplicate groups agree with them.

The judgements are a CSV with columns `image,group[,family]`: images of one group derive
from one original, so every pair of them is a copy pair and every other pair is not; an
empty group marks an image that is no copy of anything in the set. `lookalike dataset
copies` writes one (`groups.csv`); users write theirs to measure or calibrate on their own
photos.

Quality is counted over pairs, as the near-duplicate literature does: a reported group of n
images claims all n(n-1)/2 of its pairs, so a wrong merge costs precision for every pair it
joins, and a copy reached only through another copy still counts as found.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lookalike.errors import LookalikeError

Pair = tuple[str, str]


def pair(a: str, b: str) -> Pair:
    return (a, b) if a < b else (b, a)


@dataclass(frozen=True)
class Truth:
    """Which original each image derives from (`group`, None: none in the set) and what
    was done to it (`family`: free text, `original` for the original itself)."""

    group: dict[str, str | None]
    family: dict[str, str]

    def is_copy(self, a: str, b: str) -> bool:
        return self.group.get(a) is not None and self.group.get(a) == self.group.get(b)

    def copy_pairs(self) -> set[Pair]:
        members: dict[str, list[str]] = {}
        for image, group in self.group.items():
            if group is not None:
                members.setdefault(group, []).append(image)
        return {pair(a, b) for images in members.values() for a in images for b in images
                if a < b}

    def family_of(self, copy_pair: Pair) -> str:
        """A pair's family: the copy's, for an original and its copy; `copy-copy` else."""
        a, b = copy_pair
        families = {self.family.get(a, ""), self.family.get(b, "")}
        if "original" in families and len(families) == 2:
            return (families - {"original"}).pop()
        return "copy-copy"


def read_truth(path: Path) -> Truth:
    group: dict[str, str | None] = {}
    family: dict[str, str] = {}
    try:
        with path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                group[row["image"]] = row["group"] or None
                family[row["image"]] = row.get("family") or ""
    except (OSError, KeyError, csv.Error, UnicodeDecodeError) as error:
        raise LookalikeError(f"{path}: not a groups file with columns image,group "
                             f"({error})") from None
    if not group:
        raise LookalikeError(f"{path}: no judged images")
    return Truth(group, family)


@dataclass(frozen=True)
class Quality:
    precision: float
    recall: float
    reported: int  # pairs claimed by the reported groups
    wrong: int
    recall_by_family: dict[str, float]
    pairs_by_family: dict[str, int]

    @property
    def f1(self) -> float:
        total = self.precision + self.recall
        return 2 * self.precision * self.recall / total if total else 0.0


def linked(pairs: Iterable[tuple[str, str]]) -> list[list[str]]:
    """The groups that pairs link, each sorted, largest first (union-find: two crops of
    one photo belong together when the photo or another copy links them)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]  # path halving
            x = parent[x]
        return x

    for a, b in pairs:
        parent[find(a)] = find(b)
    members: dict[str, list[str]] = {}
    for image in sorted(parent):
        members.setdefault(find(image), []).append(image)
    return sorted(members.values(), key=lambda group: (-len(group), group[0]))


def claimed_pairs(groups: Iterable[Sequence[str]]) -> set[Pair]:
    return {pair(a, b) for images in groups for i, a in enumerate(images)
            for b in images[i + 1:]}


def quality(groups: Iterable[Sequence[str]], truth: Truth) -> Quality:
    """Pairwise precision and recall of `groups` (lists of image ids) against `truth`,
    recall also by the family of the copy. Images the truth does not know are ignored."""
    claimed = {p for p in claimed_pairs(groups) if p[0] in truth.group and p[1] in truth.group}
    true = truth.copy_pairs()
    found: dict[str, list[bool]] = {}
    for copy_pair in true:
        found.setdefault(truth.family_of(copy_pair), []).append(copy_pair in claimed)
    right = len(claimed & true)
    return Quality(precision=right / len(claimed) if claimed else 1.0,
                   recall=right / len(true) if true else 1.0,
                   reported=len(claimed), wrong=len(claimed) - right,
                   recall_by_family={f: sum(v) / len(v) for f, v in sorted(found.items())},
                   pairs_by_family={f: len(v) for f, v in sorted(found.items())})
