"""Where box-prompted segmentation loses IoU: the learned model's box mode (ground-truth boxes, a photo's boxes
at once, its locked threshold, refinement and competing boxes) on the validation and test split of its training
data set, broken down by outline, overlap with other boxes and object size, with the worst instances; and, with
``--options``, inference-time settings tried on the validation split.

    .venv/bin/python scripts/bench_seg_boxes.py ../shared/bench/furniture-dev [--model MODEL_DIR] [--options]

The network runs once per photo; thresholding, competing and GrabCut run per setting on the cached probabilities.
One run; the figures are instance IoU means.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matcher.segmentation.predict as predict  # noqa: E402
from matcher.segmentation.data import load_rgb, outline_band, read_bench, split_bench  # noqa: E402
from matcher.segmentation.evaluate import iou_and_dice, scene_truth  # noqa: E402
from matcher.segmentation.model import SegModel, load_model_dir  # noqa: E402
from matcher.types import Box  # noqa: E402

OUTLINE_BAND_PX = 3  # pixels either side of the true outline left out by the "outline ignored" figure
SIZE_BINS = (0, 1_000, 3_000, 10_000, 30_000)  # true mask area in pixels


@dataclass
class Photo:
    """One photo's boxes with their true masks and the network's (window, probabilities) per box."""

    image_id: int
    part: str
    image: np.ndarray
    boxes: list[tuple[float, float, float, float]]
    truths: list[np.ndarray]
    skus: list[str | None]
    prompts: list


def read_photos(model: SegModel, bench, split: dict[str, list[int]], parts: tuple[str, ...]) -> list[Photo]:
    photos = []
    for part in parts:
        for image_id in split[part]:
            scene = bench.scenes[image_id]
            image = load_rgb(scene.path)
            truths, _ = scene_truth(bench, image_id, image.shape[:2])
            boxes = [(x, y, x + w, y + h) for x, y, w, h in (inst.bbox for inst in scene.instances)]
            photos.append(Photo(image_id, part, image, boxes, truths, [inst.sku for inst in scene.instances],
                                predict.box_probabilities(model, image, boxes)))
    return photos


def masks_of(photo: Photo, model: SegModel, refine: str | None = None) -> list[np.ndarray]:
    """The photo's box masks at the model's locked settings (``refine`` overrides its box refinement)."""
    cfg = model.config
    return predict.box_masks(photo.image, photo.prompts, photo.boxes, cfg.threshold_box, cfg.postprocess_box,
                             cfg.refine_box if refine is None else refine, cfg.box_contest)


OVERLAP_KINDS = ["overlaps no other box", "partial overlap", "contains another box", "nested in another box"]


def overlap_kind(photo: Photo, index: int) -> str:
    """How this box meets the photo's other boxes (the last of OVERLAP_KINDS that applies): nested means at least
    90 % inside another box, as for competing boxes' nesting exception."""
    mine, kinds = Box(*photo.boxes[index]), {0}
    for j, other in enumerate(photo.boxes):
        theirs = Box(*other)
        shared = mine.intersection(theirs)
        if j != index and shared > 0:
            nested = predict.CONTEST_NESTED_SHARE
            kinds.add(3 if shared >= nested * mine.area else 2 if shared >= nested * theirs.area else 1)
    return OVERLAP_KINDS[max(kinds)]


SIZE_LABELS = [f"{lo}-{hi}" for lo, hi in zip(SIZE_BINS, SIZE_BINS[1:])] + [f">= {SIZE_BINS[-1]}"]


def size_bin(area: int) -> str:
    return SIZE_LABELS[sum(area >= b for b in SIZE_BINS[1:])]


def instance_rows(photos: list[Photo], model: SegModel) -> list[dict]:
    rows = []
    for photo in photos:
        refined, plain = masks_of(photo, model), masks_of(photo, model, refine="none")
        for k, (truth, mask, rough) in enumerate(zip(photo.truths, refined, plain)):
            keep = ~outline_band(truth, OUTLINE_BAND_PX)
            rows.append({"part": photo.part, "image_id": photo.image_id, "sku": photo.skus[k],
                         "area": int(truth.sum()), "iou": iou_and_dice(mask, truth)[0],
                         "iou_unrefined": iou_and_dice(rough, truth)[0],
                         "iou_outline_ignored": iou_and_dice(mask & keep, truth & keep)[0],
                         "overlap": overlap_kind(photo, k), "size": size_bin(int(truth.sum()))})
    return rows


def grouped(rows: list[dict], key: str, order: list[str] | None = None) -> dict[str, dict]:
    groups: dict[str, list[dict]] = {name: [] for name in order or []}
    for row in rows:
        groups.setdefault(row[key], []).append(row)
    groups = {name: g for name, g in groups.items() if g}
    return {name: {"n": len(g), "iou": float(np.mean([r["iou"] for r in g])),
                   "iou_unrefined": float(np.mean([r["iou_unrefined"] for r in g])),
                   "lost": float(sum(1 - r["iou"] for r in g))} for name, g in groups.items()}


