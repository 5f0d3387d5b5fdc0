"""An index follows its catalog by what changed: the vectors read follow the change, not
the collection, for the writer and for a reader open beside it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from lookalike import Collection
from lookalike.catalog import Catalog, Changes, SyncPoint


class CountingCatalog(Catalog):
    """A catalog that counts the vectors it hands out."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.vectors_read = 0
        self.removals_read = 0
        self.full_reads = 0

    def changes_since(self, point: SyncPoint, dim: int) -> Changes | None:
        changes = super().changes_since(point, dim)
        if changes is not None:
            self.vectors_read += len(changes.vids)
            self.removals_read += len(changes.removed)
        return changes

    def held_vectors(self, dim: int):  # type: ignore[no-untyped-def]
        self.full_reads += 1
        return super().held_vectors(dim)


def _open(path: Path, encoder) -> tuple[Collection, CountingCatalog]:  # type: ignore[no-untyped-def]
    opened = Collection.open(path, encoder=encoder)
    opened.close()
    catalog = CountingCatalog(path / "catalog.sqlite")
    return Collection(path, opened.manifest, encoder, catalog), catalog


def test_sync_reads_only_what_changed(tmp_path: Path, photo_dir: Path, samples: list[Path],
                                      encoder, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import lookalike.index.segmented as segmented

    segments_read: list[str] = []

    def load_single(folder: Path):  # type: ignore[no-untyped-def]
        segments_read.append(Path(folder).name)
        return real_load(folder)

    real_load = segmented.load_single
    monkeypatch.setattr(segmented, "load_single", load_single)
    path = tmp_path / "coll"
    with Collection.create(path, encoder=encoder) as made:
        made.index_folder(photo_dir)
    writer, written = _open(path, encoder)
    reader, read = _open(path, encoder)
    first = reader.search(like=samples[0].name, k=3)
    assert len(first) == 3
    assert (read.vectors_read, read.full_reads) == (0, 0)  # the saved index is current

    before = json.loads((path / "index" / "segments.json").read_text())["segments"]
    shutil.copy(samples[7], photo_dir / "new.jpg")               # 1 added
    (photo_dir / samples[1].name).unlink()                       # 1 removed
    os.rename(photo_dir / samples[2].name, photo_dir / "moved.jpg")  # 1 renamed
    report = writer.index_folder(photo_dir)
    assert (len(report.added), len(report.removed), len(report.renamed)) == (1, 2, 1)
    assert written.full_reads == 0
    assert (written.vectors_read, written.removals_read) == (2, 2)  # new.jpg, moved.jpg

    # The catalog handed the new vectors over to the saved index: they are on disk once.
    assert written.absorbed == written.sync_point().last_vid
    assert written.db.execute("SELECT COUNT(*) FROM pending").fetchone()[0] == 0

    # The reader, open all along, picks up the new commit: its new segment, nothing else.
    segments_read.clear()
    hits = reader.search(samples[7], k=6)
    assert hits[0].id == "new.jpg" and {h.id for h in hits} == set(reader.ids())
    assert samples[1].name not in {h.id for h in hits}
    now = json.loads((path / "index" / "segments.json").read_text())["segments"]
    assert segments_read == [name for name in now if name not in before]
    assert (read.vectors_read, read.full_reads) == (0, 0)

    # A new reader reads the saved index and nothing from the catalog.
    fresh, catalog = _open(path, encoder)
    assert [h.id for h in fresh.search(samples[7], k=6)] == [h.id for h in hits]
    assert (catalog.vectors_read, catalog.full_reads) == (0, 0)
    for coll in (writer, reader, fresh):
        coll.close()


def test_an_index_saved_before_sync_points_is_brought_up_to_date(
        tmp_path: Path, photo_dir: Path, samples: list[Path], encoder) -> None:  # type: ignore[no-untyped-def]

    path = tmp_path / "coll"
    with Collection.create(path, encoder=encoder) as made:
        made.index_folder(photo_dir)
    commit = json.loads((path / "index" / "segments.json").read_text())
    del commit["sync"]  # as indexes were saved before
    (path / "index" / "segments.json").write_text(json.dumps(commit))
    shutil.copy(samples[7], photo_dir / "new.jpg")
    with Collection.open(path, encoder=encoder) as coll:
        coll.index_folder(photo_dir)
        assert coll.search(samples[7], k=1)[0].id == "new.jpg"
    assert "sync" in json.loads((path / "index" / "segments.json").read_text())


def test_a_reader_behind_the_pruned_log_reads_the_saved_index(
        tmp_path: Path, photo_dir: Path, samples: list[Path], encoder,  # type: ignore[no-untyped-def]
        monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import lookalike.live_index

    monkeypatch.setattr(lookalike.live_index, "REMOVALS_KEPT", 1)
    path = tmp_path / "coll"
    with Collection.create(path, encoder=encoder) as made:
        made.index_folder(photo_dir)
    reader, read = _open(path, encoder)
    assert len(reader.search(like=samples[0].name, k=5)) == 5
    for photo in samples[1:4]:
        (photo_dir / photo.name).unlink()
    with Collection.open(path, encoder=encoder) as writer:
        writer.index_folder(photo_dir)
        assert int(writer.catalog.get_meta("removals_pruned") or 0) > 0
    found = {h.id for h in reader.search(like=samples[0].name, k=5)}
    assert found == set(reader.ids()) - {samples[0].name} and len(found) == 2
    assert read.vectors_read == 0  # it re-read the saved index instead
    reader.close()


def test_updating_named_paths_reads_only_them(tmp_path: Path, photo_dir: Path,
                                              samples: list[Path], encoder) -> None:  # type: ignore[no-untyped-def]
    from lookalike import LookalikeError

    class Scoped(CountingCatalog):
        def images(self):  # type: ignore[no-untyped-def]
            self.full_reads += 1
            return super().images()

    path = tmp_path / "coll"
    with Collection.create(path, encoder=encoder) as made:
        made.index_folder(photo_dir)
    opened = Collection.open(path, encoder=encoder)
    opened.close()
    catalog = Scoped(path / "catalog.sqlite")
    coll = Collection(path, opened.manifest, encoder, catalog)

    shutil.copy(samples[7], photo_dir / "new.jpg")
    (photo_dir / samples[1].name).unlink()
    (photo_dir / "later").mkdir()
    shutil.copy(samples[8], photo_dir / "later" / "a.jpg")
    shutil.copy(samples[9], photo_dir / "ignored.jpg")  # not named: not indexed
    report = coll.index_paths([photo_dir / "new.jpg", photo_dir / samples[1].name,
                               photo_dir / "later"])
    assert (report.added, report.removed) == (["later/a.jpg", "new.jpg"], [samples[1].name])
    assert report.unchanged == 0 and catalog.full_reads == 0
    assert catalog.vectors_read == 2  # the two new vectors, when the index followed
    assert "ignored.jpg" not in coll.ids()

    shutil.rmtree(photo_dir / "later")  # a folder that is gone: everything under it goes
    assert coll.index_paths([photo_dir / "later"]).removed == ["later/a.jpg"]
    assert coll.search(samples[7], k=1)[0].id == "new.jpg"
    with pytest.raises(LookalikeError, match="not under the collection's folder"):
        coll.index_paths([tmp_path])
    coll.close()
    with Collection.open(path, encoder=encoder) as fresh:  # the same as a full scan finds
        report = fresh.index_folder(photo_dir)
        assert report.added == ["ignored.jpg"] and not report.removed
