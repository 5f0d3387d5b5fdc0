from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lookalike.calibration import (
    Calibrator,
    assess,
    calibrate_collection,
    fit_calibrator,
    judged_features,
    query_features,
)
from lookalike.collection import Collection
from lookalike.errors import LookalikeError
from lookalike.trec import Query


def test_query_features_from_the_formulas() -> None:
    x = query_features([0.9, 0.7, 0.5])
    np.testing.assert_allclose(x[:, 0], [0.9, 0.7, 0.5])
    np.testing.assert_allclose(x[:, 1], [0.0, 0.2, 0.4])
    np.testing.assert_allclose(x[:, 2], [0.2, 0.0, -0.2] / np.std([0.9, 0.7, 0.5]), atol=1e-12)
    np.testing.assert_allclose(x[:, 3], np.log([1, 2, 3]))
    np.testing.assert_allclose(x[:, 4:6], [[0.9, np.std([0.9, 0.7, 0.5])]] * 3)
    np.testing.assert_allclose(x[:, 6:], np.column_stack([x[:, 0] ** 2, x[:, 2] ** 2,
                                                          x[:, 0] * x[:, 2]]))
    np.testing.assert_allclose(query_features([0.4]), [[0.4, 0, 0, 0, 0.4, 0, 0.16, 0, 0]])


def _synthetic(rng: np.random.Generator, queries: int) -> dict[str, list[tuple[str, float]]]:
    """Each query has its own score offset: a raw score means different grades per query,
    while the score relative to the query's others carries the grade."""
    ranked = {}
    for q in range(queries):
        offset = rng.uniform(-0.3, 0.3)
        grades = rng.choice([0, 0, 0, 1, 3, 5], size=30)
        scores = 0.5 + offset + 0.06 * grades + rng.normal(0, 0.02, 30)
        order = np.argsort(-scores)
        ranked[f"q{q}"] = [(f"d{q}-{i}-g{grades[i]}", float(scores[i])) for i in order]
    return ranked


def _qrels(ranked: dict[str, list[tuple[str, float]]]) -> dict[str, dict[str, int]]:
    return {q: {d: int(d.rsplit("g", 1)[1]) for d, _ in hits if not d.endswith("g0")}
            for q, hits in ranked.items()}


def test_ordinal_model_uses_the_query_context_and_beats_the_baselines() -> None:
    rng = np.random.default_rng(0)
    fit_ranked, test_ranked = _synthetic(rng, 60), _synthetic(rng, 60)
    fit = judged_features(fit_ranked, _qrels(fit_ranked), depth=30)
    test = judged_features(test_ranked, _qrels(test_ranked), depth=30)
    ordinal = fit_calibrator(fit.features, fit.grades, model="ordinal", depth=30)
    isotonic = fit_calibrator(fit.features, fit.grades, model="isotonic", depth=30)
    report = assess(ordinal, fit, test)
    assert report["mae"] < 0.6 * report["mae_affine_raw"]
    assert report["mae"] < assess(isotonic, fit, test)["mae"]
    assert report["spearman"] > report["spearman_raw"]
    # judged-only figures: the hits the qrels grade (1, 3 or 5 here), not the easy zeros
    assert report["judged_test_hits"] == int(test.judged.sum()) < report["test_hits"]
    assert report["mae_judged"] < report["mae_affine_raw_judged"]
    cut = next(v for k, v in report.items() if k.startswith("raw>="))
    assert report["grade>=3"]["f1"] > cut["f1"]
    low, high = report["f1_difference"]["interval"]
    assert low <= report["f1_difference"]["value"] <= high
    assert report["verdict"].startswith("the calibrated cut-off is ahead of" if low > 0 else
                                        "the calibrated cut-off is not")
    c_low, c_high = report["cutoff_p(grade>=3)"]["interval"]
    assert 0 <= c_low <= c_high <= 1
    expected, at_least = ordinal.predict(test.features)
    assert (np.diff(at_least, axis=1) <= 1e-12).all()  # P(>= g) falls with g
    np.testing.assert_allclose(expected, at_least.sum(axis=1))
    assert ((expected >= 0) & (expected <= 5)).all()


def test_isotonic_is_monotone_and_files_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    ranked = _synthetic(rng, 30)
    hits = judged_features(ranked, _qrels(ranked), depth=30)
    x, y = hits.features, hits.grades
    for model in ("isotonic", "ordinal"):
        calibrator = fit_calibrator(x, y, model=model, depth=30)  # type: ignore[arg-type]
        calibrator.settings = {"query_regions": "grid:2", "verify": 20}
        calibrator.save(tmp_path / f"{model}.json")
        loaded = Calibrator.load(tmp_path / f"{model}.json")
        np.testing.assert_allclose(loaded.predict(x)[0], calibrator.predict(x)[0])
        assert loaded.mismatch("grid:2", 20) is None
        assert "calibrated on searches with query_regions grid:2, verify 20" in str(
            loaded.mismatch("none", 0))
    grades, _ = Calibrator.load(tmp_path / "isotonic.json").predict(
        query_features(np.linspace(1, 0, 50)))
    assert (np.diff(grades) <= 1e-12).all()
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(LookalikeError, match=r"bad\.json: not a readable calibration"):
        Calibrator.load(tmp_path / "bad.json")


