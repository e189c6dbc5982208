"""Where box-prompted segmentation loses IoU: the learned model's box mode (ground-truth boxes, a photo's boxes
at once, its locked threshold, refinement and competing boxes) on the validation and test split of its training
data set, broken down by outline, overlap with other boxes and object size, with the worst instances; where the
lost IoU lies (pixels wrongly taken or missed, near the true outline, on other objects, elsewhere); two bounds
that say what does not limit it (the network's output grid; a shift of the outline by a pixel); and, with
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

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matcher.segmentation.predict as predict  # noqa: E402
from matcher.segmentation.data import (box_window, crop_window, load_rgb, outline_band, read_bench,  # noqa: E402
                                      resize_to, split_bench)
from matcher.segmentation.evaluate import iou_and_dice, scene_truth  # noqa: E402
from matcher.segmentation.model import SegModel, load_model_dir  # noqa: E402
from matcher.types import Box  # noqa: E402

OUTLINE_BAND_PX = 3  # pixels either side of the true outline: left out by "outline ignored", "near" in LOSS_PARTS
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


LOSS_PARTS = {  # each part's pixels over the union of mask and truth; per instance they add up to 1 - IoU
    "taken_near_outline": "wrongly taken, near the true outline",
    "taken_on_other_objects": "wrongly taken, on another annotated object",
    "taken_elsewhere": "wrongly taken, elsewhere (backdrop, gaps between parts)",
    "missed_near_outline": "missed, near the true outline",
    "missed_elsewhere": "missed, away from the outline",
}


def loss_parts(mask: np.ndarray, truth: np.ndarray, others: np.ndarray, near: np.ndarray) -> dict[str, float]:
    """Where one instance's IoU is lost: the wrong pixels by kind, each over the union (see LOSS_PARTS).
    ``others`` are the photo's other annotated objects, ``near`` the band around the true outline."""
    union = max(1, int(np.count_nonzero(mask | truth)))
    taken, missed = mask & ~truth, truth & ~mask
    counts = {"taken_near_outline": taken & near, "taken_on_other_objects": taken & ~near & others,
              "taken_elsewhere": taken & ~near & ~others, "missed_near_outline": missed & near,
              "missed_elsewhere": missed & ~near}
    return {name: np.count_nonzero(part) / union for name, part in counts.items()}


def output_grid_bound(truth: np.ndarray, box, model: SegModel) -> float:
    """The IoU of the true mask itself sent through the network's output grid (the box crop at half the crop
    size: the decoder's stride-2 logits), resized back and thresholded at 0.5: what resolution alone costs."""
    cfg = model.config
    window = box_window(box, cfg.box_margin)
    crop = crop_window(truth.astype(np.float32), window, 0.0)
    grid = resize_to(resize_to(crop, (cfg.box_size // 2, cfg.box_size // 2)), (cfg.box_size, cfg.box_size))
    back = cv2.resize(grid, (crop.shape[1], crop.shape[0]), interpolation=cv2.INTER_LINEAR) >= 0.5
    return iou_and_dice(predict.paste(window, back, truth.shape), truth)[0]


def shifted_outline_ious(mask: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """The IoU of the mask grown and shrunk by one pixel: if the outlines sat a pixel off one way, one of
    them would gain."""
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    mask8 = mask.astype(np.uint8)
    return (iou_and_dice(cv2.dilate(mask8, cross) > 0, truth)[0], iou_and_dice(cv2.erode(mask8, cross) > 0, truth)[0])


def instance_rows(photos: list[Photo], model: SegModel) -> list[dict]:
    rows = []
    for photo in photos:
        refined, plain = masks_of(photo, model), masks_of(photo, model, refine="none")
        for k, (truth, mask, rough) in enumerate(zip(photo.truths, refined, plain)):
            near = outline_band(truth, OUTLINE_BAND_PX)
            others = np.logical_or.reduce([t for j, t in enumerate(photo.truths) if j != k] + [np.zeros_like(truth)])
            grown, shrunk = shifted_outline_ious(mask, truth)
            rows.append({"part": photo.part, "image_id": photo.image_id, "sku": photo.skus[k],
                         "area": int(truth.sum()), "iou": iou_and_dice(mask, truth)[0],
                         "iou_unrefined": iou_and_dice(rough, truth)[0],
                         "iou_outline_ignored": iou_and_dice(mask & ~near, truth & ~near)[0],
                         **loss_parts(mask, truth, others, near),
                         "grid_bound": output_grid_bound(truth, photo.boxes[k], model),
                         "iou_grown": grown, "iou_shrunk": shrunk,
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
                     "loss_parts": {name: float(np.mean([r[name] for r in mine])) for name in LOSS_PARTS},
                     "output_grid_bound": float(np.mean([r["grid_bound"] for r in mine])),
                     "box_iou_grown_1px": float(np.mean([r["iou_grown"] for r in mine])),
                     "box_iou_shrunk_1px": float(np.mean([r["iou_shrunk"] for r in mine])),
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
        print(f"| where the IoU is lost ({OUTLINE_BAND_PX} px either side of the true outline is near) | share of "
              "the union, mean over instances |\n|---|---|")
        for name, text in LOSS_PARTS.items():
            print(f"| {text} | {s['loss_parts'][name]:.3f} |")
        print(f"| (all: 1 - box IoU) | {sum(s['loss_parts'].values()):.3f} |\n")
        print(f"Bounds: the true masks sent through the network's output grid keep IoU {s['output_grid_bound']:.3f}; "
              f"the masks grown by 1 px score {s['box_iou_grown_1px']:.3f}, shrunk by 1 px "
              f"{s['box_iou_shrunk_1px']:.3f}.\n")
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