def summarise(rows: list[dict], worst: int) -> dict:
    out = {}
    for part in sorted({r["part"] for r in rows}, reverse=True):
        mine = [r for r in rows if r["part"] == part]
        lost = sorted(mine, key=lambda r: r["iou"])
        total_loss = max(1e-9, sum(1 - r["iou"] for r in mine))
        out[part] = {"n": len(mine), "box_iou": float(np.mean([r["iou"] for r in mine])),
                     "box_iou_unrefined": float(np.mean([r["iou_unrefined"] for r in mine])),
                     "box_iou_outline_ignored": float(np.mean([r["iou_outline_ignored"] for r in mine])),
                     "worst_share_of_loss": sum(1 - r["iou"] for r in lost[:10]) / total_loss,
                     "by_overlap": grouped(mine, "overlap", OVERLAP_KINDS),
                     "by_size": grouped(mine, "size", SIZE_LABELS),
                     "worst": [{k: r[k] for k in ("image_id", "sku", "area", "iou", "iou_outline_ignored")}
                               for r in lost[:worst]]}
    return out


def with_constant(name: str, value) -> Callable[[Callable[[], float]], float]:
    """Run ``score`` with ``predict.<name>`` set to ``value`` (the module constants GrabCut reads)."""
    def run(score: Callable[[], float]) -> float:
        saved = getattr(predict, name)
        setattr(predict, name, value)
        try:
            return score()
        finally:
            setattr(predict, name, saved)
    return run


def option_sweep(photos: list[Photo], model: SegModel) -> dict[str, float]:
    """Validation box IoU under inference-time settings other than the shipped ones (same network outputs)."""
    val = [p for p in photos if p.part == "val"]

    def score() -> float:
        return float(np.mean([iou_and_dice(m, t)[0] for p in val for m, t in zip(masks_of(p, model), p.truths)]))

    results = {"shipped settings": score()}
    for name, values in (("GRABCUT_SIDE", (480, 640, 100_000)), ("GRABCUT_ITERATIONS", (1, 5, 8)),
                         ("GRABCUT_SURE", (0.9, 0.98))):
        for value in values:
            results[f"{name} = {value} (shipped {getattr(predict, name)})"] = with_constant(name, value)(score)
    # Crop settings change the network's input, so its probabilities are computed again for each.
    prompts = {p.image_id: p.prompts for p in val}
    for name, key, values in (("crop margin", "box_margin", (0.05, 0.15, 0.2)),
                              ("crop size (px)", "box_size", (320, 384))):
        shipped = getattr(model.config, key)
        for value in values:
            setattr(model.config, key, value)
            try:
                for p in val:
                    p.prompts = predict.box_probabilities(model, p.image, p.boxes)
                results[f"{name} {value} (shipped {shipped})"] = score()
            finally:
                setattr(model.config, key, shipped)
                for p in val:
                    p.prompts = prompts[p.image_id]
    return results


def print_report(report: dict) -> None:
    for part, s in report["splits"].items():
        print(f"\n## {part}: {s['n']} instances, box IoU {s['box_iou']:.3f} (no refinement "
              f"{s['box_iou_unrefined']:.3f}; {OUTLINE_BAND_PX} px either side of the true outline ignored "
              f"{s['box_iou_outline_ignored']:.3f}); "
              f"the 10 worst instances carry {s['worst_share_of_loss']:.0%} of the IoU lost\n")
        for title, key in (("overlap with the photo's other boxes", "by_overlap"), ("true area (px)", "by_size")):
            print(f"| {title} | n | box IoU | no refinement | IoU lost |\n|---|---|---|---|---|")
            for name, g in s[key].items():
                print(f"| {name} | {g['n']} | {g['iou']:.3f} | {g['iou_unrefined']:.3f} | {g['lost']:.2f} |")
            print()
        print("| worst: photo | sku | area | IoU | outline ignored |\n|---|---|---|---|---|")
        for w in s["worst"]:
            print(f"| {w['image_id']} | {w['sku']} | {w['area']} | {w['iou']:.3f} | "
                  f"{w['iou_outline_ignored']:.3f} |")
    if report.get("options"):
        print("\n## inference-time settings, validation box IoU\n\n| setting | box IoU |\n|---|---|")
        for name, value in report["options"].items():
            print(f"| {name} | {value:.4f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--model", type=Path, help="Model directory (default: the shipped one).")
    parser.add_argument("--worst", type=int, default=10, help="List this many worst instances per split.")
    parser.add_argument("--options", action="store_true", help="Also try inference-time settings on validation.")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    model = load_model_dir(args.model)
    bench = read_bench(args.dataset)
    photos = read_photos(model, bench, split_bench(bench, seed=model.config.training_seed), ("val", "test"))
    report = {"model": model.model_id, "splits": summarise(instance_rows(photos, model), args.worst)}
    if args.options:
        report["options"] = option_sweep(photos, model)
    print(f"# {report['model']} on {args.dataset}, ground-truth boxes")
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
