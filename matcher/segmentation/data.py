"""Bench-format data for learned segmentation: reading, the image-id split, crops and augmentations.

A bench data set (see ``shared/bench/README.md``) has ``catalog/products.jsonl`` (sku, name,
tags) and ``scenes/instances.json`` (COCO, RLE masks, a ``sku`` per annotation).  Each
annotation's label comes from its product through :func:`labels.label_for_product`.
Visible products too small to annotate (``unannotated``) are ignore regions.

Two kinds of sample feed the one network:

* **box**: the annotated box, jittered like a detector's box, grown by ``box_margin`` on every
  side, cropped and resized to ``box_size``²; target = that instance's mask (channel 0).
* **text**: the whole photo, randomly scaled and cropped, resized to the text canvas; targets =
  one mask per label, the union of that label's instances (channels 1..L).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from .labels import label_for_product

# ImageNet statistics as 0-255 RGB: crops are padded with the mean colour so padding normalises to ~0.
PAD_RGB = (124, 116, 104)
SPLIT_NAMES = ("train", "val", "test")


class NotABenchError(FileNotFoundError):
    pass


@dataclass
class Instance:
    ann_id: int
    sku: str
    label: str | None
    bbox: tuple[float, float, float, float]  # x, y, w, h of the visible mask
    rle: dict
    area: int


@dataclass
class Scene:
    image_id: int
    path: Path
    width: int
    height: int
    instances: list[Instance]
    ignore_boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    split: str | None = None  # set by data sets that ship their split (``matcher dataset export``)

    @property
    def labels(self) -> set[str]:
        return {i.label for i in self.instances if i.label is not None}


@dataclass
class Bench:
    root: Path
    scenes: dict[int, Scene]
    label_of_sku: dict[str, str | None]

    def label_counts(self, image_ids: Sequence[int] | None = None) -> dict[str, int]:
        """Instances per label (None-labelled ones under '(none)')."""
        counts: dict[str, int] = {}
        for image_id in image_ids if image_ids is not None else self.scenes:
            for inst in self.scenes[image_id].instances:
                key = inst.label or "(none)"
                counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items()))


def read_products(root: Path) -> dict[str, dict]:
    path = root / "catalog" / "products.jsonl"
    if not path.is_file():
        raise NotABenchError(f"not a bench-format data set: missing {path}")
    products = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            products[row["sku"]] = row
    return products


def read_bench(root: Path | str) -> Bench:
    """Scenes with labelled instances; products missing from the catalog get no label."""
    root = Path(root)
    products = read_products(root)
    coco_path = root / "scenes" / "instances.json"
    if not coco_path.is_file():
        raise NotABenchError(f"not a bench-format data set: missing {coco_path}")
    coco = json.loads(coco_path.read_text())
    label_of_sku = {sku: label_for_product(p.get("name", ""), p.get("tags") or ()) for sku, p in products.items()}
    scenes = {img["id"]: Scene(img["id"], root / img["file_name"], int(img["width"]), int(img["height"]), [],
                               [tuple(u["bbox"]) for u in img.get("unannotated") or [] if "bbox" in u],
                               img.get("split") if img.get("split") in SPLIT_NAMES else None)
              for img in coco["images"]}
    for ann in coco["annotations"]:
        sku = ann.get("sku") or ""
        label = ann.get("label") or label_of_sku.get(sku)  # a reviewed data set names the label when no sku was approved
        scenes[ann["image_id"]].instances.append(
            Instance(ann["id"], sku, label, tuple(ann["bbox"]), ann["segmentation"], int(ann["area"])))
    return Bench(root, {k: s for k, s in scenes.items() if s.instances}, label_of_sku)


def encode_mask(mask: np.ndarray) -> dict:
    """A bool (H, W) mask as COCO RLE with ``counts`` as text (JSON-ready); :func:`decode_mask` reads it back."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_mask(rle: dict, height: int, width: int) -> np.ndarray:
    """A COCO RLE (``counts`` as str or bytes) as a bool (H, W) array."""
    from pycocotools import mask as mask_utils

    rle = dict(rle)
    if isinstance(rle.get("counts"), str):
        rle["counts"] = rle["counts"].encode("utf-8")
    rle.setdefault("size", [height, width])
    return mask_utils.decode(rle).astype(bool)


