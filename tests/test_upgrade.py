"""A collection made by an older lookalike opens as it is, and is upgraded in place: the
same search results, its vectors then stored once."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from lookalike import Collection, LookalikeError
from lookalike.check import check_collection

FIXTURE = Path(__file__).parent / "fixtures" / "collection-format1.tar.gz"


def _old_collection(tmp_path: Path) -> Path:
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(tmp_path, filter="data")
    return tmp_path / "coll"


def _results(coll: Collection) -> list[tuple[str, list[tuple[str, float]]]]:
    return [(i, [(h.id, round(h.score, 4)) for h in coll.search(like=i, k=4)])
            for i in sorted(coll.ids())]


def _catalog_vector_bytes(path: Path, table: str) -> int:
    with sqlite3.connect(path / "catalog.sqlite") as db:
        return int(db.execute(f"SELECT SUM(LENGTH(vector)) FROM {table}").fetchone()[0] or 0)


def test_a_format_1_collection_reads_and_upgrades_to_the_same_results(
        tmp_path: Path, samples: list[Path], encoder) -> None:  # type: ignore[no-untyped-def]
    path = _old_collection(tmp_path)
    photos = tmp_path / "photos"
    photos.mkdir()
    for sample in samples:
        shutil.copy(sample, photos / sample.name)
    with Collection.create(tmp_path / "new", encoder=encoder, regions="grid:2") as new:
        new.index_folder(photos)
        expected = _results(new)

    size_before = (path / "catalog.sqlite").stat().st_size
    assert _catalog_vector_bytes(path, "vectors") == 50 * 1280 * 4  # 10 images x (1 + 4)
    with pytest.raises(LookalikeError, match=r"older lookalike.*lookalike upgrade -c"):
        Collection.open(path, encoder=encoder)  # a reader says how, and changes nothing
    assert check_collection(path)[0].message.startswith("made by an older lookalike")
    with Collection.open(path, encoder=encoder, upgrade=True) as old:
        assert old.upgraded is not None and "from format 1 to 2" in old.upgraded
        assert old.format_version == 2 and old.upgrade() is None
        assert _results(old) == expected
    assert _catalog_vector_bytes(path, "pending") == 0  # the index holds them: once on disk
    assert (path / "catalog.sqlite").stat().st_size < size_before / 5
    assert json.loads((path / "manifest.json").read_text())["format_version"] == 2

    with Collection.open(path, encoder=encoder) as upgraded:
        report = upgraded.index_folder(photos)  # the photos now live elsewhere
        assert not report.added and not report.failed
        assert _results(upgraded) == expected
    assert check_collection(path) == []


def test_an_upgrade_keeps_what_the_saved_index_lacks(tmp_path: Path, samples: list[Path],
                                                     encoder) -> None:  # type: ignore[no-untyped-def]
    path = _old_collection(tmp_path)
    shutil.rmtree(path / "index")  # an old collection whose index was never saved,
    with sqlite3.connect(path / "catalog.sqlite") as db:  # from before vector checksums
        db.execute("ALTER TABLE vectors DROP COLUMN crc32")
    with Collection.open(path, encoder=encoder, upgrade=True) as upgraded:
        assert _catalog_vector_bytes(path, "pending") == 50 * 1280 * 4
        hits = upgraded.search(like="coffee.jpg", k=3)
        assert len(hits) == 3 and "coffee.jpg" not in {h.id for h in hits}
        upgraded.save_index()
    assert _catalog_vector_bytes(path, "pending") == 0


def test_upgrade_from_the_command_line(tmp_path: Path) -> None:
    path = _old_collection(tmp_path)

    def upgrade() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "lookalike.cli", "upgrade", "-c",
                               str(path)], capture_output=True, text=True, timeout=120)

    first, second = upgrade(), upgrade()
    assert first.returncode == 0 and "upgraded from format 1 to 2" in first.stdout
    assert second.returncode == 0 and "already in the current format" in second.stdout


def test_a_collection_from_a_newer_lookalike_is_refused_clearly(tmp_path: Path) -> None:
    path = _old_collection(tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(LookalikeError, match=r"newer lookalike.*format 99"):
        Collection.open(path)
