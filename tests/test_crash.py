"""kill -9 at any moment of indexing (embedding, catalog commits, the index's save, its
merges, the catalog handing vectors over to it) keeps a collection whole: nothing is lost,
the index and the catalog agree, and the next run finishes the job."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from lookalike import Collection
from lookalike.check import check_collection

WRITER = r"""
import shutil, sys
from pathlib import Path
import numpy as np
from PIL import Image
from lookalike import Collection
from lookalike.encoders import EncodedBatch

class Fake:
    '''Vectors from the file's number: an encoder at the speed of a lookup.'''
    def __init__(self, dim):
        self.dim = dim
    def iter_batches(self, items, *, batch_size=32, progress=False, regions=None):
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            vectors = np.stack([np.random.default_rng(int(Path(p).stem.split("-")[1]))
                                .normal(size=self.dim) for p in chunk]).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            yield EncodedBatch(list(range(start, start + len(chunk))), vectors,
                               [(8, 8)] * len(chunk))

coll_path, photos = Path(sys.argv[1]), Path(sys.argv[2])
first, steps = int(sys.argv[3]), int(sys.argv[4])
with Collection.open(coll_path) as coll:
    encoder = Fake(coll.dim)
    for step in range(first, first + steps):
        for i in range(30 * step, 30 * step + 30):  # 30 new files, 1 copied, 10 gone
            pixels = np.frombuffer(i.to_bytes(8, "little") * 24, np.uint8).reshape(8, 8, 3)
            Image.fromarray(pixels).save(photos / f"img-{i}.png")
        shutil.copy(photos / f"img-{30 * step}.png", photos / f"copy-{step}.png")
        for old in sorted(photos.glob("img-*.png"))[:10]:
            old.unlink()
        coll.index_folder(photos, batch_size=7, embed_with=encoder)
        print(step, flush=True)
"""


def _consistent(path: Path, encoder) -> None:  # type: ignore[no-untyped-def]
    """The index holds exactly the catalog's vectors, and search answers."""
    assert {f.part for f in check_collection(path)} <= {"files"}  # a run cut short
    with Collection.open(path, encoder=encoder) as coll:
        held = np.sort(coll.vectors()[0])
        assert np.array_equal(held, coll.catalog.vector_map()[0])
        query = np.random.default_rng(0).normal(size=(1, coll.dim)).astype(np.float32)
        assert len(coll.search_vectors(query, k=3)[0]) == 3


def test_kill_9_while_indexing_keeps_the_collection_whole(tmp_path: Path, encoder  # type: ignore[no-untyped-def]
                                                          ) -> None:
    path, photos = tmp_path / "coll", tmp_path / "photos"
    photos.mkdir()
    Collection.create(path, encoder=encoder).close()
    rng = np.random.default_rng(3)
    steps_done = 0
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(photos),
                                 str(steps_done), "1000"], stdout=subprocess.PIPE, text=True)
        time.sleep(float(rng.uniform(1.5, 4.0)))  # imports take about a second
        proc.send_signal(signal.SIGKILL)
        printed = proc.communicate()[0].split()
        steps_done += len(printed) + 1  # the step cut short is not done again
        _consistent(path, encoder)
    assert steps_done > 10
    finish = subprocess.run([sys.executable, "-c", WRITER, str(path), str(photos),
                             str(steps_done), "1"], capture_output=True, text=True, timeout=120)
    assert finish.returncode == 0, finish.stderr  # the next run finishes the job
    assert check_collection(path) == []
    _consistent(path, encoder)