def load_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


# --- the split ----------------------------------------------------------------------------------------------------


def split_image_ids(labels_by_image: dict[int, set[str]], seed: int = 42,
                    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> dict[str, list[int]]:
    """Image ids -> train/val/test, keeping every label in every split where its images allow it.

    Rarest labels first: when val or test lacks a label and at least two unassigned images carry it
    (so one is left for train), one of them goes there; then one image of every label train lacks is
    kept for train.  The rest are dealt in a seeded random order to val and test up to their target
    sizes; train takes what is left.
    """
    rng = np.random.default_rng(seed)
    ids = sorted(labels_by_image)
    ids = [ids[i] for i in rng.permutation(len(ids))]
    targets = {"val": round(fractions[1] * len(ids)), "test": round(fractions[2] * len(ids))}
    assigned: dict[int, str] = {}
    frequency: dict[str, int] = {}
    for image_id in ids:
        for label in labels_by_image[image_id]:
            frequency[label] = frequency.get(label, 0) + 1
    rarest_first = sorted(frequency, key=lambda k: (frequency[k], k))
    for label in rarest_first:
        for split in ("test", "val"):
            if any(assigned.get(i) == split and label in labels_by_image[i] for i in ids):
                continue
            free = [i for i in ids if i not in assigned and label in labels_by_image[i]]
            if len(free) >= 2:  # one stays free for train
                assigned[free[0]] = split
    for label in rarest_first:  # reserve that one for train before the rest is dealt
        if not any(assigned.get(i) == "train" and label in labels_by_image[i] for i in ids):
            free = [i for i in ids if i not in assigned and label in labels_by_image[i]]
            if free:
                assigned[free[0]] = "train"
    for image_id in ids:
        if image_id in assigned:
            continue
        short = [s for s in ("val", "test") if sum(v == s for v in assigned.values()) < targets[s]]
        assigned[image_id] = short[0] if short else "train"
    return {name: sorted(i for i in ids if assigned[i] == name) for name in SPLIT_NAMES}


def split_bench(bench: Bench, seed: int = 42) -> dict[str, list[int]]:
    """The data set's own split when every photo carries one, else :func:`split_image_ids`."""
    if bench.scenes and all(s.split for s in bench.scenes.values()):
        return {name: sorted(k for k, s in bench.scenes.items() if s.split == name) for name in SPLIT_NAMES}
    return split_image_ids({k: s.labels for k, s in bench.scenes.items()}, seed=seed)


# --- geometry shared by training and inference --------------------------------------------------------------------


def text_canvas(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(H, W) of the network input for a whole photo: long side ``long_side``, both multiples of 32."""
    scale = long_side / max(height, width)
    return (max(32, int(math.ceil(height * scale / 32)) * 32), max(32, int(math.ceil(width * scale / 32)) * 32))


def box_window(box_xyxy: Sequence[float], margin: float) -> tuple[int, int, int, int]:
    """The crop window of a box prompt: the box grown by ``margin`` of its size on every side (may leave the image)."""
    x0, y0, x1, y1 = box_xyxy
    dx, dy = max(x1 - x0, 1.0) * margin, max(y1 - y0, 1.0) * margin
    return (int(math.floor(x0 - dx)), int(math.floor(y0 - dy)), int(math.ceil(x1 + dx)), int(math.ceil(y1 + dy)))


def crop_window(array: np.ndarray, window: tuple[int, int, int, int], fill) -> np.ndarray:
    """``array[y0:y1, x0:x1]`` with the parts outside the image filled with ``fill``."""
    x0, y0, x1, y1 = window
    h, w = array.shape[:2]
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    inside = array[cy0:max(cy1, cy0), cx0:max(cx1, cx0)]
    pads = (cy0 - y0, y1 - max(cy1, cy0), cx0 - x0, x1 - max(cx1, cx0))
    if not any(pads):
        return inside
    return cv2.copyMakeBorder(np.ascontiguousarray(inside), *pads, cv2.BORDER_CONSTANT, value=fill)


def resize_to(array: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Area averaging when shrinking (no aliasing of thin parts), linear when enlarging."""
    h, w = size_hw
    shrink = array.shape[0] >= h and array.shape[1] >= w
    return cv2.resize(array, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def ignore_mask(scene: Scene, shape: tuple[int, int]) -> np.ndarray:
    """Pixels of visible but unannotated products: neither object nor background for the loss and metrics."""
    mask = np.zeros(shape, dtype=bool)
    for x, y, w, h in scene.ignore_boxes:
        mask[int(y):int(math.ceil(y + h)), int(x):int(math.ceil(x + w))] = True
    return mask


# --- samples ------------------------------------------------------------------------------------------------------


@dataclass
class Augment:
    """Training-time randomness; ``Augment(enabled=False)`` gives the plain inference-time crops."""

    enabled: bool = True
    box_jitter: float = 0.05  # std of each box edge's shift, share of the box size (detector-like boxes)
    box_jitter_p: float = 1.0  # share of box samples jittered; the others keep the exact box (as annotated)
    min_scale: float = 0.6  # text samples: the crop keeps at least this share of each side
    full_view_p: float = 0.3  # text samples: probability of the whole photo, as at inference
    flip_p: float = 0.5

    jpeg_p: float = 0.3
    jpeg_quality: tuple[int, int] = (40, 95)

    def photometric(self):
        """``(uint8 RGB crop, rng) -> crop``: colour jitter and blur (torchvision v2), JPEG re-compression (OpenCV)."""
        import torch
        from torchvision.transforms import v2

        colour = v2.RandomApply([v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03)], p=0.8)
        blur = v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.2, 1.2))], p=0.2)

        def apply(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
            tensor = blur(colour(torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)))
            out = np.ascontiguousarray(tensor.permute(1, 2, 0).numpy())
            if rng.random() < self.jpeg_p:
                out = jpeg_roundtrip(out, int(rng.integers(self.jpeg_quality[0], self.jpeg_quality[1] + 1)))
            return out

        return apply


