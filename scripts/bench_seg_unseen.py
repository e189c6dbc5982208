"""Box-prompted segmentation on products the learned model never saw: the learned segmenter (with and without
its locked refinement) against the classical one, on the validation and test objects of its training data set,
split by whether their product appears in a training photo.

    .venv/bin/python scripts/bench_seg_unseen.py ../shared/bench/furniture-dev [--model MODEL_DIR]

The held-out products stand in for a catalog the model was not trained on. One run, same boxes for all.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from matcher.backends.classical_segmenter import ClassicalSegmenter  # noqa: E402
from matcher.segmentation.data import decode_mask, load_rgb, read_bench, split_bench  # noqa: E402
from matcher.segmentation.evaluate import iou_and_dice  # noqa: E402
from matcher.segmentation.model import load_model_dir  # noqa: E402
from matcher.segmentation.predict import segment_boxes  # noqa: E402
from matcher.types import Box  # noqa: E402

METHODS = ("learned", "learned, no refinement", "classical")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--model", type=Path, help="Model directory (default: the shipped one).")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    model = load_model_dir(args.model)
    bench = read_bench(args.dataset)
    split = split_bench(bench, seed=model.config.training_seed)
    seen_skus = {inst.sku for i in split["train"] for inst in bench.scenes[i].instances}
    classical = ClassicalSegmenter()
    ious: dict[str, dict[str, list[float]]] = {group: {m: [] for m in METHODS} for group in ("unseen", "seen")}
    for image_id in split["val"] + split["test"]:
        image, instances = load_rgb(bench.scenes[image_id].path), bench.scenes[image_id].instances
        boxes = [(x, y, x + w, y + h) for x, y, w, h in (inst.bbox for inst in instances)]
        masks = {"learned": [r.mask > 0 for r in segment_boxes(image, boxes, model)],
                 "learned, no refinement": [r.mask > 0 for r in segment_boxes(image, boxes, model, refine="none")],
                 "classical": [m.binary for m in classical.segment(image, [Box.from_xywh(*i.bbox) for i in instances])]}
        for k, inst in enumerate(instances):
            truth = decode_mask(inst.rle, *image.shape[:2])
            group = "seen" if inst.sku in seen_skus else "unseen"
            for method in METHODS:
                ious[group][method].append(iou_and_dice(masks[method][k], truth)[0])
    report = {group: {"objects": len(v["classical"]), **{m: float(np.mean(x)) for m, x in v.items()}}
              for group, v in ious.items()}
    print(f"model {model.model_id}; validation + test objects of {args.dataset}, box IoU\n")
    print("| products | objects | " + " | ".join(METHODS) + " |")
    print("|---|---|" + "---|" * len(METHODS))
    for group, row in report.items():
        label = "never in a training photo" if group == "unseen" else "also in training photos"
        print(f"| {label} | {row['objects']} | " + " | ".join(f"{row[m]:.3f}" for m in METHODS) + " |")
    if args.json:
        args.json.write_text(json.dumps({"model": model.model_id, **report}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