def test_bad_judgements_give_clear_errors() -> None:
    x = query_features(np.linspace(1, 0, 30))
    with pytest.raises(LookalikeError, match="too few relevant judged hits"):
        fit_calibrator(x, np.r_[np.ones(5), np.zeros(25)])
    with pytest.raises(LookalikeError, match="only one grade"):
        fit_calibrator(x, np.full(30, 3.0))
    with pytest.raises(LookalikeError, match="no query of the results has qrels"):
        judged_features({"q": [("a", 1.0)]}, {"other": {"a": 1}}, depth=5)


def test_calibrated_collection_grades_and_filters_hits(tmp_path: Path, photo_dir: Path,  # type: ignore[no-untyped-def]
                                                      encoder) -> None:
    coll = Collection.create(tmp_path / "c", encoder=encoder)
    coll.index_folder(photo_dir)
    with pytest.raises(LookalikeError, match="not calibrated"):
        coll.search(like="coffee.jpg", min_grade=3)
    queries = [Query(f"q{i}", photo_dir / name) for i, name in enumerate(coll.ids())]
    with pytest.raises(LookalikeError, match="judge no image of the collection"):
        calibrate_collection(coll, queries, {"q0": {"elsewhere.jpg": 5}})
    # each photo is grade 5 for itself, 1 for the others that are photos of the same kind
    qrels = {q.id: {doc: 5 if doc == q.image.name else 1 for doc in coll.ids()[:3]}
             for q in queries}
    rng = np.random.default_rng(0)
    x = query_features(np.sort(rng.uniform(0, 1, 40))[::-1])
    fitted = fit_calibrator(x, np.repeat([5, 3, 1, 0], 10).astype(float), depth=10)
    assert all(0.0 < c < 1.0 for c in fitted.cutoffs)  # each grade's F1-best cut-off
    coll.set_calibration(fitted)
    assert Collection.open(coll.path).calibration.cutoffs == fitted.cutoffs  # type: ignore[union-attr]
    hits = coll.search(like="coffee.jpg", k=4)
    assert all(h.grade is not None and len(h.p_relevant or ()) == 5 for h in hits)
    assert [h.grade for h in hits] == sorted((h.grade for h in hits), reverse=True)
    assert "grade" in hits[0].to_dict()
    cut = float(np.median([h.grade for h in hits]))
    kept = coll.search(like="coffee.jpg", k=4, min_grade=cut)
    assert [h.id for h in kept] == [
        h.id for h in hits if fitted.at_least(np.array([h.p_relevant]), cut)[0]]
    assert [h.rank for h in kept] == list(range(1, len(kept) + 1))
    with pytest.raises(LookalikeError, match="too few relevant judged hits"):
        calibrate_collection(coll, queries, qrels, model="isotonic", depth=5)
    coll.set_calibration(None)
    assert coll.search(like="coffee.jpg", k=2)[0].grade is None


def test_calibration_is_fitted_on_the_rankings_users_get(tmp_path: Path, photo_dir: Path,  # type: ignore[no-untyped-def]
                                                        encoder) -> None:
    coll = Collection.create(tmp_path / "c", encoder=encoder)
    coll.index_folder(photo_dir)
    ids = coll.ids()
    queries = [Query(f"q{i}", photo_dir / name) for i, name in enumerate(ids)]
    qrels = {q.id: {doc: 5 if doc == q.image.name else 1 for doc in ids} for q in queries}
    depth = len(ids)
    half = calibrate_collection(coll, queries, qrels, depth=depth, query_regions="grid:2",
                                fit_fraction=0.7)
    every = calibrate_collection(coll, queries, qrels, depth=depth, query_regions="grid:2",
                                 fit_fraction=0.7, fit_all=True)
    assert half.calibrator.settings == {"query_regions": "grid:2", "verify": 0}
    assert half.report["query_regions"] == "grid:2" and "fit queries" in half.report["saved"]
    assert every.report["saved"] == f"refitted on all {len(ids)} queries (--fit-all)"
    # the held-out assessment is the same; what is saved differs
    assert every.report["mae"] == half.report["mae"]
    assert every.calibrator.params != half.calibrator.params
    coll.set_calibration(every.calibrator)
    assert Collection.open(coll.path).calibration.mismatch("grid:2", 0) is None  # type: ignore[union-attr]
