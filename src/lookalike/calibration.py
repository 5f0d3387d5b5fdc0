"""Calibrated relevance: map a hit's raw similarity to the 0-5 scale of graded judgements.

A cosine of 0.8 is "the same object" for one query and "unrelated" for another, so a score
alone is a poor cut-off. The calibrator sees each hit in its query's context:

| feature      | meaning                                                        |
|--------------|----------------------------------------------------------------|
| `score`      | the raw similarity                                             |
| `gap_to_top` | the query's top-1 score minus this one                         |
| `z_in_query` | (score - mean) / std over the query's top `depth` scores       |
| `log_rank`   | log of the 1-based rank                                        |
| `top_score`  | the query's top-1 score                                        |
| `query_std`  | the std of the query's top `depth` scores                      |
| `score^2`, `z^2`, `score*z` | curvature, so a linear model can bend           |

Two models, both fitted on a collection's own results for queries with graded qrels
(unjudged hits count as grade `unjudged`, 0 by default):
- `isotonic`: the baseline, monotone in the raw score alone (one isotonic regression for the
  expected grade and one for each P(grade >= g));
- `ordinal`: a cumulative-logit model over all the features,
  P(grade >= g) = sigmoid(w . x - theta_g) with theta_1 < ... < theta_5, fitted by maximum
  likelihood. The expected grade is sum_g P(grade >= g).

Hits carry the expected grade; as a single integer grade (for MAE) the median of the
predicted distribution is the better estimate, `median_grade`. The parameters are plain
numbers saved as JSON (`calibration.json` in a collection).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from lookalike.atomic import atomic_write
from lookalike.errors import LookalikeError

if TYPE_CHECKING:
    from lookalike.encoders import EncodeInput
    from lookalike.hits import Hit
    from lookalike.trec import Query

GRADES = (1, 2, 3, 4, 5)
FEATURES = ("score", "gap_to_top", "z_in_query", "log_rank", "top_score", "query_std",
            "score^2", "z^2", "score*z")
Model = Literal["ordinal", "isotonic"]
MIN_JUDGED_HITS = 20
DEFAULT_SETTINGS: dict[str, Any] = {"query_regions": "none", "verify": 0}


def query_features(scores: Sequence[float] | np.ndarray) -> np.ndarray:
    """Features (rows in rank order, columns `FEATURES`) of one query's ranked scores."""
    s = np.asarray(scores, np.float64)
    if s.size == 0:
        return np.empty((0, len(FEATURES)))
    std = s.std() if s.size > 1 else 0.0
    z = (s - s.mean()) / std if std > 1e-9 else np.zeros_like(s)
    return np.column_stack([s, s[0] - s, z, np.log(np.arange(1, s.size + 1)),
                            np.full_like(s, s[0]), np.full_like(s, std), s * s, z * z, s * z])