def jpeg_roundtrip(rgb: np.ndarray, quality: int) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) if ok else rgb


def jitter_box(box_xyxy: Sequence[float], rng: np.random.Generator, amount: float) -> tuple[float, ...]:
    x0, y0, x1, y1 = box_xyxy
    w, h = x1 - x0, y1 - y0
    d = rng.normal(0.0, amount, 4) * np.array([w, h, w, h])
    nx0, ny0, nx1, ny1 = x0 + d[0], y0 + d[1], x1 + d[2], y1 + d[3]
    if nx1 - nx0 < 0.5 * w or ny1 - ny0 < 0.5 * h:  # a collapsed box teaches nothing
        return tuple(box_xyxy)
    return (nx0, ny0, nx1, ny1)


def box_sample(image: np.ndarray, mask: np.ndarray, box_xyxy: Sequence[float], size: int, margin: float,
               rng: np.random.Generator | None = None, augment: Augment | None = None,
               others: Sequence[Sequence[float]] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(RGB crop size x size, float target size x size, other-boxes map size x size or None) for one box prompt;
    ``others`` are the photo's other boxes (jittered like the prompt's box when augmenting), for the map of
    :func:`context_map` (None: no map)."""
    jitter = augment is not None and augment.enabled and rng is not None
    if jitter and (augment.box_jitter_p >= 1.0 or rng.random() < augment.box_jitter_p):  # no draw at 1: same stream
        box_xyxy = jitter_box(box_xyxy, rng, augment.box_jitter)
    window = box_window(box_xyxy, margin)
    crop = resize_to(crop_window(image, window, PAD_RGB), (size, size))
    target = resize_to(crop_window(mask.astype(np.float32), window, 0.0), (size, size))
    if others is None:
        return crop, target, None
    others = [jitter_box(b, rng, augment.box_jitter) for b in others] if jitter else others
    return crop, target, context_map(window, others, size)


def context_map(window: tuple[int, int, int, int], others: Sequence[Sequence[float]], size: int) -> np.ndarray:
    """A box crop's map of the photo's other box prompts (see ``model.SegConfig.box_context``): float32
    size x size, 1 where the crop ``window`` (x0, y0, x1, y1, resized to size x size) shows the inside of one
    of the ``others`` boxes (x0, y0, x1, y1 in photo pixels), 0 elsewhere."""
    x0, y0, x1, y1 = window
    scale_x, scale_y = size / max(1, x1 - x0), size / max(1, y1 - y0)
    out = np.zeros((size, size), np.float32)
    for bx0, by0, bx1, by1 in others:
        c0, c1 = (int(np.clip(round((v - x0) * scale_x), 0, size)) for v in (bx0, bx1))
        r0, r1 = (int(np.clip(round((v - y0) * scale_y), 0, size)) for v in (by0, by1))
        out[r0:r1, c0:c1] = 1.0
    return out


def outline_band(mask: np.ndarray, width: int) -> np.ndarray:
    """Bool map of the pixels within ``width`` pixels of a bool mask's outline, on both sides."""
    inside = mask.astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
    return cv2.dilate(inside, kernel) != cv2.erode(inside, kernel)


