"""Judged copy groups, pairwise quality against them, and the copy probability fitted on
them: calibrated where the evidence is, refused where a fit cannot be made."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from lookalike.copy_probability import CopyProbability, fit, reliability
from lookalike.copy_truth import linked, quality, read_truth
from lookalike.errors import LookalikeError


def _truth(tmp_path: Path) -> Path:
    path = tmp_path / "groups.csv"
    path.write_text("image,group,family\n"
                    "a.jpg,g1,original\nb.jpg,g1,crop25\nc.jpg,g1,flipped\n"
                    "d.jpg,g2,original\ne.jpg,g2,crop25\n"
                    "x.jpg,,distractor-original\n")
    return path


def test_quality_counts_every_pair_a_group_claims(tmp_path: Path) -> None:
    truth = read_truth(_truth(tmp_path))
    assert truth.copy_pairs() == {("a.jpg", "b.jpg"), ("a.jpg", "c.jpg"), ("b.jpg", "c.jpg"),
                                  ("d.jpg", "e.jpg")}
    # b and c linked only through a: the pair b-c is found too; x wrongly joins d-e
    found = quality(linked([("a.jpg", "b.jpg"), ("c.jpg", "a.jpg"), ("d.jpg", "x.jpg"),
                            ("x.jpg", "e.jpg")]), truth)
    assert found.reported == 6 and found.wrong == 2
    assert found.precision == pytest.approx(4 / 6) and found.recall == 1.0
    assert found.recall_by_family == {"copy-copy": 1.0, "crop25": 1.0, "flipped": 1.0}
    missed = quality([["a.jpg", "b.jpg"]], truth)
    assert missed.precision == 1.0 and missed.recall == pytest.approx(1 / 4)
    assert missed.recall_by_family["flipped"] == 0.0 and missed.pairs_by_family["crop25"] == 2


def test_linked_groups_are_transitive_and_sorted() -> None:
    assert linked([("b", "c"), ("e", "d"), ("a", "c")]) == [["a", "b", "c"], ["d", "e"]]
    assert linked([]) == []
    chain = [(str(i), str(i + 1)) for i in range(0, 40, 2)] + [
        (str(i + 1), str(i + 2)) for i in range(0, 40, 2)]
    assert linked(chain) == [sorted(str(i) for i in range(41))]


def test_a_malformed_groups_file_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "groups.csv"
    bad.write_text("name,cluster\na.jpg,1\n")
    with pytest.raises(LookalikeError, match="columns image,group"):
        read_truth(bad)
    with pytest.raises(LookalikeError, match="columns image,group"):
        read_truth(tmp_path / "missing.csv")


@dataclass(frozen=True)
class Pair:
    relation: str
    score: float
    inliers: int | None = None
    pixel_error: float | None = None
    agreement: float | None = None


def _judged(count: int, seed: int) -> tuple[list[Pair], np.ndarray]:
    """Keypoint pairs whose chance of being a copy rises with the pixels' agreement, as
    the fitted model assumes, and exact pairs that always are."""
    rng = np.random.default_rng(seed)
    agreement = rng.uniform(-0.2, 1.0, count)
    truth = 1 / (1 + np.exp(-(12 * agreement - 6)))
    labels = rng.random(count) < truth
    pairs = [Pair("cropped", 0.8, inliers=int(rng.integers(8, 60)), agreement=float(a))
             for a in agreement]
    pairs += [Pair("identical", 0.99)] * 50
    return pairs, np.r_[labels, np.ones(50, bool)]


def test_the_fitted_probability_is_calibrated_on_held_out_pairs(tmp_path: Path) -> None:
    pairs, labels = _judged(4000, seed=0)
    model = fit(pairs, labels, fitted_on="synthetic")
    held_pairs, held_labels = _judged(4000, seed=1)
    predicted = model(held_pairs)
    assert reliability(predicted, held_labels).expected_error < 0.03
    ranked = model([Pair("cropped", 0.8, inliers=20, agreement=a) for a in (0.1, 0.5, 0.9)])
    assert ranked[0] < 0.1 < ranked[1] < ranked[2] and ranked[2] > 0.9
    assert model([Pair("identical", 0.99)])[0] > 0.95
    model.save(tmp_path / "fit.json")
    again = CopyProbability.load(tmp_path / "fit.json")
    assert np.allclose(again(held_pairs), predicted, atol=1e-5)
    assert again.fitted_on == "synthetic"


def test_a_fit_needs_both_kinds_and_a_bad_file_says_so(tmp_path: Path) -> None:
    pairs, _ = _judged(100, seed=2)
    with pytest.raises(LookalikeError, match="both kinds"):
        fit(pairs, np.ones(len(pairs), bool))
    (tmp_path / "fit.json").write_text('{"features": ["score"], "weights": [1.0]}')
    with pytest.raises(LookalikeError, match=r"fit\.json: not a copy-probability fit"):
        CopyProbability.load(tmp_path / "fit.json")


def test_the_project_ships_a_fit_for_collections_without_their_own(tmp_path: Path) -> None:
    shipped = CopyProbability.for_collection(tmp_path)
    assert "lookalike dataset copies" in shipped.fitted_on
    exact, chance = shipped([Pair("identical", 0.99), Pair("similar", 0.55)])
    assert exact > 0.95 and chance < 0.2
    pairs, labels = _judged(500, seed=3)
    fit(pairs, labels, fitted_on="mine").save(tmp_path / "copy-probability.json")
    assert CopyProbability.for_collection(tmp_path).fitted_on == "mine"


def test_fit_probability_holds_out_whole_groups(tmp_path: Path) -> None:
    from lookalike.copy_truth import Truth
    from lookalike.duplicates import CopyPair, fit_probability

    rng = np.random.default_rng(4)
    group: dict[str, str | None] = {}
    pairs = []
    for g in range(60):  # an original and its copy, each confirmed by agreeing pixels
        group[f"o{g}"], group[f"c{g}"] = f"g{g}", f"g{g}"
        pairs.append(CopyPair(f"o{g}", f"c{g}", "cropped", 0.8, inliers=40,
                              agreement=float(rng.uniform(0.6, 1.0))))
        group[f"x{g}"] = None  # a look-alike: placed by chance, pixels disagree
        pairs.append(CopyPair(f"o{g}", f"x{g}", "cropped", 0.8, inliers=9,
                              agreement=float(rng.uniform(-0.2, 0.5))))
    fitted = fit_probability(pairs, Truth(group, {}), fitted_on="test")
    assert len(fitted.judged) == 120 and fitted.is_copy.sum() == 60
    assert fitted.held_out[fitted.is_copy].min() > fitted.held_out[~fitted.is_copy].max()
    assert fitted.reliability.expected_error < 0.2
    few = Truth({"o0": "g0", "c0": "g0", "x0": None}, {})
    with pytest.raises(LookalikeError, match="too few to hold half of the groups out"):
        fit_probability(pairs[:2], few)
