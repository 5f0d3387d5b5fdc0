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
