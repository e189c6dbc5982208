#!/usr/bin/env python3
"""Evaluate the classical segmenter + cutout stage on a bench catalog.

    python scripts/eval_masks.py /work/shared/bench/furniture-dev --limit 40 --json /tmp/masks.json

Prints the overall figures and a per-category table; ``--json`` writes the
full report (per item, worst items, load failures).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from matcher import registry  # noqa: E402
from matcher.evaluation.masks import evaluate_catalog_masks  # noqa: E402
from matcher.settings import Settings  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path, help="bench data set root (with catalog/products.jsonl)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N products")
    parser.add_argument("--json", dest="json_out", type=Path, default=None, help="write the full report here")
    parser.add_argument("--segmenter", default="classical", help="segmenter backend name (default: classical)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    settings = Settings()
    segmenter = registry.create("segmenter", args.segmenter, settings)
    start = time.perf_counter()
    report = evaluate_catalog_masks(args.dataset, segmenter, settings, limit=args.limit,
                                    progress=not args.no_progress)
    wall = time.perf_counter() - start
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2))

    o = report["overall"]
    print(f"segmenter {report['segmenter']}  items {o['n']}  failed to load {len(report['failed'])}  wall {wall:.1f}s")
    print(f"mean IoU {o['mean_iou']:.4f}  median IoU {o['median_iou']:.4f}  boundary F1 {o['boundary_f1']:.4f}")
    print(f"alpha SAD {o['alpha_sad']:.3f} (hard mask {o['binary_sad']:.3f})  "
          f"alpha MSE {o['alpha_mse']:.5f} (hard mask {o['binary_mse']:.5f})")
    print(f"leakage {o['leakage_count']}/{o['n']} = {o['leakage_rate']:.2%}  mask_fail {o['mask_fail']}  "
          f"flagged leakage {o['flagged_leakage']}  {o['seconds_per_image']:.3f} s/image")
    header = f"{'category':<16}{'n':>5}{'IoU':>8}{'medIoU':>8}{'BF1':>8}{'SAD':>8}{'SADbin':>8}{'leak':>7}{'fail':>6}{'s/img':>7}"
    print()
    print(header)
    print("-" * len(header))
    scopes = [*report["per_category"].items(), *report["per_background"].items(),
              *(("shadow: " + k, v) for k, v in report["per_contact_shadow"].items()), ("overall", o)]
    for name, row in scopes:
        print(f"{name:<16}{row['n']:>5}{row['mean_iou']:>8.4f}{row['median_iou']:>8.4f}{row['boundary_f1']:>8.4f}"
              f"{row['alpha_sad']:>8.3f}{row['binary_sad']:>8.3f}{row['leakage_rate']:>7.1%}{row['mask_fail']:>6}"
              f"{row['seconds_per_image']:>7.3f}")
    print()
    print("worst by IoU:")
    for it in report["worst"]:
        extra = f"  {it['fail_reason']}" if it["fail_reason"] else ""
        print(f"  {it['iou']:.4f}  {it['sku']:<48} {it['category']:<14} {it['background']:<16} "
              f"shadow={it['contact_shadow']:<4} {','.join(it['flags'])}{extra}")
    for f in report["failed"]:
        print(f"  failed line {f['line']} {f['sku']}: {f['reason']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