@dataclass
class Calibrator:
    """Predicts the expected grade and P(grade >= g), g = 1..5, of hits. `cutoffs[g - 1]`
    is the P(grade >= g) above which a hit counts as grade >= g: the value with the best F1
    on the fitted hits (0.5 when no fitted hit reached g)."""

    model: Model
    depth: int
    params: dict[str, Any] = field(default_factory=dict)
    cutoffs: list[float] = field(default_factory=lambda: [0.5] * len(GRADES))
    # the search settings of the rankings it was fitted on (query regions, verification)
    settings: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SETTINGS))

    def mismatch(self, query_regions: str = "none", verify: int = 0) -> str | None:
        """Why grades of a search with these settings may not mean what they say (None:
        they are the settings the calibration was fitted for)."""
        asked = {"query_regions": query_regions, "verify": verify}
        if asked == {**DEFAULT_SETTINGS, **self.settings}:
            return None
        shown = ", ".join(f"{k} {v}" for k, v in self.settings.items())
        return (f"grades were calibrated on searches with {shown}; this one re-ranks "
                "differently, so they are approximate (calibrate with the same options)")

    def at_least(self, at_least: np.ndarray, grade: float) -> np.ndarray:
        """Which hits (rows of P(grade >= g)) count as at least `grade` (rounded up)."""
        g = int(np.ceil(grade))
        if g <= 0:
            return np.ones(len(at_least), bool)
        return np.asarray(at_least[:, min(g, len(GRADES)) - 1] >= self.cutoffs[g - 1])

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(expected grade `(n,)`, P(grade >= g) `(n, 5)`)."""
        x = np.atleast_2d(features)
        if self.model == "isotonic":
            p = self.params
            at_least = np.column_stack([np.interp(x[:, 0], p["x"], y) for y in p["p_ge"]])
            return np.interp(x[:, 0], p["x"], p["grade"]), at_least
        z = (x - np.asarray(self.params["mean"])) / np.asarray(self.params["std"])
        at_least = _sigmoid(z @ np.asarray(self.params["w"])[:, None]
                            - np.asarray(self.params["theta"])[None, :])
        return at_least.sum(axis=1), at_least

    def predict_scores(self, scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """Predictions for one query's ranked scores (its top `depth` at least)."""
        return self.predict(query_features(scores))

    def save(self, path: Path) -> None:
        with atomic_write(path, "w") as fh:
            json.dump({"model": self.model, "depth": self.depth, "features": FEATURES,
                       "params": self.params, "cutoffs": self.cutoffs,
                       "settings": self.settings}, fh)

    @classmethod
    def load(cls, path: Path) -> Calibrator:
        try:
            data = json.loads(Path(path).read_text())
            cutoffs = [float(c) for c in data.get("cutoffs", [0.5] * len(GRADES))]
            settings = {**DEFAULT_SETTINGS, **data.get("settings", {})}
            return cls(data["model"], int(data["depth"]), data["params"], cutoffs, settings)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LookalikeError(f"{path}: not a readable calibration ({exc})") from None


def median_grade(at_least: np.ndarray) -> np.ndarray:
    """The median of each predicted grade distribution: the largest g with P(>= g) >= 0.5."""
    return (at_least >= 0.5).sum(axis=1).astype(float)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -40, 40)))


@dataclass(frozen=True)
class JudgedHits:
    """The top hits of judged queries: features, grades, the query number of each hit,
    and whether the qrels judge it (else its grade is the `unjudged` grade)."""

    features: np.ndarray
    grades: np.ndarray
    queries: np.ndarray
    judged: np.ndarray


def judged_features(ranked: Mapping[str, Sequence[tuple[str, float]]],
                    qrels: Mapping[str, Mapping[str, int]], *, depth: int, unjudged: int = 0
                    ) -> JudgedHits:
    """The top `depth` hits of the judged queries; `ranked` maps a query id to its
    `(doc, score)` list, in the order the search returned them."""
    xs, ys, qs, js = [], [], [], []
    for number, (qid, hits) in enumerate(ranked.items()):
        if qid not in qrels:
            continue
        top = list(hits)[:depth]
        xs.append(query_features([s for _, s in top]))
        ys.append([qrels[qid].get(doc, unjudged) for doc, _ in top])
        js.append([doc in qrels[qid] for doc, _ in top])
        qs.append(np.full(len(top), number))
    if not xs:
        raise LookalikeError("no query of the results has qrels")
    return JudgedHits(np.concatenate(xs), np.concatenate(ys).astype(float),
                      np.concatenate(qs), np.concatenate(js).astype(bool))


def fit_calibrator(features: np.ndarray, grades: np.ndarray, *, model: Model = "ordinal",
                   depth: int = 50) -> Calibrator:
    """Fit on judged hits; clear errors when the judgements cannot support a fit."""
    judged = int((grades > 0).sum())
    if judged < MIN_JUDGED_HITS:
        raise LookalikeError(f"too few relevant judged hits to calibrate: {judged} "
                             f"(at least {MIN_JUDGED_HITS} hits with grade > 0 are needed)")
    if np.unique(grades).size < 2:
        raise LookalikeError(f"only one grade ({int(grades[0])}) among the hits: "
                             "calibration needs at least two")
    if model == "isotonic":
        calibrator = Calibrator(model, depth, _fit_isotonic(features[:, 0], grades))
    elif model == "ordinal":
        calibrator = Calibrator(model, depth, _fit_ordinal(features, grades))
    else:
        raise LookalikeError(f"calibration model must be 'ordinal' or 'isotonic', got "
                             f"{model!r}")
    _, at_least = calibrator.predict(features)
    calibrator.cutoffs = [_best_threshold(at_least[:, g - 1], grades >= g)
                          if (grades >= g).any() else 0.5 for g in GRADES]
    return calibrator


