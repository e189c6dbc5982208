"""Query-path speed, old settings against new in one run: per-stage and total p50/p95 per photo over bench
scenes with their annotated boxes, with the quality figures beside them (query-cutout mask IoU against the
true instance masks, recall@1/5/10 of the right product).

    MATCHER_DATA_DIR=DIR .venv/bin/python scripts/bench_query.py ../shared/bench/furniture-dev --scenes 80

DIR must hold the data set's catalog indexed with the default backends (`matcher index DATASET/catalog/products.jsonl`,
or the index `matcher eval DATASET` leaves behind). Each photo is matched by both configurations, alternating
which goes first, nothing stored; the detector is not part of it (boxes are given), as in the issue's goal.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from matcher.query import QueryEngine  # noqa: E402
from matcher.segmentation.data import decode_mask  # noqa: E402
from matcher.settings import Settings  # noqa: E402
from matcher.types import Box  # noqa: E402

CONFIGS = {
    "old": {"query_matting_max_side": 1024, "fast_matting": False},
    "new": {},
}
STAGES = ("trace", "polish", "embed", "search", "rerank")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--scenes", type=int, default=80)
    parser.add_argument("--json", type=Path, help="Write the figures here too.")
    args = parser.parse_args()
    coco = json.loads((args.dataset / "scenes" / "instances.json").read_text())
    anns: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        anns.setdefault(ann["image_id"], []).append(ann)
    engines = {name: QueryEngine(Settings(**overrides)) for name, overrides in CONFIGS.items()}
    times = {name: {stage: [] for stage in STAGES + ("total",)} for name in CONFIGS}
    quality = {name: {"iou": [], "rank": []} for name in CONFIGS}
    images = [img for img in coco["images"] if anns.get(img["id"])][: args.scenes]
    for index, image in enumerate(images):
        objects = anns[image["id"]]
        order = list(CONFIGS) if index % 2 == 0 else list(reversed(CONFIGS))
        for name in order:
            result = engines[name].match(args.dataset / image["file_name"], store=False,
                                         boxes=[Box.from_xywh(*a["bbox"]) for a in objects])
            for stage in STAGES:
                times[name][stage].append(result.timings.get(stage, 0.0))
            times[name]["total"].append(sum(result.timings.get(stage, 0.0) for stage in STAGES))
            for ann, obj in zip(objects, result.objects):
                truth = decode_mask(ann["segmentation"], image["height"], image["width"])
                alpha = obj.full_alpha(image["height"], image["width"])
                mask = alpha > 0.5 if alpha is not None else np.zeros_like(truth)
                quality[name]["iou"].append(float((mask & truth).sum() / max((mask | truth).sum(), 1)))
                skus = [c.sku for c in obj.candidates]
                quality[name]["rank"].append(skus.index(ann["sku"]) + 1 if ann.get("sku") in skus else None)
    report = summarise(times, quality, len(images))
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _recall(ranks: list, k: int) -> float:
    return sum(1 for r in ranks if r is not None and r <= k) / max(len(ranks), 1)


def summarise(times: dict, quality: dict, photos: int) -> dict:
    out = {"photos": photos, "stages": {}, "quality": {}}
    for name in times:
        out["stages"][name] = {stage: {"p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95))}
                               for stage, v in times[name].items()}
        q = quality[name]
        out["quality"][name] = {"objects": len(q["iou"]), "mean_mask_iou": float(np.mean(q["iou"])),
                                **{f"recall@{k}": _recall(q["rank"], k) for k in (1, 5, 10)}}
    return out


def print_report(report: dict) -> None:
    old, new = report["stages"]["old"], report["stages"]["new"]
    print(f"{report['photos']} photos, annotated boxes, seconds per photo\n")
    print("| stage | old p50 | old p95 | new p50 | new p95 | p50 old/new | p95 old/new |")
    print("|---|---|---|---|---|---|---|")
    for stage in old:
        o, n = old[stage], new[stage]
        print(f"| {stage} | {o['p50']:.3f} | {o['p95']:.3f} | {n['p50']:.3f} | {n['p95']:.3f} | "
              f"{o['p50'] / max(n['p50'], 1e-9):.2f} | {o['p95'] / max(n['p95'], 1e-9):.2f} |")
    print("\n| config | objects | mean mask IoU | recall@1 | recall@5 | recall@10 |")
    print("|---|---|---|---|---|---|")
    for name, q in report["quality"].items():
        print(f"| {name} | {q['objects']} | {q['mean_mask_iou']:.4f} | {q['recall@1']:.4f} | {q['recall@5']:.4f} | "
              f"{q['recall@10']:.4f} |")


if __name__ == "__main__":
    raise SystemExit(main())
