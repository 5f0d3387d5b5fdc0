"""Fine-tuning mode, checkpoints and resume, and positives from judgements."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lookalike import LookalikeError, create_encoder
from lookalike.encoders.encoder import resolve_spec
from lookalike.train.finetune import FinetuneConfig, layer_groups, set_trainable
from lookalike.train.head import HeadConfig, train_head
from lookalike.train.run import judged_labels, train_model
from lookalike.trec import Query


def _views(samples: list[Path], root: Path, per_photo: int = 5) -> tuple[list[Path], np.ndarray]:
    """Crops of eight photos; a label pairs two unrelated photos, which the pretrained
    backbone does not see as similar, so training has something to learn."""
    from PIL import Image

    root.mkdir()
    paths, labels = [], []
    for n, sample in enumerate(samples[:8]):
        label = n % 4
        image = Image.open(sample).convert("RGB")
        w, h = image.size
        for i in range(per_photo):
            box = (i * w // 20, i * h // 30, w - i * w // 25, h - (per_photo - i) * h // 30)
            paths.append(root / f"{n}-{i}.jpg")
            image.crop(box).resize((96, 96)).save(paths[-1])
            labels.append(label)
    return paths, np.array(labels)


def test_finetuning_the_last_layer_group_gives_a_loadable_encoder(tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                   samples, encoder) -> None:
    paths, labels = _views(samples, tmp_path / "views")
    config = FinetuneConfig(epochs=2, batch_size=16, per_label=4, trainable="last:1",
                            lr=1e-3, patience=5)
    fitted = train_model(paths, labels, tmp_path / "model", mode="finetune", config=config,
                         val_fraction=0.3, progress=False)
    history = fitted.history
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert max(h["map"] for h in history[1:]) > history[0]["map"]  # kept: a better epoch
    assert all(np.isfinite(h["loss"]) for h in history[1:])
    assert not (tmp_path / "model" / "checkpoint.pt").exists()  # removed once finished

    base = resolve_spec("efficientnet_lite0").load(None).state_dict()
    tuned = torch.load(tmp_path / "model" / "backbone.pt", weights_only=True)
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert changed and all(k.startswith("net.blocks.6.") or "conv_head" in k or
                           k.startswith("net.bn2.") for k in changed)  # only the last group

    model = create_encoder(str(tmp_path / "model"))
    assert model.dim == 1280 and "fine-tuned backbone" in model.spec.description
    ours, before = model.encode(paths[:3]), encoder.encode(paths[:3])
    assert np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
    assert not np.allclose(ours, before, atol=1e-3)


def test_layer_groups_and_trainable_specs() -> None:
    mobilenet = resolve_spec("mobilenet_v2").load(None)  # torchvision: numbered features
    groups = layer_groups(mobilenet)
    assert len(groups) == 19  # features.0 .. features.18; the classifier is unused
    assert set_trainable(mobilenet, "last:1") == sum(p.numel() for p in groups[-1])
    assert sum(p.requires_grad for p in mobilenet.parameters()) == len(groups[-1])
    with pytest.raises(LookalikeError, match="'all' or 'last:N'"):
        set_trainable(mobilenet, "last:0")


def test_interrupted_training_resumes_to_the_same_result(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 16)).astype(np.float32), rng.integers(0, 10, 300)
    vx, vy = rng.normal(size=(60, 16)).astype(np.float32), rng.integers(0, 10, 60)
    config = HeadConfig(epochs=4, batch_size=64, hidden=32, patience=10)
    head, fitted = train_head(x, y, vx, vy, config=config)

    def stop_after_two(row: dict[str, object]) -> None:
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    checkpoint = tmp_path / "checkpoint.pt"
    with pytest.raises(KeyboardInterrupt):
        train_head(x, y, vx, vy, config=config, checkpoint=checkpoint,
                   on_epoch=stop_after_two)
    resumed, again = train_head(x, y, vx, vy, config=config, checkpoint=checkpoint)
    assert [h["loss"] for h in again.history] == [h["loss"] for h in fitted.history]
    assert again.held_out == fitted.held_out
    for a, b in zip(head.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_positives_from_judgements_are_connected_components(tmp_path: Path) -> None:
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg", "q1.jpg", "q2.jpg", "q3.jpg"):
        (tmp_path / name).write_bytes(b"")
    queries = [Query(q, tmp_path / f"{q}.jpg") for q in ("q1", "q2", "q3")]
    qrels = {"q1": {"a.jpg": 5, "b.jpg": 3}, "q2": {"b.jpg": 4, "c.jpg": 1},
             "q3": {"d.jpg": 5, "gone.jpg": 5}}
    paths, labels = judged_labels(tmp_path, queries, qrels, threshold=3)
    group = {p.name: int(label) for p, label in zip(paths, labels, strict=True)}
    assert set(group) == {"q1.jpg", "a.jpg", "b.jpg", "q2.jpg", "q3.jpg", "d.jpg"}
    assert group["q1.jpg"] == group["a.jpg"] == group["b.jpg"] == group["q2.jpg"]
    assert group["q3.jpg"] == group["d.jpg"] != group["a.jpg"]
    with pytest.raises(LookalikeError, match="no judgement of grade >= 5"):
        judged_labels(tmp_path, queries[:2], {"q1": {"b.jpg": 3}}, threshold=5)


def test_validation_holds_out_whole_groups() -> None:
    from lookalike.train.validation import held_out_groups

    labels = np.concatenate([np.repeat(np.arange(300), 2), np.repeat([300, 301], 50),
                             np.repeat([302], 5), [303]])
    val = held_out_groups(labels, 0.1, np.random.default_rng(0))
    held, trained = set(labels[val].tolist()), set(labels[~val].tolist())
    assert not held & trained  # no group on both sides
    assert 303 not in held  # a single image has no positive to validate with
    assert 0.08 < val.mean() < 0.25  # about a tenth of the images
    classes = np.repeat(np.arange(7), 30)  # class-labelled folders: whole classes
    val = held_out_groups(classes, 0.1, np.random.default_rng(0))
    assert len(set(classes[val].tolist())) == 2 and len(set(classes[~val].tolist())) == 5
    with pytest.raises(LookalikeError, match="3 groups of two or more images"):
        held_out_groups(np.repeat(np.arange(3), 4), 0.1, np.random.default_rng(0))
