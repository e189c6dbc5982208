#!/usr/bin/env python
"""How the effnet descriptor was chosen: one table, one run, each step measured on the same objects.

Both sides use *ground-truth* masks (catalog alpha, scene instance masks), composited on the
pipeline's grey exactly as ``composite_for_embedding`` does, so the table isolates the descriptor
from segmentation. ``matcher eval DATASET --use-gt-boxes --model ...`` measures the chosen descriptors
again with the pipeline's own cutouts.

    .venv/bin/python scripts/bench_descriptor.py ../shared/bench/furniture-dev [--limit-scenes N]

Rows: pooling (average, GeM p=3, max), input size, multi-scale, the colour part, PCA-whitening fitted
on the catalog (shrinkage 0.5; queries projected with the catalog's fit), and the three variants.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from matcher.backends.classical_embedder import ClassicalEmbedder  # noqa: E402
from matcher.backends.effnet_embedder import COLOUR_WEIGHT, EffnetEmbedder, DescriptorConfig  # noqa: E402
from matcher.cutout import composite_for_embedding, mask_bbox  # noqa: E402
from matcher.evaluation.scenes import decode_segmentation, load_coco  # noqa: E402
from matcher.imageio import load_image  # noqa: E402
from matcher.types import Cutout  # noqa: E402

SIDE = 320  # composites are stored at this size; each descriptor resizes them to its own input


def composite(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    mask = alpha > 0.5
    cutout = Cutout(foreground=rgb.astype(np.float32) / 255, alpha=alpha, mask=mask, bbox=mask_bbox(mask),
                    coverage=float(mask.mean()), leakage_score=0.0)
    return cv2.resize(composite_for_embedding(cutout), (SIDE, SIDE), interpolation=cv2.INTER_AREA)


def load_objects(dataset: Path, limit_scenes: int | None):
    rows = [json.loads(line) for line in (dataset / "catalog" / "products.jsonl").open() if line.strip()]
    catalog = [composite(load_image(dataset / r["image"]).rgb,
                         load_image(dataset / r["alpha"]).rgb[..., 0].astype(np.float32) / 255) for r in rows]
    coco, by_image = load_coco(dataset)
    queries, truth = [], []
    index = {r["sku"]: i for i, r in enumerate(rows)}
    for img in [i for i in coco["images"] if by_image.get(i["id"])][:limit_scenes]:
        photo = load_image(dataset / img["file_name"]).rgb
        for ann in by_image[img["id"]]:
            if ann["sku"] in index:
                mask = decode_segmentation(ann, photo.shape[0], photo.shape[1]).astype(np.float32)
                queries.append(composite(photo, mask))
                truth.append(index[ann["sku"]])
    return catalog, queries, np.array(truth)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def recall(catalog: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> dict[int, float]:
    scores = unit(queries) @ unit(catalog).T
    rank = (scores > scores[np.arange(len(truth)), truth][:, None]).sum(1)
    return {k: float((rank < k).mean()) for k in (1, 5, 10)}


def whiten(catalog: np.ndarray, queries: np.ndarray, shrink: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """PCA-whitening fitted on the catalog side only, with shrinkage towards the mean eigenvalue."""
    c = unit(catalog)
    mean = c.mean(0)
    _u, s, vt = np.linalg.svd(c - mean, full_matrices=False)
    eigen = s ** 2 / len(c)
    projection = vt / np.sqrt(eigen + shrink * eigen.mean())[:, None]
    return unit((c - mean) @ projection.T), unit((unit(queries) - mean) @ projection.T)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--limit-scenes", type=int, default=None)
    args = parser.parse_args()
    catalog, queries, truth = load_objects(args.dataset, args.limit_scenes)
    images = catalog + queries
    n = len(catalog)
    print(f"{n} catalog products, {len(queries)} scene objects (ground-truth masks)\n")

    timings: dict[str, float] = {}

    def deep(variant: str, size: int, p: float) -> np.ndarray:
        key = f"{variant}-{size}-{p}"
        embedder = EffnetEmbedder(variant, device="cpu", config=DescriptorConfig(size=size, gem_p=p, colour_weight=0))
        start = time.perf_counter()
        out = embedder.deep_features(images)
        timings[key] = 1000 * (time.perf_counter() - start) / len(images)
        return out

    colour = unit(EffnetEmbedder("lite0", device="cpu").colour_features(images))
    classical_start = time.perf_counter()
    classical = ClassicalEmbedder().embed(images)
    classical_ms = 1000 * (time.perf_counter() - classical_start) / len(images)
    w = COLOUR_WEIGHT

    def with_colour(x: np.ndarray) -> np.ndarray:
        return np.concatenate([unit(x) * np.sqrt(1 - w * w), colour * w], axis=1)

    lite0 = {p: deep("lite0", 224, p) for p in (1.0, 3.0, 12.0)}
    rows: list[tuple[str, np.ndarray | tuple[np.ndarray, np.ndarray], float]] = [
        ("classical colour/texture/shape", classical, classical_ms),
        ("lite0 224 px, average pooling (GeM p=1)", lite0[1.0], timings["lite0-224-1.0"]),
        ("lite0 224 px, GeM p=3", lite0[3.0], timings["lite0-224-3.0"]),
        ("lite0 224 px, GeM p=12 (near max pooling)", lite0[12.0], timings["lite0-224-12.0"]),
    ]
    l288 = deep("lite0", 288, 3.0)
    l320 = deep("lite0", 320, 3.0)
    rows += [
        ("lite0 288 px, GeM p=3", l288, timings["lite0-288-3.0"]),
        ("lite0 224+320 px (multi-scale), GeM p=3", unit(lite0[3.0]) + unit(l320),
         timings["lite0-224-3.0"] + timings["lite0-320-3.0"]),
        ("lite0 224 px GeM p=3 + PCA-whitening (catalog fit)", whiten(lite0[3.0][:n], lite0[3.0][n:]),
         timings["lite0-224-3.0"]),
        ("lite0 224 px GeM p=3 + colour part  <- default", with_colour(lite0[3.0]), timings["lite0-224-3.0"]),
    ]
    white = whiten(lite0[3.0][:n], lite0[3.0][n:])
    rows.append(("lite0 ... + whitening + colour part",
                 (np.concatenate([white[0] * np.sqrt(1 - w * w), colour[:n] * w], 1),
                  np.concatenate([white[1] * np.sqrt(1 - w * w), colour[n:] * w], 1)), timings["lite0-224-3.0"]))
    for variant in ("lite1", "lite2"):
        x = deep(variant, 224, 3.0)
        rows.append((f"{variant} 224 px, GeM p=3", x, timings[f"{variant}-224-3.0"]))
        rows.append((f"{variant} 224 px, GeM p=3 + colour part", with_colour(x), timings[f"{variant}-224-3.0"]))

    print("| descriptor | recall@1 | recall@5 | recall@10 | network ms/image |\n|---|---|---|---|---|")
    for name, x, ms in rows:
        c, q = x if isinstance(x, tuple) else (x[:n], x[n:])
        r = recall(c, q, truth)
        print(f"| {name} | {r[1]:.3f} | {r[5]:.3f} | {r[10]:.3f} | {ms:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
