"""Shared fixtures: a private ONNX cache, the sample photos, a loaded default encoder."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "lookalike" / "samples"


@pytest.fixture(scope="session", autouse=True)
def _onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # Subprocesses inherit it, so the CLI tests reuse the session's exports.
    os.environ["LOOKALIKE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield


@pytest.fixture(scope="session")
def samples() -> list[Path]:
    return sorted(SAMPLES.glob("*.jpg"))


@pytest.fixture(scope="session")
def encoder():  # type: ignore[no-untyped-def]
    from lookalike import create_encoder

    return create_encoder("efficientnet_lite0")


@pytest.fixture()
def photo_dir(tmp_path: Path, samples: list[Path]) -> Path:
    """A folder of real photos, one in a subfolder."""
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    for path in samples[:5]:
        shutil.copy(path, root / path.name)
    shutil.copy(samples[5], root / "sub" / samples[5].name)
    return root


@pytest.fixture(scope="session")
def sky():  # type: ignore[no-untyped-def]
    """Makes smooth colour gradients, like a sky or a blurred background: no corners at all,
    a different one for each seed."""
    import numpy as np
    from PIL import Image

    def make(seed: int, size: tuple[int, int] = (480, 360)) -> Image.Image:
        field = np.random.default_rng(seed).uniform(60, 220, (3, 4, 3)).astype(np.uint8)
        return Image.fromarray(field).resize(size, Image.Resampling.BICUBIC)

    return make


# Modules whose tests run a real model in a subprocess (the CLI) or build one themselves.
_MODEL_MODULES = {"test_cli", "test_cli_errors", "test_encoders", "test_train_head",
                  "test_train_modes", "test_distributed", "test_upgrade", "test_int8"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that run a real encoder are marked `model`: `pytest -m "not model"` is the fast
    tier, for a quick check while working (CI runs everything)."""
    for item in items:
        if ("encoder" in getattr(item, "fixturenames", ())
                or item.module.__name__.rsplit(".", 1)[-1] in _MODEL_MODULES):  # type: ignore[attr-defined]
            item.add_marker(pytest.mark.model)
