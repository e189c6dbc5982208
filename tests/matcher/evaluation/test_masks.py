"""Mask / matte metrics on hand-made masks, and the catalog evaluation on tiny data sets."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from PIL import Image

from matcher import registry
from matcher.evaluation.masks import (
    alpha_mse,
    alpha_sad,
    boundary_f1,
    evaluate_catalog_masks,
    is_leaking,
    leak_dilation,
    mask_iou,
)
from matcher.settings import Settings


def square(shape=(100, 100), x0=30, y0=30, size=20):
    m = np.zeros(shape, bool)
    m[y0:y0 + size, x0:x0 + size] = True
    return m


def test_identical_masks_are_perfect():
    m = square()
    assert mask_iou(m, m) == 1.0
    assert boundary_f1(m, m) == 1.0
    assert alpha_sad(m, m) == 0.0
    assert alpha_mse(m, m) == 0.0
    assert not is_leaking(m, m.astype(np.uint8) * 255)


def test_iou_of_shifted_square():
    a, b = square(x0=30), square(x0=32)
    # 18x20 overlap, union 22x20.
    assert mask_iou(a, b) == pytest.approx(360 / 440)
    assert mask_iou(a, np.zeros_like(a)) == 0.0
    assert mask_iou(np.zeros_like(a), np.zeros_like(a)) == 1.0
    with pytest.raises(ValueError):
        mask_iou(a, a[:50])


def test_boundary_f1_tolerance():
    a = square()
    assert boundary_f1(a, square(x0=31), tolerance_px=2) == 1.0  # 1 px shift, 2 px tolerance
    strict = boundary_f1(a, square(x0=31), tolerance_px=0)
    assert 0.0 < strict < 1.0  # the top and bottom edges still coincide in part
    assert boundary_f1(a, square(x0=36), tolerance_px=2) < 0.5
    assert boundary_f1(a, np.zeros_like(a)) == 0.0
    assert boundary_f1(np.zeros_like(a), np.zeros_like(a)) == 1.0


def test_alpha_sad_and_mse_known_values():
    gt = np.zeros((50, 50), np.float32)
    gt[10:20, 10:20] = 1.0
    pred = np.zeros_like(gt)
    assert alpha_sad(pred, gt) == pytest.approx(100 / 1000)
    assert alpha_mse(pred, gt) == pytest.approx(100 / 2500)
    half = gt * 0.5
    assert alpha_sad(half, gt) == pytest.approx(50 / 1000)
    assert alpha_mse(half, gt) == pytest.approx(25 / 2500)
    # uint8 mattes are read as value / 255.
    assert alpha_sad((gt * 255).astype(np.uint8), gt) == pytest.approx(0.0)
    assert alpha_sad(np.full((50, 50), 128, np.uint8), np.zeros((50, 50))) == pytest.approx(2500 * 128 / 255 / 1000)


def test_leakage_detector():
    shape = (200, 200)
    gt = np.zeros(shape, np.uint8)
    gt[50:150, 50:150] = 255
    obj = gt > 0
    assert leak_dilation(shape) == 5 and leak_dilation((1000, 800)) == 10
    # A slightly fat mask (3 px) is not leakage.
    fat = cv2.dilate(obj.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    assert not is_leaking(fat, gt)
    # A blob outside the object of 10 % of the mask's area is.
    blob = obj.copy()
    blob[5:35, 5:39] = True  # 1020 px vs 10000
    assert is_leaking(blob, gt)
    # ... but not with a loose threshold, nor when it sits inside the tolerance.
    assert not is_leaking(blob, gt, threshold=0.2)
    near = obj.copy()
    near[150:154, 50:150] = True
    assert not is_leaking(near, gt)
    assert not is_leaking(np.zeros(shape, bool), gt)


def _write_dataset(root, items, extras=None):
    (root / "catalog" / "images").mkdir(parents=True)
    (root / "catalog" / "alpha").mkdir(parents=True)
    lines = []
    for name, category, rgb, alpha in items:
        if rgb is not None:
            Image.fromarray(rgb).save(root / "catalog" / "images" / f"{name}.jpg", quality=95)
            Image.fromarray(alpha).save(root / "catalog" / "alpha" / f"{name}.png")
        lines.append(json.dumps({"sku": f"test/{name}", "category": category, **(extras or {}).get(name, {}),
                                 "image": f"catalog/images/{name}.jpg", "alpha": f"catalog/alpha/{name}.png"}))
    (root / "catalog" / "products.jsonl").write_text("\n".join(lines) + "\n")


def _product(shape=(160, 160), colour=(60, 90, 150), backdrop=(235, 235, 232), box=(40, 30, 120, 130)):
    alpha = np.zeros(shape, np.uint8)
    x0, y0, x1, y1 = box
    alpha[y0:y1, x0:x1] = 255
    rgb = np.empty(shape + (3,), np.uint8)
    rgb[:] = backdrop
    rgb[alpha > 0] = colour
    return rgb, alpha


def test_evaluate_catalog_masks_small_dataset(tmp_path):
    a_rgb, a_alpha = _product()
    b_rgb, b_alpha = _product(colour=(150, 60, 40), box=(20, 50, 140, 110))
    _write_dataset(tmp_path, [("a", "Office", a_rgb, a_alpha), ("b", "Kitchen", b_rgb, b_alpha),
                              ("missing", "Kitchen", None, None)],
                   extras={"a": {"background": "white", "contact_shadow": True}})
    settings = Settings()
    seg = registry.create("segmenter", "classical", settings)
    report = evaluate_catalog_masks(tmp_path, seg, settings, progress=False)
    json.dumps(report)  # serialisable
    assert report["overall"]["n"] == 2
    assert len(report["failed"]) == 1 and report["failed"][0]["sku"] == "test/missing"
    assert "not found" in report["failed"][0]["reason"]
    assert set(report["per_category"]) == {"Office", "Kitchen"}
    # The bench's optional backdrop and contact-shadow keys group the figures too; rows without them
    # are counted as "(none)".
    assert {k: v["n"] for k, v in report["per_background"].items()} == {"white": 1, "(none)": 1}
    assert {k: v["n"] for k, v in report["per_contact_shadow"].items()} == {"yes": 1, "(none)": 1}
    assert {(w["sku"], w["background"], w["contact_shadow"]) for w in report["worst"]} == {
        ("test/a", "white", "yes"), ("test/b", "(none)", "(none)")}
    assert report["overall"]["mean_iou"] > 0.97
    assert report["overall"]["leakage_rate"] == 0.0 and report["overall"]["mask_fail"] == 0
    for key in ("median_iou", "boundary_f1", "alpha_sad", "binary_sad", "alpha_mse", "seconds_per_image"):
        assert key in report["overall"]
    assert len(report["worst"]) == 2
    limited = evaluate_catalog_masks(tmp_path, seg, settings, limit=1, progress=False)
    assert limited["overall"]["n"] == 1 and limited["failed"] == []


def test_evaluate_catalog_masks_on_bench(bench_dir):
    settings = Settings()
    seg = registry.create("segmenter", "classical", settings)
    report = evaluate_catalog_masks(bench_dir, seg, settings, limit=3, progress=False)
    o = report["overall"]
    assert o["n"] == 3 and report["failed"] == []
    assert o["mean_iou"] > 0.95
    assert o["alpha_sad"] < o["binary_sad"]