def boundary_weights(target: np.ndarray, extra: float, width: int) -> np.ndarray:
    """Per-pixel loss weights of a box target: 1, plus ``extra`` within ``width`` pixels of the object's
    outline (both sides), so thin parts and the gaps between them weigh more than the bulk of the object and
    the open backdrop."""
    if extra <= 0 or width <= 0:
        return np.ones(target.shape, np.float32)
    return (1.0 + extra * outline_band(target >= 0.5, width)).astype(np.float32)


def text_window(height: int, width: int, rng: np.random.Generator | None, augment: Augment | None):
    """A crop window with the photo's aspect: the whole photo, or a random part of it when augmenting."""
    if augment is None or not augment.enabled or rng is None or rng.random() < augment.full_view_p:
        return (0, 0, width, height)
    scale = rng.uniform(augment.min_scale, 1.0)
    w, h = int(round(width * scale)), int(round(height * scale))
    x0, y0 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    return (x0, y0, x0 + w, y0 + h)


def label_masks(scene: Scene, labels: Sequence[str], shape: tuple[int, int]) -> dict[int, np.ndarray]:
    """Channel index (1-based, after the box channel) -> union mask of that label's instances."""
    out: dict[int, np.ndarray] = {}
    for inst in scene.instances:
        if inst.label in labels:
            channel = 1 + labels.index(inst.label)
            mask = decode_mask(inst.rle, *shape)
            out[channel] = out[channel] | mask if channel in out else mask
    return out


def text_sample(image: np.ndarray, scene: Scene, labels: Sequence[str], canvas: tuple[int, int],
                rng: np.random.Generator | None = None, augment: Augment | None = None):
    """(RGB canvas, targets (L, H, W) float, ignore (H, W) float) for one whole photo resized to ``canvas`` (H, W)."""
    h, w = image.shape[:2]
    window = text_window(h, w, rng, augment)
    crop = resize_to(crop_window(image, window, PAD_RGB), canvas)
    targets = np.zeros((len(labels), *canvas), dtype=np.float32)
    for channel, mask in label_masks(scene, labels, (h, w)).items():
        targets[channel - 1] = resize_to(crop_window(mask.astype(np.float32), window, 0.0), canvas)
    ignore = resize_to(crop_window(ignore_mask(scene, (h, w)).astype(np.float32), window, 0.0), canvas)
    return crop, targets, ignore


def mirror(image: np.ndarray, *maps: np.ndarray | None) -> list[np.ndarray | None]:
    """Mirror an (H, W, 3) image and (..., H, W) maps left-right together (no vertical flips: furniture
    is seldom upside down); a map that is None (an optional input left out) stays None."""
    return [np.ascontiguousarray(image[:, ::-1])] + [None if m is None else np.ascontiguousarray(m[..., ::-1])
                                                     for m in maps]
