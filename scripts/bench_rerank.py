#!/usr/bin/env python
"""How much the trained re-ranker lifts recall@1 over cosine on held-out scenes, over many splits.

One held-out split of a few hundred objects moves by 0.008 per object, so a
single train/test split cannot tell a better re-ranker from luck.  This script
measures the lift the way ``matcher rerank train`` trains, but over ``--splits``
different scene splits of the same labelled groups, and reports the mean, the
worst split and how often the model beat / matched cosine.

1. Index the bench catalog (if not yet) and query every annotated object of the
   bench scenes with its ground-truth box, ranking with the fixed formula (as
   `matcher eval --use-gt-boxes` does); each object becomes a labelled group of
   its top-``MATCHER_TOP_N`` candidates with their features.
2. Two views of the same groups:
   * ``bench``: all candidates (training from the bench's own labels);
   * ``review``: only the ``MATCHER_STORED_CANDIDATES`` best by the formula, as
     the review app stores and shows them (training from review decisions: an
     object whose product is not among them is a "none of these").
3. Feature sets, by dropping features from the rows: ``base`` (the eight of the
   first release), ``+parts`` (embedding part cosines), ``+gaps`` (within-list
   gaps), ``all``.
4. For each view x feature set x split seed: ``rerank.train`` (70 % of scenes)
   and held-out recall@1 / @5 of cosine, the formula and the model.

Usage::

    MATCHER_DATA_DIR=/tmp/rr .venv/bin/python scripts/bench_rerank.py [DATASET] [--splits 20] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from matcher.evaluation.scenes import evaluate_scenes  # noqa: E402
from matcher.features import FEATURE_NAMES, PART_FEATURES  # noqa: E402
from matcher.rerank import FORMULA, LabelledGroup, evaluate, formula_score, split_groups, train  # noqa: E402
from matcher.settings import Settings  # noqa: E402

BASE = ("cosine", "delta_e", "silhouette_iou", "aspect_agreement", "fill_agreement", "category_agreement",
        "cosine_rank", "cosine_gap")
PARTS = PART_FEATURES
GAPS = tuple(n for n in FEATURE_NAMES if n.endswith("_gap") and n not in BASE)
FEATURE_SETS = {"base": BASE, "+parts": BASE + PARTS, "+gaps": BASE + GAPS, "all": FEATURE_NAMES}


def default_bench_dir() -> Path:
    return Path(os.environ.get("MATCHER_BENCH_DIR", REPO.parent / "shared" / "bench" / "furniture-dev"))


def review_view(groups: list[LabelledGroup], stored: int) -> list[LabelledGroup]:
    """What the review app keeps: the ``stored`` best candidates by the formula."""
    out = []
    for g in groups:
        order = sorted(range(len(g.features)), key=lambda i: -formula_score(g.features[i]))[:stored]
        out.append(LabelledGroup(g.group_key, [g.features[i] for i in order], [g.labels[i] for i in order]))
    return out


def restrict(groups: list[LabelledGroup], names: tuple[str, ...]) -> list[LabelledGroup]:
    return [LabelledGroup(g.group_key, [{k: v for k, v in row.items() if k in names} for row in g.features], g.labels)
            for g in groups]


def measure(groups: list[LabelledGroup], splits: int) -> dict:
    per_split = []
    for seed in range(splits):
        model = train(groups, seed=seed, splits=1)  # this script does the splitting itself
        _train, held = split_groups(groups, 0.3, seed)
        formula = evaluate(FORMULA, held)
        m = model.metrics["held_out"]
        per_split.append({"seed": seed, "groups": m["groups"], "cosine@1": m["cosine_recall@1"],
                          "formula@1": formula["reranked_recall@1"], "model@1": m["reranked_recall@1"],
                          "cosine@5": m["cosine_recall@5"], "model@5": m["reranked_recall@5"],
                          "lift@1": m["lift_recall@1"]})
    lifts = [s["lift@1"] for s in per_split]
    mean = {key: round(statistics.fmean(s[key] for s in per_split), 4)
            for key in ("groups", "cosine@1", "formula@1", "model@1", "cosine@5", "model@5", "lift@1")}
    return {**mean, "lift@1_min": round(min(lifts), 4), "lift@1_max": round(max(lifts), 4),
            "splits_better": sum(v > 0 for v in lifts), "splits_equal": sum(v == 0 for v in lifts),
            "splits_worse": sum(v < 0 for v in lifts), "per_split": per_split}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", nargs="?", type=Path, default=default_bench_dir())
    parser.add_argument("--splits", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="only the first N scenes")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    settings = Settings(backend=os.environ.get("MATCHER_BACKEND", "classical"))
    start = time.perf_counter()
    _report, groups = evaluate_scenes(args.dataset, settings, use_gt_boxes=True, limit=args.limit, workers=args.workers,
                                      train_reranker=False)
    collected = time.perf_counter() - start
    views = {"bench": groups, "review": review_view(groups, settings.stored_candidates)}
    result = {"dataset": str(args.dataset), "objects": len(groups), "scenes": len({g.group_key for g in groups}),
              "splits": args.splits, "stored_candidates": settings.stored_candidates, "top_n": settings.top_n,
              "collect_seconds": round(collected, 1), "views": {}}
    print(f"{len(groups)} objects in {result['scenes']} scenes, collected in {collected:.0f} s; "
          f"{args.splits} splits, 30 % of scenes held out each")
    print(f"{'view':7s} {'features':8s} {'held-out':>8s} {'cosine@1':>9s} {'formula@1':>9s} {'model@1':>8s} "
          f"{'lift@1':>7s} {'worst':>7s} {'better/equal/worse':>19s} {'cosine@5':>9s} {'model@5':>8s}")
    for view, view_groups in views.items():
        result["views"][view] = {}
        for label, names in FEATURE_SETS.items():
            r = measure(restrict(view_groups, names), args.splits)
            result["views"][view][label] = r
            print(f"{view:7s} {label:8s} {r['groups']:8.1f} {r['cosine@1']:9.3f} {r['formula@1']:9.3f} {r['model@1']:8.3f} "
                  f"{r['lift@1']:+7.3f} {r['lift@1_min']:+7.3f} "
                  f"{r['splits_better']:>9d}/{r['splits_equal']}/{r['splits_worse']:<7d} {r['cosine@5']:9.3f} {r['model@5']:8.3f}",
                  flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
