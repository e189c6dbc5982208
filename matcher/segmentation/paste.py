"""Copy-paste box samples: catalog cutouts composited into training photos (box-mode augmentation).

Room photos with instance masks are few (210 training photos on the dev bench); the catalog has a photo
and an exact alpha matte of every product.  A pasted sample puts one product's cutout (the *target*)
over a random window of a training photo, sometimes in front of another product (the box then holds two
objects and only the front one is the answer) and sometimes behind an occluder (the answer is the
target minus the occluder): the cases that cost box mode most on the validation split.  The box prompt
is the visible target's box, cut by the same ``box_sample`` as real instances.

Only products that appear in training photos (unless ``paste_seen`` is off) and, with ``paste_unplaced``,
catalog products that appear in no photo at all are pasted, so products seen only in validation or test photos
stay unseen.  Pure functions over numpy arrays, except :func:`load_cutouts`, which reads files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

from .predict import paste

# Target size on the canvas (share of its side), and the chances of a product behind it and of an occluder.
TARGET_SIDE = (0.3, 0.75)
BEHIND_P = 0.4
FRONT_P = 0.4
MIN_VISIBLE = 0.4  # an occluder may hide at most 60 % of the target; more, and it is left out
GAIN = (0.75, 1.1)  # brightness of a pasted product, as lights in a room differ from the studio's
CUTOUT_SIDE = 384  # cutouts are kept at most this many pixels on their long side


@dataclass(frozen=True)
class Cutout:
    sku: str
    rgb: np.ndarray  # uint8 (h, w, 3): the product's alpha bounding box
    alpha: np.ndarray  # float32 (h, w) in [0, 1]


def cutout_from(sku: str, rgb: np.ndarray, alpha: np.ndarray, max_side: int = CUTOUT_SIDE) -> Cutout | None:
    """The product's part of a catalog photo (None when the matte is empty)."""
    ys, xs = np.nonzero(alpha > 0.5)
    if len(ys) < 16:
        return None
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    rgb, alpha = rgb[y0:y1, x0:x1], alpha[y0:y1, x0:x1].astype(np.float32)
    scale = min(1.0, max_side / max(rgb.shape[:2]))
    if scale < 1.0:
        size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        alpha = cv2.resize(alpha, size, interpolation=cv2.INTER_AREA)
    return Cutout(sku, np.ascontiguousarray(rgb), alpha)


def pasted_products(seen: bool, unplaced: bool) -> str:
    """Which products a run's copy-paste samples use, in words (training log and model card)."""
    return " and ".join(["the products seen in training photos"] * seen
                        + ["the catalog products that no photo of the data set shows"] * unplaced)


def load_cutouts(root: Path, products: dict[str, dict], skus: Iterable[str]) -> list[Cutout]:
    """Cutouts of ``skus`` from the catalog's photos and alpha mattes; rows without both files are skipped."""
    from PIL import Image

    from .data import load_rgb

    out = []
    for sku in sorted(set(skus)):
        row = products.get(sku) or {}
        if not row.get("image") or not row.get("alpha"):
            continue
        try:
            rgb = load_rgb(Path(root) / row["image"])
            with Image.open(Path(root) / row["alpha"]) as matte:
                alpha = np.asarray(matte.convert("L"), np.float32) / 255.0
        except (OSError, ValueError):  # a broken catalog file teaches nothing; the others still do
            continue
        if alpha.shape != rgb.shape[:2]:
            continue
        cutout = cutout_from(sku, rgb, alpha)
        if cutout is not None:
            out.append(cutout)
    return out


def _scaled(cutout: Cutout, long_side: float, gain: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = cutout.alpha.shape
    scale = max(4.0, long_side) / max(h, w)
    size = (max(2, round(w * scale)), max(2, round(h * scale)))
    rgb = cv2.resize(cutout.rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    alpha = cv2.resize(cutout.alpha, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    return np.clip(rgb.astype(np.float32) * gain, 0, 255), np.clip(alpha, 0.0, 1.0)


def _placed(values: np.ndarray, x: int, y: int, canvas: int) -> np.ndarray:
    """A cutout's alpha (h, w) or colours (h, w, 3) with its top-left corner at (x, y) on a zero square canvas."""
    h, w = values.shape[:2]
    return paste((x, y, x + w, y + h), values, (canvas, canvas, *values.shape[2:]))


def _composite(image: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, x: int, y: int) -> None:
    """Alpha-blend ``rgb`` placed at (x, y) into ``image`` in place; ``alpha`` is already on the canvas grid."""
    a = alpha[..., None]
    image *= 1.0 - a
    image += a * _placed(rgb, x, y, image.shape[0])


def _near(center: tuple[float, float], spread: float, size: tuple[int, int], rng) -> tuple[int, int]:
    """Top-left corner of a (h, w) cutout whose centre lies within ``spread`` of ``center``."""
    cx, cy = center[0] + rng.uniform(-spread, spread), center[1] + rng.uniform(-spread, spread)
    return int(round(cx - size[1] / 2)), int(round(cy - size[0] / 2))


def paste_composite(background: np.ndarray, target: Cutout, others: Sequence[Cutout], rng: np.random.Generator,
                    canvas: int = 384) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 RGB canvas x canvas, float target mask): ``target`` over a random window of ``background``,
    perhaps in front of one of ``others`` and perhaps behind another (see the module docstring)."""
    h, w = background.shape[:2]
    side = max(8, int(rng.uniform(0.35, 0.9) * min(h, w)))
    bx, by = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    image = cv2.resize(background[by:by + side, bx:bx + side], (canvas, canvas),
                       interpolation=cv2.INTER_AREA).astype(np.float32)
    t_rgb, t_alpha = _scaled(target, rng.uniform(*TARGET_SIDE) * canvas, rng.uniform(*GAIN))
    tx = int(rng.integers(0, max(1, canvas - t_alpha.shape[1]) + 1))
    ty = int(rng.integers(0, max(1, canvas - t_alpha.shape[0]) + 1))
    centre = (tx + t_alpha.shape[1] / 2, ty + t_alpha.shape[0] / 2)
    t_side = max(t_alpha.shape)
    if others and rng.random() < BEHIND_P:
        b_rgb, b_alpha = _scaled(others[int(rng.integers(len(others)))], rng.uniform(0.6, 1.3) * t_side,
                                 rng.uniform(*GAIN))
        x, y = _near(centre, 0.5 * t_side, b_alpha.shape, rng)
        _composite(image, b_rgb, _placed(b_alpha, x, y, canvas), x, y)
    mask = _placed(t_alpha, tx, ty, canvas)
    _composite(image, t_rgb, mask, tx, ty)
    if others and rng.random() < FRONT_P:
        f_rgb, f_alpha = _scaled(others[int(rng.integers(len(others)))], rng.uniform(0.3, 0.8) * t_side,
                                 rng.uniform(*GAIN))
        x, y = _near(centre, 0.6 * t_side, f_alpha.shape, rng)
        front = _placed(f_alpha, x, y, canvas)
        visible = mask * (1.0 - front)
        if visible.sum() >= MIN_VISIBLE * mask.sum():
            _composite(image, f_rgb, front, x, y)
            mask = visible
    return np.clip(image, 0, 255).astype(np.uint8), mask

