"""``matcher eval --model A --model B ...``: several embedders on the same cutouts, in one run.

Every model gets its own embedding space, filled by the normal indexer (so its
throughput is the real one: load, segment, matte, embed, store).  The scenes'
query cutouts are made once per photo with the first model's engine and then
embedded and searched in each space, so the models are compared on identical
masks.  Ranking is plain cosine here (the descriptor's own quality); the
re-ranker is trained and measured per model on scene splits afterwards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import registry
from ..query import QueryEngine, user_detections
from ..rerank import FORMULA, LabelledGroup
from ..settings import Settings
from ..types import Box
from .scenes import (_catalog_categories, _ensure_indexed, _rank_of, _reranker_report, annotated_images, load_coco,
                     scene_photos)


def compare_embedders(dataset: Path, settings: Settings, models: Sequence[str], *, limit: int | None = None,
                      workers: int = 1, progress: bool = True, train_reranker: bool = True) -> dict[str, Any]:
    """Index the catalog in each model's space, query every scene's ground-truth boxes, report per model."""
    dataset = Path(dataset)
    engines: dict[str, QueryEngine] = {}
    indexing: dict[str, dict[str, Any]] = {}
    for model in models:
        model_settings = registry.settings_for_model(model, settings)
        report = _ensure_indexed(dataset, model_settings, workers, progress)
        indexing[model] = {"space": report.space, "processed": report.processed, "seconds": round(report.seconds, 2),
                           "products_per_s": round(report.processed / report.seconds, 3) if report.processed else None}
        engine = QueryEngine(model_settings, space_name=report.space)
        engine.reranker = FORMULA  # plain cosine: the descriptor's own ranking
        engines[model] = engine

    coco, by_image = load_coco(dataset)
    category_of_sku = _catalog_categories(dataset)
    images = annotated_images(coco, by_image, limit)
    first = engines[models[0]]
    ranks: dict[str, list[int | None]] = {m: [] for m in models}
    category_hits: dict[str, list[bool]] = {m: [] for m in models}
    groups: dict[str, list[LabelledGroup]] = {m: [] for m in models}
    embed_seconds = dict.fromkeys(models, 0.0)
    embedded = 0
    failures = []
    for img, photo, anns in scene_photos(dataset, images, by_image, failures, progress):
        detections = user_detections(photo, [Box.from_xywh(*a["bbox"]) for a in anns], None)
        masks = first.trace(photo, detections)
        cutouts = [first.polish(photo, d, m) for d, m in zip(detections, masks)]
        embedded += sum(c.ok for c in cutouts)
        for model, engine in engines.items():
            timings: dict[str, float] = {}
            results = engine.identify(cutouts, detections, settings.top_n, False, timings)
            embed_seconds[model] += timings.get("embed", 0.0)
            for ann, candidates in zip(anns, results):
                ranks[model].append(_rank_of(candidates, ann["sku"]))
                expected = category_of_sku.get(ann["sku"])
                category_hits[model].append(any(c.category == expected for c in candidates[:5]))
                groups[model].append(LabelledGroup(str(img["id"]), [c.features for c in candidates],
                                                   [int(c.sku == ann["sku"]) for c in candidates]))

    per_model = {}
    for model in models:
        n = len(ranks[model])
        row: dict[str, Any] = {"space": indexing[model]["space"], "objects": n}
        for k in (1, 5, 10):
            row[f"recall@{k}"] = round(sum(1 for r in ranks[model] if r is not None and r <= k) / n, 4) if n else 0.0
        row["category_recall@5"] = round(float(np.mean(category_hits[model])), 4) if n else 0.0
        row["embed_ms_per_image"] = round(1000 * embed_seconds[model] / embedded, 2) if embedded else None
        row["index"] = indexing[model]
        if train_reranker and groups[model]:
            row["reranker"] = _reranker_report(groups[model], FORMULA, True)
        per_model[model] = row
    return {"dataset": str(dataset), "scenes": len(images), "query_cutouts": embedded, "failures": failures,
            "ranking": "cosine", "models": per_model}
