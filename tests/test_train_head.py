"""Head mode: training improves a validation split; the saved model is an encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lookalike import create_encoder
from lookalike.encoders.model_folder import save_model
from lookalike.train.head import (
    HeadConfig,
    ProjectionHead,
    _pk_batches,
    plot_history,
    train_head,
)
from lookalike.train.validation import validation_metrics


def _features(rng: np.random.Generator, n: int, centres: np.ndarray) -> tuple[np.ndarray,
                                                                              np.ndarray]:
    """The label lives in 4 dimensions; 60 others carry larger noise the head must learn
    to ignore."""
    labels = rng.integers(0, len(centres), n)
    signal = centres[labels] + 0.3 * rng.normal(size=(n, 4))
    x = np.hstack([signal, 1.5 * rng.normal(size=(n, 60))]).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


def test_head_training_raises_validation_map(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 4)) * 2
    train_x, train_y = _features(rng, 2000, centres)
    val_x, val_y = _features(rng, 400, centres)
    config = HeadConfig(epochs=8, batch_size=128, hidden=128, patience=3, whiten=False)
    head, fitted = train_head(train_x, train_y, val_x, val_y, config=config)
    history = fitted.history
    frozen = validation_metrics(val_x, val_y)
    assert history[0]["map"] == frozen["map"]  # epoch 0 is the identity: the backbone
    best = max(h["map"] for h in history)
    assert best > 1.5 * frozen["map"]
    with torch.no_grad():
        trained = head(torch.from_numpy(val_x)).numpy()
    assert validation_metrics(trained, val_y)["map"] == best  # the best epoch was kept
    held_out = {m.metric: m for m in fitted.held_out.metrics}
    assert held_out["map"].mean_a == frozen["map"] and held_out["map"].mean_b == best
    assert fitted.held_out.gained and held_out["map"].p_value < 0.001
    plot_history(history, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 1000


def test_pk_batches_give_every_anchor_a_positive() -> None:
    labels = np.repeat(np.arange(30), 5)
    batches = _pk_batches(labels, 32, 4, np.random.default_rng(0))
    seen = np.concatenate(batches)
    assert len(seen) == len(np.unique(seen))  # no item twice in an epoch
    for batch in batches:
        counts = np.bincount(labels[batch])
        assert (counts[counts > 0] >= 2).all()


def test_trained_model_folder_is_an_encoder(tmp_path: Path, encoder, samples) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    head = ProjectionHead(encoder.dim, 64, hidden=32)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_model(tmp_path / "model", "efficientnet_lite0", head, [], HeadConfig())
    trained = create_encoder(str(tmp_path / "model"))
    assert trained.dim == 64 and trained.name == str((tmp_path / "model").resolve())
    got = trained.encode(samples[:3])
    base = torch.from_numpy(encoder.encode(samples[:3]))
    with torch.no_grad():
        expected = torch.nn.functional.normalize(head(base), dim=1).numpy()
    assert got.shape == (3, 64)
    assert (np.sum(got * expected, axis=1) > 0.999).all()  # one ONNX graph, same answer


def test_self_supervised_views_train_without_labels() -> None:
    from PIL import Image

    from lookalike.train.head import augmented_view

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8))
    one, two = augmented_view(image, rng), augmented_view(image, rng)
    assert one.size == two.size == image.size and one.tobytes() != two.tobytes()
    centres = rng.normal(size=(20, 4)) * 2
    train_x, _ = _features(rng, 1000, centres)
    # a second "view" keeps the signal dimensions and redraws the noise ones
    views = np.hstack([train_x[:, :4], 1.5 * rng.normal(size=(1000, 60)) / 12]).astype(
        np.float32)
    val_x, val_y = _features(rng, 300, centres)
    config = HeadConfig(epochs=6, batch_size=128, hidden=128, patience=3)
    _, fitted = train_head(train_x, None, val_x, val_y, config=config, views=views)
    assert max(h["map"] for h in fitted.history) > fitted.history[0]["map"] * 1.2


def test_learned_whitening_shrinks_what_varies_inside_groups() -> None:
    from lookalike.train.whitening import best_whitening, learned_whitening

    rng = np.random.default_rng(0)

    def groups(n: int) -> tuple[np.ndarray, np.ndarray]:
        """Group identity in 8 weak dimensions; 8 others vary strongly inside a group."""
        labels = np.repeat(np.arange(n), 4)
        centres = rng.normal(size=(n, 8))
        x = np.hstack([centres[labels] * 0.5, 3 * rng.normal(size=(len(labels), 8))])
        return x.astype(np.float32), labels

    train_x, train_y = groups(100)
    val_x, val_y = groups(30)  # other groups: what carries is the directions, not the groups
    mean, w = learned_whitening(train_x, train_y, 0.1)
    assert np.allclose(w, w.T)

    def separation(z: np.ndarray) -> float:
        """Spread of the group means over the spread inside groups."""
        means = np.stack([z[train_y == g].mean(axis=0) for g in range(100)])
        return float(means.std() / (z - means[train_y]).std())

    assert separation((train_x - mean) @ w) > 1.5 * separation(train_x)
    found = best_whitening(train_x, train_y, val_x, val_y)
    assert found is not None
    head, fitted = train_head(train_x, train_y, val_x, val_y,
                              config=HeadConfig(epochs=0, hidden=16))
    assert fitted.held_out.gained and not fitted.held_out.fell_back
    assert validation_metrics(val_x, val_y)["map"] < fitted.held_out.trained_map
    with torch.no_grad():
        assert np.allclose(head(torch.from_numpy(val_x)).numpy(), (val_x - found[0]) @ found[1],
                           atol=1e-3)


def test_a_head_that_cannot_beat_the_frozen_encoder_falls_back_to_it() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(40), 3)
    x = (np.eye(64)[labels % 64] + 0.01 * rng.normal(size=(len(labels), 64))).astype(np.float32)
    head, fitted = train_head(x[:90], labels[:90], x[90:], labels[90:],
                              config=HeadConfig(epochs=2, hidden=16))
    assert fitted.held_out.fell_back and not fitted.held_out.gained  # 1.0 already
    with torch.no_grad():
        assert torch.equal(head(torch.from_numpy(x)), torch.from_numpy(x))  # the identity


def test_a_trained_model_travels_with_its_collection(tmp_path: Path, samples,  # type: ignore[no-untyped-def]
                                                      monkeypatch) -> None:
    import shutil

    from lookalike import Collection, LookalikeError
    from lookalike.encoders.runtime import cache_dir

    project = tmp_path / "project"
    torch.manual_seed(0)
    head = ProjectionHead(1280, 32, hidden=16)
    save_model(project / "model", "efficientnet_lite0", head, [], HeadConfig())
    photos = project / "photos"
    photos.mkdir()
    for sample in samples[:3]:
        shutil.copy(sample, photos)
    monkeypatch.chdir(project)
    coll = Collection.create("coll", encoder="model")  # a relative name
    coll.index_folder(photos)
    before = coll.search(samples[0], k=2)
    assert Collection.open("coll", encoder=str(project / "model")).dim == 32  # same model
    pattern = f"trained-*-{coll.manifest.fingerprint[:16]}-*"  # type: ignore[index]
    graphs = sorted(p.name for p in (cache_dir() / "onnx").glob(pattern))
    assert len(graphs) == 1  # one export, keyed by content, whatever the name given

    moved = tmp_path / "moved"
    shutil.move(project, moved)  # a collection and its model moved (or shared) together
    monkeypatch.chdir(tmp_path)
    after = Collection.open(moved / "coll").search(moved / "photos" / samples[0].name, k=2)
    assert [h.id for h in after] == [h.id for h in before]
    assert sorted(p.name for p in (cache_dir() / "onnx").glob(pattern)) == graphs

    shutil.rmtree(moved / "model")
    with pytest.raises(LookalikeError, match="its model folder is gone"):
        Collection.open(moved / "coll").search(moved / "photos" / samples[0].name, k=2)
