"""Ranking candidates: plain cosine until a trained gradient-boosted model has beaten it.

The default ranking (``FORMULA``, used until a model is trained and activated) is
the embedding cosine alone; the other features are computed, stored and explained
but do not reorder.  A hand-weighted blend (0.60 cosine + 0.15 palette + 0.15
silhouette IoU + ...) used to be the default; on scenes it was not tuned on it lost
to plain cosine at recall@1 (0.46 against 0.48), so a fresh install now ranks by
what is known not to lose, and only a model that wins on held-out scenes replaces it
(``activate="if-better"``).

The trained model is scikit-learn's HistGradientBoostingClassifier on the
features of ``matcher.features`` (pointwise: "is this candidate the right
product?"), with monotonic constraints where the direction is known (higher
cosine / IoU never hurts, higher ΔE never helps), which keeps it sane on small
training sets.  The within-list ``*_gap`` features give it what a pointwise
model otherwise lacks: how a candidate compares with the rest of its list.
No class re-weighting: the model only has to order candidates, and balancing
~1 positive against ~19 negatives made it worse (held-out recall@1 lift, mean
of 20 splits of the dev scenes, in an exploratory run: +0.043 balanced, +0.051
not).  Training
splits by *scene* (the group key), never by candidate, so the held-out lift is
measured on photos the model has not seen.  A model remembers the feature names it was
trained on, so models trained before a feature was added keep working.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Sequence

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier

from .features import FEATURE_NAMES, LIST_FEATURES, PART_FEATURES, feature_matrix

FORMULA_VERSION = "cosine-v1"
# Stored models are skops files: loading one builds only these types beyond skops' own safe set, so a
# crafted database row cannot run code (a pickle could). Anything else in a file is refused.
TRUSTED_MODEL_TYPES = ("sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",)


class UnsafeModelError(ValueError):
    """A stored re-ranker is not a skops file of the allowed types (an old pickle, or something crafted)."""
MONOTONIC = {"cosine": 1, "delta_e": -1, "silhouette_iou": 1, "aspect_agreement": 1, "fill_agreement": 1,
             "category_agreement": 1, "cosine_rank": -1, "cosine_gap": 1,
             **{name: 1 for name in PART_FEATURES},
             **{f"{name}_gap": 1 for name in LIST_FEATURES}}  # gaps are signed: closer to the best is better


def formula_score(features: dict[str, float]) -> float:
    return features["cosine"]


@dataclass
class Reranker:
    version: str
    kind: str  # "formula" | "hist_gradient_boosting"
    model: HistGradientBoostingClassifier | None = None
    metrics: dict = field(default_factory=dict)
    feature_names: tuple[str, ...] = FEATURE_NAMES  # what the model was trained on, in column order

    def score(self, rows: Sequence[dict[str, float]]) -> np.ndarray:
        if not rows:
            return np.zeros(0)
        if self.model is None:
            return np.array([formula_score(r) for r in rows])
        return self.model.predict_proba(feature_matrix(rows, self.feature_names))[:, 1]

    def to_bytes(self) -> bytes | None:
        import skops.io

        return None if self.model is None else skops.io.dumps(self.model)

    @classmethod
    def from_bytes(cls, version: str, kind: str, data: bytes | None, feature_names: Sequence[str],
                   metrics: dict | None = None) -> "Reranker":
        model = load_model(version, data) if data else None
        return cls(version=version, kind=kind, model=model, metrics=metrics or {}, feature_names=tuple(feature_names))


def load_model(version: str, data: bytes) -> HistGradientBoostingClassifier:
    """A stored model, built without unpickling: skops format and allow-listed types only."""
    import zipfile

    import skops.io

    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise UnsafeModelError(f"re-ranker {version} is not a skops file (older versions stored pickles, which can run "
                               "code when loaded), so it is not loaded; train a new one with `matcher rerank train`")
    try:
        untrusted = set(skops.io.get_untrusted_types(data=data))
    except Exception as exc:  # noqa: BLE001 - a damaged or crafted file: refused, never half-loaded
        raise UnsafeModelError(f"re-ranker {version} is not a readable skops file: {exc}") from exc
    unexpected = sorted(untrusted - set(TRUSTED_MODEL_TYPES))
    if unexpected:
        raise UnsafeModelError(f"re-ranker {version} contains types that are not allowed: {', '.join(unexpected)}")
    model = skops.io.loads(data, trusted=sorted(untrusted))
    if not isinstance(model, HistGradientBoostingClassifier):
        raise UnsafeModelError(f"re-ranker {version} holds a {type(model).__name__}, not a gradient-boosted model")
    return model


FORMULA = Reranker(version=FORMULA_VERSION, kind="formula")


def explain(features: dict[str, float]) -> str:
    category = {1.0: "same category", 0.0: "other category"}.get(features["category_agreement"], "category unknown")
    part_list = ", ".join(f"{name.removeprefix('cosine_')} {features[name]:.2f}" for name in PART_FEATURES
                          if name in features)
    parts = f" ({part_list})" if part_list else ""
    return (f"cosine {features['cosine']:.3f}{parts}, ΔE2000 {features['delta_e']:.1f}, "
            f"silhouette IoU {features['silhouette_iou']:.2f}, aspect {features['aspect_agreement']:.2f}, "
            f"fill {features['fill_agreement']:.2f}, {category}")


# --- training -------------------------------------------------------------------------------------

@dataclass
class LabelledGroup:
    """One query object's candidate list with the truth: which candidate is the right product."""

    group_key: str  # split unit, e.g. the scene / photo id
    features: list[dict[str, float]]
    labels: list[int]  # 1 for the right product, else 0

    @property
    def has_positive(self) -> bool:
        return any(self.labels)


