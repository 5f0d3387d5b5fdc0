"""Every sub-command, given bad arguments or bad files, exits with status 2 and one line on
stderr that names the input: never a traceback, never a usage page."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lookalike import Collection
from lookalike.cli import main


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory, samples: list[Path], encoder  # type: ignore[no-untyped-def]
           ) -> dict[str, Path | str]:
    base = tmp_path_factory.mktemp("bad")
    root = base / "photos"
    root.mkdir()
    for path in samples[:3]:
        shutil.copy(path, root / path.name)
    with Collection.create(base / "coll", encoder=encoder) as coll:
        coll.index_folder(root)
    (base / "garbage.bin").write_bytes(b"\x00\x01 not an image, not a table \xff")
    (base / "empty").mkdir()
    bad_coll = base / "bad_coll"
    bad_coll.mkdir()
    (bad_coll / "manifest.json").write_text("{not json")
    return {"root": root, "coll": base / "coll", "garbage": base / "garbage.bin",
            "dir": base / "empty", "missing": base / "absent", "badcoll": bad_coll,
            "img": root / samples[0].name, "id": samples[0].name, "out": base / "out"}


CASES = [
    # index
    (["index", "{garbage}", "-c", "{out}/c1"], "garbage.bin: not a directory"),
    (["index", "{missing}", "-c", "{out}/c1"], "absent: not a directory"),
    (["index", "{root}", "-c", "{garbage}"], "garbage.bin: not a folder"),
    (["index", "{root}", "-c", "{garbage}/sub/coll"], "garbage.bin is a file"),
    (["index", "{root}", "-c", "{badcoll}"], "manifest.json: malformed"),
    (["index", "{root}", "-c", "{coll}/catalog.sqlite"], "catalog.sqlite: not a folder"),
    (["index", "-c", "{coll}", "--reindex", "hnsw²"], "unknown index spec 'hnsw²'"),
    (["index", "{root}", "-c", "{out}/c2", "--regions", "grid:²"], "unknown regions spec"),
    (["index", "{root}", "-c", "{out}/c3", "--batch-size", "²"], "'²' is not a valid integer"),
    # update and upgrade
    (["update", "-c", "{coll}"], "Missing argument 'PATHS...'"),
    (["update", "-c", "{coll}", "{garbage}"], "garbage.bin: not under the collection's folder"),
    (["update", "-c", "{missing}", "{img}"], "absent: not a lookalike collection"),
    (["upgrade", "-c", "{badcoll}"], "manifest.json: malformed"),
    # search
    (["search", "-c", "{coll}", "{dir}"], "empty: not a file"),
    (["search", "-c", "{coll}", "{garbage}"], "garbage.bin: not an image"),
    (["search", "-c", "{coll}", "{missing}"], "absent: no such file"),
    (["search", "-c", "{garbage}", "{img}"], "garbage.bin: not a lookalike collection"),
    (["search", "-c", "{missing}", "{img}"], "absent: not a lookalike collection"),
    (["search", "-c", "{badcoll}", "{img}"], "manifest.json: malformed"),
    (["search", "-c", "{coll}", "{img}", "-k", "²"], "'²' is not a valid integer"),
    (["search", "-c", "{coll}", "{img}", "--crop", "²,0,5,5"], "got '²,0,5,5'"),
    (["search", "-c", "{coll}", "{img}", "--crop", "--5,0,5,5"], "got '--5,0,5,5'"),
    (["search", "-c", "{coll}", "--queries", "{garbage}", "--run", "{out}/r"], "garbage.bin:1"),
    (["search", "-c", "{coll}", "--queries", "{dir}", "--run", "{out}/r"], "empty"),
    (["search", "-c", "{coll}", "--queries", "{missing}", "--run", "{out}/r"], "absent"),
    (["search", "-c", "{coll}", "--like", "{id}", "--query-regions", "nine"], "'nine'"),
    # metrics and compare
    (["metrics", "{garbage}", "{garbage}"], "garbage.bin: not a UTF-8 text file"),
    (["metrics", "{dir}", "{garbage}"], "empty"),
    (["metrics", "{missing}", "{garbage}"], "absent"),
    (["compare", "{missing}", "{garbage}", "{garbage}"], "absent"),
    (["compare", "{garbage}", "{garbage}", "{dir}"], "garbage.bin"),
    # evaluate and calibrate
    (["evaluate", "-c", "{coll}", "--queries", "{garbage}", "--qrels", "{garbage}"],
     "garbage.bin:1"),
    (["evaluate", "-c", "{missing}", "--queries", "{garbage}", "--qrels", "{garbage}"],
     "garbage.bin:1"),
    (["evaluate", "-c", "{coll}", "--labelled", "{garbage}"], "garbage.bin: not a directory"),
    (["calibrate", "-c", "{coll}", "--queries", "{missing}", "--qrels", "{garbage}"], "absent"),
    (["calibrate", "-c", "{garbage}", "--queries", "{garbage}", "--qrels", "{garbage}"],
     "garbage.bin"),
    # train, dataset, judgements
    (["train", "{garbage}", "--out", "{out}/m"], "garbage.bin"),
    (["train", "{missing}", "--out", "{out}/m"], "absent"),
    (["train", "{root}", "--out", "{out}/m", "--epochs", "²"], "'²' is not a valid integer"),
    (["dataset", "nope", "{out}/d"], "nope"),
    (["judgements", "{missing}", "{out}/j"], "absent: not a directory"),
    (["judgements", "{garbage}", "{out}/j"], "garbage.bin: not a directory"),
    # check, serve
    (["check", "-c", "{garbage}"], "garbage.bin: not a collection folder"),
    (["check", "-c", "{missing}"], "absent: not a collection folder"),
    (["check", "-c", "{dir}"], "empty: not a lookalike collection"),
    (["serve", "-c", "{missing}", "--port", "0"], "absent: not a lookalike collection"),
    (["serve", "-c", "{coll}", "--port", "70000"], "70000"),
    # usage
    (["search", "-c", "{coll}"], "give an IMAGE"),
    (["nosuchcommand"], "nosuchcommand"),
]


@pytest.mark.parametrize(("args", "message"), CASES, ids=[" ".join(a[:2]) + f" #{i}"
                                                          for i, (a, _) in enumerate(CASES)])
def test_bad_input_is_one_line_naming_it(places: dict[str, Path | str], args: list[str],
                                         message: str, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    argv = [a.format(**places) for a in args]
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    err = capsys.readouterr().err
    assert stopped.value.code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("lookalike: error: ") and message in err, err