def _fit_isotonic(score: np.ndarray, grades: np.ndarray) -> dict[str, Any]:
    from sklearn.isotonic import IsotonicRegression

    grid = np.unique(np.quantile(score, np.linspace(0, 1, 257)))

    def curve(target: np.ndarray) -> list[float]:
        iso = IsotonicRegression(increasing=True, out_of_bounds="clip").fit(score, target)
        return [float(v) for v in iso.predict(grid)]

    return {"x": grid.tolist(), "grade": curve(grades),
            "p_ge": [curve((grades >= g).astype(float)) for g in GRADES]}


def _fit_ordinal(features: np.ndarray, grades: np.ndarray, l2: float = 1e-3
                 ) -> dict[str, Any]:
    """Cumulative logit by maximum likelihood (L-BFGS); thresholds kept increasing by
    parametrising them as theta_1 + cumulative sums of exp(delta)."""
    from scipy.optimize import minimize

    mean, std = features.mean(axis=0), features.std(axis=0) + 1e-9
    z = (features - mean) / std
    y = np.clip(np.rint(grades).astype(int), 0, 5)
    d = z.shape[1]

    def unpack(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        theta = v[d] + np.concatenate([[0.0], np.cumsum(np.exp(v[d + 1:]))])
        return v[:d], theta

    def loss(v: np.ndarray) -> float:
        w, theta = unpack(v)
        ge = _sigmoid(z @ w[:, None] - theta[None, :])  # (n, 5): P(y >= 1..5)
        bounds = np.column_stack([np.ones(len(y)), ge, np.zeros(len(y))])  # P(y >= 0..6)
        p = bounds[np.arange(len(y)), y] - bounds[np.arange(len(y)), y + 1]
        return float(-np.log(np.maximum(p, 1e-12)).mean() + l2 * (w @ w))

    start = np.concatenate([np.zeros(d), [0.0], np.zeros(len(GRADES) - 1)])
    result = minimize(loss, start, method="L-BFGS-B")
    w, theta = unpack(result.x)
    return {"mean": mean.tolist(), "std": std.tolist(), "w": w.tolist(),
            "theta": theta.tolist(), "nll": float(result.fun)}


# -- evaluation on held-out queries --------------------------------------------------------

def assess(calibrator: Calibrator, fit: JudgedHits, test: JudgedHits, *, cutoff: int = 3,
           resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Held-out quality: MAE of the median and of the expected grade, Spearman of the
    expected grade, over all top hits and over the judged ones only (unjudged hits, graded
    0, are most hits and easy); the best affine rescaling of the raw score (least absolute
    error, fitted on the fit part) as the baseline. The 'grade >= cutoff' decision against
    the best raw-score threshold of the fit part, each scored by precision, recall and F1
    on the test part, with a 95 % bootstrap interval (over test queries) of the F1
    difference and of the cut-off itself (over fit queries), and a verdict."""
    from scipy.optimize import minimize
    from scipy.stats import spearmanr

    fx, fy, tx, ty = fit.features, fit.grades, test.features, test.grades
    expected, at_least = calibrator.predict(tx)
    judged = test.judged

    def affine_mae(v: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
        return float(np.abs(np.clip(v[0] * x + v[1], 0, 5) - y).mean())

    slope, icpt = np.polyfit(fx[:, 0], fy, 1)
    affine = minimize(affine_mae, [slope, icpt], args=(fx[:, 0], fy), method="Nelder-Mead").x
    threshold = _best_threshold(fx[:, 0], fy >= cutoff)
    calibrated = calibrator.at_least(at_least, cutoff)
    raw = tx[:, 0] >= threshold
    rng = np.random.default_rng(seed)
    difference = [_f1(calibrated[rows], ty[rows] >= cutoff) - _f1(raw[rows], ty[rows] >= cutoff)
                  for rows in _query_samples(test, resamples, rng)]
    _, fit_at_least = calibrator.predict(fx)
    moved = [_best_threshold(fit_at_least[rows, cutoff - 1], fy[rows] >= cutoff)
             for rows in _query_samples(fit, resamples, rng)]
    low, high = (float(v) for v in np.percentile(difference, [2.5, 97.5]))
    found = _f1(calibrated, ty >= cutoff) - _f1(raw, ty >= cutoff)
    verdict = ("ahead of" if low > 0 else "behind" if high < 0 else
               "not distinguishable from")
    return {
        "test_hits": len(ty),
        "judged_test_hits": int(judged.sum()),
        "mae": float(np.abs(median_grade(at_least) - ty).mean()),
        "mae_judged": float(np.abs(median_grade(at_least) - ty)[judged].mean()),
        "mae_expected": float(np.abs(expected - ty).mean()),
        "mae_affine_raw": affine_mae(affine, tx[:, 0], ty),
        "mae_affine_raw_judged": affine_mae(affine, tx[judged, 0], ty[judged]),
        "spearman": float(spearmanr(expected, ty).statistic),
        "spearman_judged": float(spearmanr(expected[judged], ty[judged]).statistic),
        "spearman_raw": float(spearmanr(tx[:, 0], ty).statistic),
        "spearman_raw_judged": float(spearmanr(tx[judged, 0], ty[judged]).statistic),
        f"grade>={cutoff}": _prf(calibrated, ty >= cutoff),
        f"raw>={threshold:.4f}": _prf(raw, ty >= cutoff),
        f"cutoff_p(grade>={cutoff})": {
            "value": calibrator.cutoffs[cutoff - 1],
            "interval": [float(v) for v in np.percentile(moved, [2.5, 97.5])]},
        "f1_difference": {"value": round(found, 4), "interval": [round(low, 4), round(high, 4)]},
        "verdict": f"the calibrated cut-off is {verdict} the best raw threshold on held-out "
                   f"queries (F1 {found:+.3f}, 95 % interval {low:+.3f} to {high:+.3f})",
    }


def _query_samples(hits: JudgedHits, resamples: int, rng: np.random.Generator
                   ) -> list[np.ndarray]:
    """Row numbers of `resamples` bootstrap samples of whole queries."""
    numbers = np.unique(hits.queries)
    rows = {int(q): np.flatnonzero(hits.queries == q) for q in numbers}
    return [np.concatenate([rows[int(q)] for q in rng.choice(numbers, len(numbers))])
            for _ in range(resamples)]


def _f1(predicted: np.ndarray, relevant: np.ndarray) -> float:
    tp = float((predicted & relevant).sum())
    return 2 * tp / max(1.0, float(predicted.sum() + relevant.sum()))


def _best_threshold(score: np.ndarray, relevant: np.ndarray) -> float:
    """The raw-score threshold with the best F1 for `relevant`."""
    order = np.argsort(-score)
    hits = np.cumsum(relevant[order])
    f1 = 2 * hits / (np.arange(1, len(score) + 1) + relevant.sum())
    return float(score[order][int(np.argmax(f1))])


def _prf(predicted: np.ndarray, relevant: np.ndarray) -> dict[str, float]:
    tp = float((predicted & relevant).sum())
    precision = tp / max(1.0, float(predicted.sum()))
    recall = tp / max(1.0, float(relevant.sum()))
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4)}


def reliability_plot(calibrator: Calibrator, features: np.ndarray, grades: np.ndarray,
                     path: Path, *, cutoff: int = 3) -> None:
    """`reliability_figure` as a PNG file."""
    import matplotlib.pyplot as plt

    fig = reliability_figure(calibrator, features, grades, cutoff=cutoff)
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)


def reliability_figure(calibrator: Calibrator, features: np.ndarray, grades: np.ndarray,
                       *, cutoff: int = 3) -> Any:
    """Predicted vs judged, in bins: the expected grade, and P(grade >= cutoff)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    expected, at_least = calibrator.predict(features)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, pred, truth, top, label in (
            (axes[0], expected, grades, 5.0, "expected grade"),
            (axes[1], at_least[:, cutoff - 1], (grades >= cutoff).astype(float), 1.0,
             f"P(grade >= {cutoff})")):
        edges = np.linspace(0, top, 11)
        which = np.clip(np.digitize(pred, edges) - 1, 0, 9)
        used = [b for b in range(10) if (which == b).any()]
        ax.plot([0, top], [0, top], ":", color="grey")
        ax.plot([pred[which == b].mean() for b in used],
                [truth[which == b].mean() for b in used], "o-")
        ax.set(xlabel=f"predicted {label}", ylabel="judged (mean per bin)", title=label)
    fig.tight_layout()
    return fig


class Searchable(Protocol):
    """What calibration searches: a `Collection` (passed in, not imported: the collection
    applies the calibration this module fits)."""

    def ids(self) -> list[str]: ...
    def search_many(self, items: Sequence[EncodeInput], *, k: int = 10,
                    query_regions: str = "none", verify: int = 0) -> list[list[Hit]]: ...


@dataclass
class CalibrationRun:
    """A calibrator fitted on one part of the queries and assessed on the rest."""

    calibrator: Calibrator
    report: dict[str, Any]
    test: tuple[np.ndarray, np.ndarray]  # features and grades of the held-out hits


def calibrate_collection(collection: Searchable, queries: Sequence[Query],
                         qrels: Mapping[str, Mapping[str, int]], *, model: Model = "ordinal",
                         depth: int = 50, unjudged: int = 0, fit_fraction: float = 0.5,
                         seed: int = 0, query_regions: str = "none", verify: int = 0,
                         fit_all: bool = False) -> CalibrationRun:
    """Search with every query as users will (`query_regions`, `verify`: the rankings the
    calibration learns are those), split the queries at random into fit and test parts,
    fit on the first and assess on the second; with `fit_all`, then refit on every query
    (the report's figures stay those of the held-out assessment)."""
    indexed = set(collection.ids())
    if not any(doc in indexed for judged in qrels.values() for doc in judged):
        raise LookalikeError("the qrels judge no image of the collection: are the ids paths "
                             "relative to the indexed folder?")
    judged = [q for q in queries if q.id in qrels]
    if len(judged) < 2:
        raise LookalikeError(f"{len(judged)} of the queries have qrels; at least 2 are needed "
                             "(one to fit, one to test)")
    items = [(q.image, q.crop) if q.crop else q.image for q in judged]
    results = collection.search_many(items, k=depth, query_regions=query_regions,
                                     verify=verify)
    order = np.random.default_rng(seed).permutation(len(judged))
    cut = min(len(judged) - 1, max(1, round(fit_fraction * len(judged))))

    def hits_of(part: np.ndarray) -> JudgedHits:
        ranked = {judged[i].id: [(h.id, h.score) for h in results[i]] for i in part}
        return judged_features(ranked, qrels, depth=depth, unjudged=unjudged)

    fit, test = hits_of(order[:cut]), hits_of(order[cut:])
    settings = {"query_regions": query_regions, "verify": verify}
    calibrator = replace(fit_calibrator(fit.features, fit.grades, model=model, depth=depth),
                         settings=settings)
    report = {"model": model, "depth": depth, "unjudged": unjudged, **settings,
              "fit_queries": int(cut), "test_queries": int(len(judged) - cut),
              **assess(calibrator, fit, test, seed=seed)}
    if fit_all:
        every = hits_of(order)
        calibrator = replace(fit_calibrator(every.features, every.grades, model=model,
                                            depth=depth), settings=settings)
        report["saved"] = f"refitted on all {len(judged)} queries (--fit-all)"
    else:
        report["saved"] = f"fitted on the {cut} fit queries"
    return CalibrationRun(calibrator, report, (test.features, test.grades))