def recall_at_k(groups: Sequence[LabelledGroup], scores: Sequence[np.ndarray], k: int) -> float:
    """Share of groups whose right product is among the ``k`` best-scored candidates."""
    if not groups:
        return 0.0
    hits = 0
    for group, group_scores in zip(groups, scores):
        order = np.argsort(-np.asarray(group_scores), kind="stable")[:k]
        hits += any(group.labels[i] for i in order)
    return hits / len(groups)


def split_groups(groups: Sequence[LabelledGroup], test_fraction: float, seed: int) -> tuple[list[LabelledGroup], list[LabelledGroup]]:
    """Split by group key, deterministically from a hash, so a scene is all train or all test."""
    def bucket(key: str) -> float:
        digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    train = [g for g in groups if bucket(g.group_key) >= test_fraction]
    test = [g for g in groups if bucket(g.group_key) < test_fraction]
    return train, test


def evaluate(reranker: Reranker, groups: Sequence[LabelledGroup]) -> dict[str, float]:
    cosine_scores = [np.array([f["cosine"] for f in g.features]) for g in groups]
    model_scores = [reranker.score(g.features) for g in groups]
    result = {"groups": len(groups)}
    for k in (1, 5, 10):
        result[f"cosine_recall@{k}"] = recall_at_k(groups, cosine_scores, k)
        result[f"reranked_recall@{k}"] = recall_at_k(groups, model_scores, k)
    result["lift_recall@1"] = result["reranked_recall@1"] - result["cosine_recall@1"]
    return result


def _fit(train_groups: Sequence[LabelledGroup], seed: int, max_iter: int):
    """Fit on the groups that contain the right product; returns (model, feature names, x, y)."""
    usable = [g for g in train_groups if g.has_positive]
    if len(usable) < 5:
        raise ValueError(f"need at least 5 labelled training groups with a correct candidate, have {len(usable)}")
    rows = [row for g in usable for row in g.features]
    # Only features the data has: e.g. no part cosines for an embedder without parts, none of the
    # newer features in decisions stored before they existed.  The model remembers which it used.
    names = tuple(name for name in FEATURE_NAMES if any(name in row for row in rows))
    x = feature_matrix(rows, names)
    y = np.concatenate([np.array(g.labels) for g in usable])
    model = HistGradientBoostingClassifier(
        max_iter=max_iter, learning_rate=0.08, max_leaf_nodes=15, min_samples_leaf=20, l2_regularization=1.0,
        monotonic_cst=[MONOTONIC[name] for name in names], random_state=seed)
    model.fit(x, y)
    return model, names, x, y


def train(groups: Sequence[LabelledGroup], *, test_fraction: float = 0.3, seed: int = 0,
          max_iter: int = 200, splits: int = 5) -> Reranker:
    """Fit on the train split's groups that contain the right product; report held-out metrics.

    One held-out split of a few hundred objects moves recall@1 by a few thousandths
    per object, so besides the returned model's own split, ``splits - 1`` more
    models are fitted on other scene splits and their lifts summarised in
    ``metrics["split_check"]`` (mean, worst, how many better / equal / worse):
    the figure to decide activation on.
    """
    train_groups, test_groups = split_groups(groups, test_fraction, seed)
    model, names, x, y = _fit(train_groups, seed, max_iter)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    digest = hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()[:8]
    reranker = Reranker(version=f"hgb-{stamp}-{digest}", kind="hist_gradient_boosting", model=model,
                        feature_names=names)
    held_out = evaluate(reranker, test_groups)
    reranker.metrics = {
        "train_groups": sum(g.has_positive for g in train_groups), "train_pairs": int(len(y)),
        "test_fraction": test_fraction, "seed": seed,
        "held_out": held_out,
        "held_out_with_positive": evaluate(reranker, [g for g in test_groups if g.has_positive]),
        "split_check": _split_check(groups, held_out["lift_recall@1"], test_fraction, seed, max_iter, splits),
        "features": list(names),
    }
    return reranker


def _split_check(groups: Sequence[LabelledGroup], first_lift: float, test_fraction: float, seed: int,
                 max_iter: int, splits: int) -> dict:
    lifts = [first_lift]
    for other in range(seed + 1, seed + max(1, splits)):
        train_groups, test_groups = split_groups(groups, test_fraction, other)
        try:
            model, names, _x, _y = _fit(train_groups, other, max_iter)
        except ValueError:
            continue  # too few labelled groups in this split's training part
        probe = Reranker(version="split-check", kind="hist_gradient_boosting", model=model, feature_names=names)
        lifts.append(evaluate(probe, test_groups)["lift_recall@1"])
    return {"splits": len(lifts), "lift_recall@1_mean": float(np.mean(lifts)), "lift_recall@1_min": float(min(lifts)),
            "better": sum(v > 0 for v in lifts), "equal": sum(v == 0 for v in lifts), "worse": sum(v < 0 for v in lifts)}


def reliable_lift(metrics: dict) -> float | None:
    """The lift to decide activation on: the mean over the split check, else the one held-out split's."""
    check = metrics.get("split_check") or {}
    if "lift_recall@1_mean" in check:
        return float(check["lift_recall@1_mean"])
    return (metrics.get("held_out") or {}).get("lift_recall@1")
