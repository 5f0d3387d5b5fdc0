"""`lookalike check`: each kind of damage is named, and `--repair` gives back the search
results of a clean build."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from lookalike import Collection, LookalikeError
from lookalike.catalog import DamagedVectorsError
from lookalike.check import check_collection, repair_collection

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "lookalike" / "samples"


def _build(path: Path, root: Path, encoder) -> None:  # type: ignore[no-untyped-def]
    with Collection.create(path, encoder=encoder) as coll:
        coll.index_folder(root)


def _results(path: Path, encoder) -> list[tuple[str, list[tuple[str, float]]]]:  # type: ignore[no-untyped-def]
    """Every image's neighbours, by id and score: what a clean build must match."""
    with Collection.open(path, encoder=encoder) as coll:
        return [(i, [(h.id, round(h.score, 5)) for h in coll.search(like=i, k=5)])
                for i in sorted(coll.ids())]


def _flip(path: Path, needle: bytes) -> None:
    """Overwrite the bytes of one stored vector where they lie in `path`, as a bad disk
    sector or a stray write would."""
    data = bytearray(path.read_bytes())
    at = data.find(needle[:256])  # a long blob spans pages: its start lies in one piece
    assert at >= 0
    data[at + 16:at + 48] = b"\x7f" * 32
    path.write_bytes(bytes(data))


def _held_vector(coll: Path) -> bytes:
    """The bytes of a vector the catalog still holds (not yet taken over by the index)."""
    with sqlite3.connect(coll / "catalog.sqlite") as db:
        return bytes(db.execute("SELECT vector FROM pending ORDER BY vid").fetchone()[0])


def _interrupted_index(coll: Path, root: Path, image: Path) -> None:
    """Add `image` to the folder and index it, stopping after its batch is committed and
    before the index is: the catalog then holds its vector."""
    def stop(batch: int) -> None:
        raise KeyboardInterrupt

    shutil.copy(image, root / "added.jpg")
    with Collection.open(coll) as opened, pytest.raises(KeyboardInterrupt):
        opened.index_folder(root, after_batch=stop)


def truncated_catalog(coll: Path, root: Path) -> str:
    catalog = coll / "catalog.sqlite"
    catalog.write_bytes(catalog.read_bytes()[:catalog.stat().st_size // 2])
    return "catalog"


def flipped_catalog_vector(coll: Path, root: Path) -> str:
    _interrupted_index(coll, root, SAMPLES / "rocket.jpg")
    _flip(coll / "catalog.sqlite", _held_vector(coll))
    return "vectors"


def _index_vectors(coll: Path) -> Path:
    return next((coll / "index").glob("seg-*/vectors.npy"))


def flipped_index_vector(coll: Path, root: Path) -> str:
    vectors = _index_vectors(coll)
    _flip(vectors, np.load(vectors)[0].tobytes())
    return "index"


def deleted_index_file(coll: Path, root: Path) -> str:
    _index_vectors(coll).unlink()
    return "index"


def deleted_image(coll: Path, root: Path) -> str:
    next(root.glob("*.jpg")).unlink()
    return "files"


def missing_manifest(coll: Path, root: Path) -> str:
    (coll / "manifest.json").unlink()
    return "manifest"


@pytest.mark.parametrize("damage", [truncated_catalog, flipped_catalog_vector,
                                    flipped_index_vector, deleted_index_file, deleted_image,
                                    missing_manifest])
def test_check_names_the_damage_and_repair_equals_a_clean_build(
        tmp_path: Path, photo_dir: Path, encoder, damage: Callable[[Path, Path], str]  # type: ignore[no-untyped-def]
) -> None:
    coll = tmp_path / "coll"
    _build(coll, photo_dir, encoder)
    assert check_collection(coll) == []

    part = damage(coll, photo_dir)
    findings = check_collection(coll)
    assert [f.part for f in findings] == [part], findings

    actions = repair_collection(coll, encoder=encoder)
    assert actions and check_collection(coll) == []
    clean = tmp_path / "clean"
    _build(clean, photo_dir, encoder)
    assert _results(coll, encoder) == _results(clean, encoder)


def test_damaged_vectors_are_named_not_used(tmp_path: Path, photo_dir: Path, encoder,  # type: ignore[no-untyped-def]
                                            samples: list[Path]) -> None:
    coll = tmp_path / "coll"
    _build(coll, photo_dir, encoder)
    _interrupted_index(coll, photo_dir, samples[8])
    _flip(coll / "catalog.sqlite", _held_vector(coll))
    with Collection.open(coll, encoder=encoder) as opened:
        damaged = opened.catalog.damaged_images(opened.dim)
        assert len(damaged) == 1
        with pytest.raises(DamagedVectorsError, match=f"{damaged[0]}.*check --repair"):
            opened.search(samples[0], k=3)
        with pytest.raises(DamagedVectorsError, match=damaged[0]):
            opened.query_vector(like=damaged[0])


@pytest.mark.parametrize("content", [None, b""])
def test_a_missing_or_empty_catalog_is_an_error_not_an_empty_collection(
        tmp_path: Path, photo_dir: Path, encoder, content: bytes | None) -> None:  # type: ignore[no-untyped-def]
    coll = tmp_path / "coll"
    _build(coll, photo_dir, encoder)
    (coll / "catalog.sqlite").unlink()
    if content is not None:
        (coll / "catalog.sqlite").write_bytes(content)
    with pytest.raises(LookalikeError, match=r"catalog is (missing|empty).*--repair"):
        Collection.open(coll)
    with pytest.raises(LookalikeError, match="catalog is"):
        Collection.open_or_create(coll)


def test_a_lost_manifest_is_not_replaced_by_a_default_one(tmp_path: Path, photo_dir: Path,
                                                          encoder) -> None:  # type: ignore[no-untyped-def]
    coll = tmp_path / "coll"
    with Collection.create(coll, encoder=encoder, regions="grid:2") as made:
        made.index_folder(photo_dir)
    (coll / "manifest.json").unlink()
    for attempt in (lambda: Collection.open_or_create(coll, encoder="mobilenet_v2"),
                    lambda: Collection.create(coll, encoder=encoder)):
        with pytest.raises(LookalikeError, match=r"manifest\.json is missing.*--repair"):
            attempt()
    assert not (coll / "manifest.json").exists()
    repair_collection(coll, encoder=encoder)
    with Collection.open(coll, encoder=encoder) as restored:
        assert restored.manifest.regions == "grid:2"
        assert restored.vector_count() == 6 * 5


def test_a_create_killed_before_its_manifest_can_start_again(tmp_path: Path, encoder  # type: ignore[no-untyped-def]
                                                             ) -> None:
    from lookalike.catalog import Catalog

    coll = tmp_path / "coll"
    coll.mkdir()
    Catalog(coll / "catalog.sqlite", create=True).close()  # killed right after this
    with Collection.create(coll, encoder=encoder) as made:
        assert made.ids() == []
    assert (coll / "manifest.json").exists()
