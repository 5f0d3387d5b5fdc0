"""Head mode: training improves a validation split; the saved model is an encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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
    config = HeadConfig(epochs=8, batch_size=128, hidden=128, patience=3)
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
