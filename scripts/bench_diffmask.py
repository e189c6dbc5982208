#!/usr/bin/env python
"""Benchmark ``matcher diffmask`` against the naive fixed-threshold RGB baseline.

1. Accuracy on the bench edit pairs (``edits/pairs.jsonl``): IoU of the predicted
   HARD change mask against ``change_mask`` for every pair, automatic threshold,
   default settings, no per-pair tuning; mean IoU and the share of pairs with
   IoU >= 0.8, for both methods in the same run.  Also reported: how far each
   method's composite strays outside the true change (share of pixels outside the
   ground truth dilated by the method's feather radius that are not the
   original bit for bit).
2. Speed at 2100x2800: bench pairs rotated to portrait, upscaled 3.5x to
   2100x2800 and re-encoded as JPEG (before q92, after q80) so the full-resolution
   files carry real block noise; each repetition times the full-resolution
   method and the baseline on every pair, interleaved (the order alternates per
   repetition), each run = change mask + composite on decoded arrays.  Median
   seconds per pair, the ratio, the preview path, and the full-resolution IoU
   against the upscaled ground truth.

Usage::

    .venv/bin/python scripts/bench_diffmask.py [--bench-dir DIR] [--speed-pairs 6] [--reps 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from matcher.diffmask import apply_change, compute_change_mask, naive_change_mask, naive_composite  # noqa: E402
from matcher.imageio import load_image  # noqa: E402


def default_bench_dir() -> Path:
    return Path(os.environ.get("MATCHER_BENCH_DIR", REPO.parent / "shared" / "bench" / "furniture-dev"))


def load_pairs(root: Path, limit: int | None = None) -> list[dict]:
    rows = [json.loads(line) for line in (root / "edits" / "pairs.jsonl").read_text().splitlines() if line.strip()]
    return rows[:limit] if limit else rows


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    union = np.logical_or(pred, gt).sum()
    return float(np.logical_and(pred, gt).sum() / union) if union else 1.0


def leak_outside(before: np.ndarray, comp: np.ndarray, gt: np.ndarray, radius: int) -> float:
    """Share of pixels outside ``gt`` dilated by ``radius`` where the composite is not the original."""
    k = 2 * max(0, radius) + 1
    zone = cv2.dilate(gt.astype(np.uint8), np.ones((k, k), np.uint8)) == 0
    differs = np.any(comp != before, axis=2)
    return float(differs[zone].mean()) if zone.any() else 0.0


def accuracy(root: Path, rows: list[dict]) -> dict:
    per_pair = []
    for row in rows:
        before = load_image(root / row["before"]).rgb
        after = load_image(root / row["after"]).rgb
        gt = np.asarray(Image.open(root / row["change_mask"]).convert("L")) > 127
        ours = compute_change_mask(before, after)
        naive = naive_change_mask(before, after)
        per_pair.append({
            "pair": row["before"],
            "gt_fraction": float(gt.mean()),
            "ours_iou": iou(ours.mask, gt),
            "naive_iou": iou(naive.mask, gt),
            "ours_threshold": ours.threshold,
            "ours_method": ours.threshold_method,
            "ours_regions": len(ours.regions),
            "ours_leak": leak_outside(before, apply_change(before, after, ours), gt, ours.feather_radius),
            "naive_leak": leak_outside(before, naive_composite(before, after, naive), gt, naive.feather_radius),
        })

    def summary(key: str) -> dict:
        values = np.array([p[key] for p in per_pair])
        return {"mean_iou": float(values.mean()), "share_iou_ge_0.8": float((values >= 0.8).mean()),
                "median_iou": float(np.median(values))}

    below_min = [p for p in per_pair if p["gt_fraction"] < 0.005]
    return {
        "n_pairs": len(per_pair),
        "ours": {**summary("ours_iou"), "mean_leak_outside_gt": float(np.mean([p["ours_leak"] for p in per_pair]))},
        "naive": {**summary("naive_iou"), "mean_leak_outside_gt": float(np.mean([p["naive_leak"] for p in per_pair]))},
        "pairs_with_change_below_min_region": len(below_min),
        "per_pair": per_pair,
    }


def _portrait_full(rgb: np.ndarray, quality: int, size=(2100, 2800)) -> np.ndarray:
    big = cv2.resize(np.ascontiguousarray(np.rot90(rgb)), size, interpolation=cv2.INTER_CUBIC)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(big, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def speed(root: Path, rows: list[dict], n_pairs: int, reps: int) -> dict:
    step = max(1, len(rows) // n_pairs)
    chosen = rows[::step][:n_pairs]
    pairs = []
    for row in chosen:
        before = load_image(root / row["before"]).rgb
        after = load_image(root / row["after"]).rgb
        gt = np.asarray(Image.open(root / row["change_mask"]).convert("L")) > 127
        gt_full = cv2.resize(np.ascontiguousarray(np.rot90(gt)).astype(np.uint8), (2100, 2800), interpolation=cv2.INTER_NEAREST) > 0
        pairs.append((row["before"], _portrait_full(before, 92), _portrait_full(after, 80), gt_full))

    def run_ours(b, a):
        change = compute_change_mask(b, a)
        apply_change(b, a, change)
        return change

    def run_naive(b, a):
        change = naive_change_mask(b, a)
        naive_composite(b, a, change)
        return change

    def run_preview(b, a):
        return compute_change_mask(b, a, preview=True)

    # warm-up (imports, OpenCV's thread pool), not timed
    run_ours(pairs[0][1], pairs[0][2])
    run_naive(pairs[0][1], pairs[0][2])
    times: dict[str, list[float]] = {"ours": [], "naive": [], "preview": []}
    per_pair_times: dict[str, dict[str, list[float]]] = {name: {"ours": [], "naive": [], "preview": []} for name, *_ in pairs}
    for rep in range(reps):
        order = [("ours", run_ours), ("naive", run_naive), ("preview", run_preview)]
        if rep % 2:
            order.reverse()
        for name, b, a, _ in pairs:
            for label, fn in order:
                t0 = time.perf_counter()
                fn(b, a)
                dt = time.perf_counter() - t0
                times[label].append(dt)
                per_pair_times[name][label].append(dt)
    full_iou = {"ours": [], "naive": []}
    for _, b, a, gt in pairs:
        full_iou["ours"].append(iou(compute_change_mask(b, a).mask, gt))
        full_iou["naive"].append(iou(naive_change_mask(b, a).mask, gt))
    native_iou = {"ours": [], "naive": []}  # the same pairs at their native 800x600, for comparison
    for row in chosen:
        b = load_image(root / row["before"]).rgb
        a = load_image(root / row["after"]).rgb
        gt = np.asarray(Image.open(root / row["change_mask"]).convert("L")) > 127
        native_iou["ours"].append(iou(compute_change_mask(b, a).mask, gt))
        native_iou["naive"].append(iou(naive_change_mask(b, a).mask, gt))
    ours_s, naive_s = statistics.median(times["ours"]), statistics.median(times["naive"])
    return {
        "size": "2100x2800",
        "pairs": len(pairs),
        "reps": reps,
        "ours_median_s": ours_s,
        "naive_median_s": naive_s,
        "preview_median_s": statistics.median(times["preview"]),
        "ours_p90_s": float(np.percentile(times["ours"], 90)),
        "naive_p90_s": float(np.percentile(times["naive"], 90)),
        "naive_over_ours": naive_s / ours_s,
        "full_res_mean_iou": {k: float(np.mean(v)) for k, v in full_iou.items()},
        "native_mean_iou_same_pairs": {k: float(np.mean(v)) for k, v in native_iou.items()},
        "per_pair_median_s": {name: {k: statistics.median(v) for k, v in d.items()} for name, d in per_pair_times.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench-dir", type=Path, default=default_bench_dir())
    parser.add_argument("--limit", type=int, default=None, help="only the first N pairs for accuracy")
    parser.add_argument("--speed-pairs", type=int, default=6)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="write the full report here")
    args = parser.parse_args(argv)
    root = args.bench_dir
    if not (root / "edits" / "pairs.jsonl").is_file():
        print(f"error: no edits/pairs.jsonl under {root}", file=sys.stderr)
        return 2
    cv2.setNumThreads(max(1, cv2.getNumThreads()))
    rows = load_pairs(root, args.limit)
    report: dict = {"bench_dir": str(root), "cv2_threads": cv2.getNumThreads(), "cpu_count": os.cpu_count()}
    report["accuracy"] = acc = accuracy(root, rows)
    print(f"Accuracy on {acc['n_pairs']} edit pairs (automatic threshold, default --min-region 0.5%; "
          f"{acc['pairs_with_change_below_min_region']} pairs change less than 0.5% of the frame)")
    print(f"{'method':<28}{'mean IoU':>10}{'IoU>=0.8':>10}{'median IoU':>12}{'leak outside GT':>17}")
    for key, label in (("ours", "diffmask (ΔE94, auto)"), ("naive", "naive RGB 10% / largest")):
        s = acc[key]
        print(f"{label:<28}{s['mean_iou']:>10.3f}{s['share_iou_ge_0.8']:>10.1%}{s['median_iou']:>12.3f}{s['mean_leak_outside_gt']:>17.2%}")
    if not args.no_speed:
        report["speed"] = sp = speed(root, rows, args.speed_pairs, args.reps)
        print(f"\nSpeed at {sp['size']} ({sp['pairs']} pairs x {sp['reps']} reps, interleaved; mask + composite per pair)")
        print(f"{'method':<28}{'median s':>10}{'p90 s':>10}{'full-res IoU':>14}{'same pairs 800x600':>20}")
        for key, label in (("ours", "diffmask full resolution"), ("naive", "naive RGB baseline")):
            print(f"{label:<28}{sp[key + '_median_s']:>10.3f}{sp[key + '_p90_s']:>10.3f}"
                  f"{sp['full_res_mean_iou'][key]:>14.3f}{sp['native_mean_iou_same_pairs'][key]:>20.3f}")
        print(f"{'diffmask --preview (mask)':<28}{sp['preview_median_s']:>10.3f}")
        print(f"speed ratio naive / diffmask: {sp['naive_over_ours']:.2f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"\nreport: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
