"""The file formats other tools read and write: query lists (JSONL) and TREC run files."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lookalike.atomic import atomic_write
from lookalike.errors import LookalikeError
from lookalike.images import Box, validate_box

if TYPE_CHECKING:  # collection imports PyTorch; reading files should not
    from lookalike.hits import Hit


@dataclass(frozen=True)
class Query:
    """One line of a queries file: `{"id": "q1", "image": "q.jpg", "crop": [x0, y0, x1, y1]}`."""

    id: str
    image: Path
    crop: Box | None = None


def read_queries(path: str | Path) -> list[Query]:
    """Read a JSONL query file; `image` is relative to the file's own folder unless absolute."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise LookalikeError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise LookalikeError(f"{path}:1: not a UTF-8 JSONL text file") from None
    queries: list[Query] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(line)
            qid, image = str(obj["id"]), Path(obj["image"])
        except (ValueError, KeyError, TypeError) as exc:
            raise LookalikeError(f"{where}: expected {{\"id\": ..., \"image\": ...}} ({exc})"
                                 ) from None
        if not qid or any(c.isspace() for c in qid):
            raise LookalikeError(f"{where}: query id must be non-empty without spaces")
        if qid in seen:
            raise LookalikeError(f"{where}: duplicate query id {qid!r}")
        seen.add(qid)
        crop = obj.get("crop")
        if crop is not None:
            if not isinstance(crop, list) or len(crop) != 4:
                raise LookalikeError(f"{where}: crop must be [x0, y0, x1, y1] or null")
            crop = validate_box(crop, (2**31, 2**31), where)
        queries.append(Query(qid, image if image.is_absolute() else path.parent / image, crop))
    return queries


def write_run(path: str | Path, results: Mapping[str, Sequence[Hit]], tag: str = "lookalike"
              ) -> None:
    """Write `QID Q0 DOCID RANK SCORE TAG` lines, atomically. trec_eval orders a query's
    documents by score, not rank, so where a re-ranking (`verify`) put a lower score above a
    higher one, the scores written are lowered to keep the order (by 1e-6 a step)."""
    with atomic_write(Path(path)) as fh:
        for qid, hits in results.items():
            ceiling = float("inf")
            for hit in hits:
                if any(c.isspace() for c in hit.id):
                    raise LookalikeError(f"{hit.id!r}: a TREC run cannot hold ids with spaces")
                score = min(round(hit.score, 6), ceiling)
                ceiling = score - 1e-6
                fh.write(f"{qid} Q0 {hit.id} {hit.rank} {score:.6f} {tag}\n")


def _fields(path: Path, expected: int, shape: str) -> list[tuple[str, list[str]]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LookalikeError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise LookalikeError(f"{path}: not a UTF-8 text file") from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != expected:
            raise LookalikeError(f"{path}:{number}: expected {shape}, got {line.strip()!r}")
        rows.append((f"{path}:{number}", parts))
    return rows


def read_run(path: str | Path) -> dict[str, dict[str, float]]:
    """A TREC run, `QID Q0 DOCID RANK SCORE TAG`, as `{qid: {doc: score}}`."""
    run: dict[str, dict[str, float]] = {}
    for where, (qid, _, doc, _, score, _) in _fields(Path(path), 6,
                                                     "QID Q0 DOCID RANK SCORE TAG"):
        try:
            value = float(score)
        except ValueError:
            raise LookalikeError(f"{where}: score {score!r} is not a number") from None
        if value != value:
            raise LookalikeError(f"{where}: query {qid!r} has a NaN score")
        docs = run.setdefault(qid, {})
        if doc in docs:
            raise LookalikeError(f"{where}: query {qid!r} lists {doc!r} twice")
        docs[doc] = value
    return run


def read_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """TREC qrels, `QID 0 DOCID GRADE`, as `{qid: {doc: grade}}`."""
    qrels: dict[str, dict[str, int]] = {}
    for where, (qid, _, doc, grade) in _fields(Path(path), 4, "QID 0 DOCID GRADE"):
        try:
            qrels.setdefault(qid, {})[doc] = int(grade)
        except ValueError:
            raise LookalikeError(f"{where}: grade {grade!r} is not an integer") from None
    return qrels
