"""Odd but real inputs: names that are not UTF-8 or hold a newline, files lookalike cannot
read, folders it cannot list, two writers at once."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from lookalike import Collection, LookalikeError
from lookalike.cli import main
from lookalike.folder import image_id, image_path
from lookalike.lock import WriterLock


def _cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as stop:
        code = int(stop.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_names_that_are_not_utf8_are_indexed_and_found(tmp_path: Path, photo_dir: Path,
                                                       samples: list[Path], encoder,  # type: ignore[no-untyped-def]
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    odd = os.fsdecode(os.fsencode(photo_dir) + b"/caf\xe9.jpg")  # Latin-1, as old disks have
    shutil.copy(samples[7], odd)
    coll_path = tmp_path / "coll"
    with Collection.create(coll_path, encoder=encoder) as coll:
        report = coll.index_folder(photo_dir)
        assert "caf\\xe9.jpg" in report.added and not report.failed
        assert coll.index_folder(photo_dir).unchanged == 7  # and again: nothing to redo
        hit = coll.search(samples[7], k=1)[0]
        assert hit.id == "caf\\xe9.jpg" and Path(hit.path) == Path(odd)
        assert coll.search(like="caf\\xe9.jpg", k=1)[0].id != hit.id
    code, out, err = _cli(capsys, "search", "-c", coll_path, samples[7], "-k", "1", "--json")
    assert code == 0, err
    assert json.loads(out)[0]["id"] == "caf\\xe9.jpg"


def test_ids_round_trip_to_their_files(tmp_path: Path) -> None:
    for raw in (b"plain.jpg", b"sub/\xff\xfe.png", "été/ü.jpg".encode()):
        (tmp_path / os.fsdecode(raw)).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / os.fsdecode(raw)).write_bytes(b"x")
        assert image_path(tmp_path, image_id(os.fsdecode(raw))) == tmp_path / os.fsdecode(raw)
    assert image_id(os.fsdecode(b"a\xff.jpg")) == "a\\xff.jpg"
    # A name that is literally `a\xff.jpg` is another file, with another id.
    literal, byte = tmp_path / "a\\xff.jpg", tmp_path / os.fsdecode(b"a\xff.jpg")
    literal.write_bytes(b"literal")
    byte.write_bytes(b"byte")
    ids = {image_id(p.name) for p in (literal, byte)}
    assert len(ids) == 2
    assert {image_path(tmp_path, i).read_bytes() for i in ids} == {b"literal", b"byte"}


def test_a_newline_in_a_name_stays_on_its_line(tmp_path: Path, photo_dir: Path,
                                               samples: list[Path], encoder,  # type: ignore[no-untyped-def]
                                               capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(samples[7], photo_dir / "two\nlines.jpg")
    with Collection.create(tmp_path / "coll", encoder=encoder) as coll:
        coll.index_folder(photo_dir)
    code, out, err = _cli(capsys, "search", "-c", tmp_path / "coll", samples[7], "-k", "3")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 3 and lines[0].endswith("two\\nlines.jpg")


def test_skipped_files_and_folders_are_reported(tmp_path: Path, photo_dir: Path, encoder,  # type: ignore[no-untyped-def]
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("logo.svg", "icon.svg", "raw.CR2"):
        (photo_dir / name).write_bytes(b"<svg/>")
    (photo_dir / "locked").mkdir()
    shutil.copy(next(photo_dir.glob("*.jpg")), photo_dir / "locked" / "kept.jpg")
    with Collection.create(tmp_path / "coll", encoder=encoder) as coll:
        coll.index_folder(photo_dir)
        assert "locked/kept.jpg" in coll.ids()

        locked = str(photo_dir / "locked")
        if os.geteuid() == 0:  # root reads every folder: make this one fail to list
            real = os.scandir

            def scandir(path: str) -> object:
                if os.fspath(path) == locked:
                    raise PermissionError(13, "Permission denied", locked)
                return real(path)
            monkeypatch.setattr(os, "scandir", scandir)
        else:
            os.chmod(locked, 0)
        try:
            report = coll.index_folder(photo_dir)
        finally:
            os.chmod(locked, 0o755)
        assert report.skipped == {
            "icon.svg": "unsupported format (vector graphics, not pixels)",
            "logo.svg": "unsupported format (vector graphics, not pixels)",
            "raw.CR2": report.skipped["raw.CR2"],
            "locked/": "folder cannot be read: Permission denied"}
        assert "camera raw" in report.skipped["raw.CR2"]
        assert "4 skipped" in report.summary()
        # What the folder held stays indexed: it may well still be there.
        assert not report.removed and "locked/kept.jpg" in coll.ids()


def test_a_second_writer_stops_or_waits(tmp_path: Path, photo_dir: Path, encoder,  # type: ignore[no-untyped-def]
                                        capsys: pytest.CaptureFixture[str]) -> None:
    coll_path = tmp_path / "coll"
    with Collection.create(coll_path, encoder=encoder) as coll:
        coll.index_folder(photo_dir)
    holder = WriterLock(coll_path)
    holder.acquire()
    try:
        code, _, err = _cli(capsys, "index", photo_dir, "-c", coll_path, "--no-progress")
        assert code == 2
        assert f"another process (pid {os.getpid()}) is writing" in err and "--wait" in err
        with Collection.open(coll_path, encoder=encoder) as reader:  # readers never wait
            assert len(reader.search(like=reader.ids()[0], k=2)) == 2
            with pytest.raises(LookalikeError, match="another process"):
                reader.reindex("hnsw16")

        threading.Timer(1.0, holder.release).start()
        started = time.monotonic()
        code, out, err = _cli(capsys, "index", photo_dir, "-c", coll_path, "--no-progress",
                              "--wait")
        assert code == 0, err
        assert time.monotonic() - started >= 0.9 and "6 unchanged" in out
    finally:
        if holder.held:
            holder.release()
