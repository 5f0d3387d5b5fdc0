from __future__ import annotations

from pathlib import Path

import pytest

from lookalike.atomic import atomic_write


def test_a_crash_mid_write_keeps_the_last_good_file(tmp_path: Path) -> None:
    target = tmp_path / "manifest.json"
    with atomic_write(target) as fh:
        fh.write("good")
    with pytest.raises(RuntimeError), atomic_write(target) as fh:
        fh.write("half")
        raise RuntimeError("killed")
    assert target.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temp file left


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_files_get_the_umask_permissions_not_0600(tmp_path: Path, umask: int) -> None:
    import os

    old = os.umask(umask)
    try:
        with atomic_write(tmp_path / "shared.json") as fh:
            fh.write("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "shared.json").stat().st_mode & 0o777 == 0o666 & ~umask
