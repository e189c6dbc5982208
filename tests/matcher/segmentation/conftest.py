"""A tiny synthetic bench-format data set (real PNG files, COCO RLE masks) and tiny random models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

# Product title -> (tags, colour): the label comes from the title, never from the sku.
PRODUCTS = {
    "test/armchair-1": ("Armchair", ["Seat"], (200, 40, 40)),
    "test/chair-1": ("Dining chair", ["Seat"], (40, 40, 200)),
    "test/table-1": ("Coffee table", [], (40, 160, 40)),
    "test/speaker-1": ("Speaker", ["Music"], (180, 180, 40)),  # no label: background for text prompts
}
SIZE = (48, 64)  # H, W of the scene photos


from tests.torch_support import one_torch_thread  # noqa: F401 - autouse for this folder


def _rle(mask: np.ndarray) -> dict:
    from matcher.segmentation.data import encode_mask

    return encode_mask(mask)


def _scene(rng: np.random.Generator, skus: list[str]) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """A noisy grey room with one rectangle per product; later products cover earlier ones (exclusive masks)."""
    h, w = SIZE
    image = np.clip(rng.normal(128, 6, (h, w, 3)), 0, 255).astype(np.uint8)
    owner = np.full((h, w), -1)
    for k, sku in enumerate(skus):
        y, x = int(rng.integers(0, h - 16)), int(rng.integers(0, w - 20))
        owner[y:y + int(rng.integers(10, 16)), x:x + int(rng.integers(12, 20))] = k
    instances = []
    for k, sku in enumerate(skus):
        mask = owner == k
        if mask.sum() >= 20:
            image[mask] = PRODUCTS[sku][2]
            instances.append((sku, mask))
    return image, instances


def write_catalog_photos(root: Path, products: dict) -> dict[str, dict]:
    """A catalog photo and exact alpha matte per product (an ellipse of its colour on white), as the bench has."""
    from PIL import Image

    (root / "catalog" / "images").mkdir(parents=True, exist_ok=True)
    (root / "catalog" / "alpha").mkdir(parents=True, exist_ok=True)
    files = {}
    yy, xx = np.mgrid[0:40, 0:32]
    alpha = ((((yy - 20) / 18.0) ** 2 + ((xx - 16) / 12.0) ** 2) <= 1.0).astype(np.uint8) * 255
    for sku, (_, _, colour) in products.items():
        name = sku.replace("/", "__")
        photo = np.full((40, 32, 3), 255, np.uint8)
        photo[alpha > 0] = colour
        Image.fromarray(photo).save(root / "catalog" / "images" / f"{name}.png")
        Image.fromarray(alpha).save(root / "catalog" / "alpha" / f"{name}.png")
        files[sku] = {"image": f"catalog/images/{name}.png", "alpha": f"catalog/alpha/{name}.png"}
    return files


def write_bench(root: Path, n_scenes: int = 14, seed: int = 0, products: dict | None = None,
                catalog_photos: bool = False) -> Path:
    from PIL import Image

    products = products or PRODUCTS
    rng = np.random.default_rng(seed)
    (root / "catalog").mkdir(parents=True)
    (root / "scenes" / "images").mkdir(parents=True)
    files = write_catalog_photos(root, products) if catalog_photos else {}
    (root / "catalog" / "products.jsonl").write_text("".join(
        json.dumps({"sku": sku, "name": name, "tags": tags, "category": "Living room", **files.get(sku, {})}) + "\n"
        for sku, (name, tags, _) in products.items()))
    images, annotations = [], []
    skus = list(products)
    for image_id in range(1, n_scenes + 1):
        chosen = [skus[(image_id + k) % len(skus)] for k in range(2)]
        image, instances = _scene(rng, chosen)
        name = f"scenes/images/s{image_id:03d}.png"
        Image.fromarray(image).save(root / name)
        unannotated = [{"sku": skus[0], "bbox": [0, 0, 3, 3], "area": 9}] if image_id == 1 else []
        images.append({"id": image_id, "file_name": name, "path": name, "width": SIZE[1], "height": SIZE[0],
                       "unannotated": unannotated})
        for sku, mask in instances:
            ys, xs = np.nonzero(mask)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 5, "sku": sku,
                                "segmentation": _rle(mask), "area": int(mask.sum()), "iscrowd": 0,
                                "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                                         int(ys.max() - ys.min() + 1)]})
    (root / "scenes" / "instances.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": [{"id": 5, "name": "Living room"}]}))
    return root


@pytest.fixture
def tiny_bench(tmp_path) -> Path:
    return write_bench(tmp_path / "bench")


TINY_LABELS = ["armchair", "chair", "table"]


def tiny_config(labels=TINY_LABELS):
    from matcher.segmentation.model import SegConfig

    return SegConfig(labels=list(labels), decoder_channels=(16, 16, 8, 8, 8), box_size=64, text_long_side=64)


def tiny_model(labels=TINY_LABELS, seed: int = 0):
    """A randomly initialised (seeded) model, not saved."""
    import torch

    from matcher.segmentation.model import SegModel, build_segnet

    torch.manual_seed(seed)
    config = tiny_config(labels)
    return SegModel(net=build_segnet(config, imagenet=False).eval(), config=config, path=None)


@pytest.fixture
def tiny_model_dir(tmp_path) -> Path:
    from matcher.segmentation.model import save_model_dir

    model = tiny_model()
    out = tmp_path / "model"
    save_model_dir(model.net, model.config, out, card="# tiny test model\nsha256 {weights_sha256}\n")
    return out
