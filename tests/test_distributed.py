"""Embedding on a Ray cluster (a local one, two CPUs) gives what a local run gives."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from lookalike import Collection, LookalikeError
from lookalike.distributed import RayEncoder

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    env = {name: os.environ[name] for name in ("LOOKALIKE_CACHE", "HF_HUB_OFFLINE")}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=100 * 2**20, runtime_env={"env_vars": env})
    yield
    ray.shutdown()


def test_ray_indexes_what_a_local_run_indexes(cluster: None, tmp_path: Path,
                                              photo_dir: Path, encoder) -> None:  # type: ignore[no-untyped-def]
    (photo_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    local = Collection.create(tmp_path / "local", encoder=encoder, regions="grid")
    local.index_folder(photo_dir)
    distributed = Collection.create(tmp_path / "ray", encoder=encoder, regions="grid")
    embedder = RayEncoder(encoder, actors=2, cpus_per_actor=1)
    report = distributed.index_folder(photo_dir, batch_size=2, embed_with=embedder)

    assert sorted(report.added) == sorted(local.ids()) and len(local) == 6
    assert distributed.failures() == local.failures()
    assert distributed.failures()["broken.jpg"].startswith("cannot decode")
    for image_id in local.ids():
        mine, theirs = distributed.image_vectors(image_id), local.image_vectors(image_id)
        assert [r.box for r in mine] == [r.box for r in theirs] and len(mine) == 14
        np.testing.assert_allclose(np.stack([r.vector for r in mine]),
                                   np.stack([r.vector for r in theirs]), atol=1e-5)
    hits = distributed.search(photo_dir / "chelsea.jpg", crop=(140, 20, 320, 200), k=1)
    assert hits[0].id == "chelsea.jpg"


def test_failures_name_the_file_wherever_they_happen(cluster: None, tmp_path: Path,
                                                     photo_dir: Path, encoder) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "notes.jpg").write_text("not an image")
    items = [photo_dir / "chelsea.jpg", tmp_path / "gone.jpg", tmp_path / "notes.jpg"]
    batches = list(RayEncoder(encoder, actors=1, cpus_per_actor=2).iter_batches(items))
    assert [b.positions for b in batches] == [[0]]
    failures = {pos: str(error) for pos, error in batches[0].failures}
    assert failures == {
        1: f"{tmp_path / 'gone.jpg'}: cannot read: No such file or directory",
        2: f"{tmp_path / 'notes.jpg'}: not an image file, or a format Pillow cannot read",
    }


def test_workers_with_other_weights_are_refused(cluster: None) -> None:
    other = SimpleNamespace(name="efficientnet_lite0", fingerprint="0" * 64)
    with pytest.raises(LookalikeError, match="other weights for efficientnet_lite0"):
        RayEncoder(other, actors=1, cpus_per_actor=1)  # type: ignore[arg-type]


def test_index_command_embeds_on_ray(cluster: None, tmp_path: Path, photo_dir: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    from lookalike.cli import main

    main(["index", str(photo_dir), "-c", str(tmp_path / "coll"), "--ray", "local",
          "--ray-actors", "1", "--batch-size", "4", "--no-progress"])
    assert "6 added" in capsys.readouterr().out
    with Collection.open(tmp_path / "coll") as coll:
        assert coll.vector_count() == 6 and coll.failures() == {}
