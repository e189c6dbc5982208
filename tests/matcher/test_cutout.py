"""The polish stage on synthetic images with known alpha, and on bench photos."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from PIL import Image

from matcher.colors import ciede2000, rgb_to_lab
from matcher.cutout import (
    backdrop_likeness,
    color_line_fit,
    composite_for_embedding,
    contour_coverage,
    default_band,
    leakage_score,
    make_cutout,
    make_trimap,
    matte,
)
from matcher.evaluation.masks import alpha_sad
from matcher.settings import Settings
from matcher.types import Mask

BACKDROP = np.float32([236, 234, 230])
OBJECT = np.float32([70, 100, 160])


def disk_alpha(shape=(256, 256), centre=(128, 120), radius=70.0, supersample=4):
    """Exact-ish coverage of a disk, by supersampling."""
    h, w = shape
    s = supersample
    yy, xx = np.mgrid[0:h * s, 0:w * s].astype(np.float32)
    inside = ((xx + 0.5) / s - centre[0]) ** 2 + ((yy + 0.5) / s - centre[1]) ** 2 <= radius ** 2
    return inside.reshape(h, s, w, s).mean(axis=(1, 3)).astype(np.float32)


def compose(alpha, fg=OBJECT, bg=BACKDROP, noise=0.0, seed=0):
    img = alpha[..., None] * fg + (1 - alpha[..., None]) * bg
    if noise:
        img = img + np.random.default_rng(seed).normal(0, noise, img.shape)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def test_make_trimap_band_and_values():
    m = np.zeros((200, 200), bool)
    m[50:150, 50:150] = True
    tri = make_trimap(m, band_px=8)
    assert tri.dtype == np.uint8 and set(np.unique(tri)) == {0, 128, 255}
    row = tri[100]
    unknown = np.nonzero(row == 128)[0]
    # 4 px inside and 4 px outside the left edge (x = 50), same on the right.
    assert unknown.min() == 46 and unknown[unknown < 100].max() == 53
    assert (row[54:146] == 255).all() and (row[:46] == 0).all()
    assert (tri[m] != 0).all() and (tri[~m] != 255).all()
    assert default_band((512, 512)) == 8 and default_band((1024, 768)) == 16 and default_band((4000, 3000)) == 16
    assert default_band((256, 256)) == 8 and default_band((768, 768)) == 12
    assert (make_trimap(m, 0)[m] == 255).all()


def test_matte_sharp_disk_beats_hard_mask_and_keeps_known_regions():
    gt = disk_alpha()
    img = compose(gt, noise=1.0)
    mask = gt > 0.01  # a threshold mask: every pixel the object touches
    alpha, fg = matte(img, mask)
    assert alpha.dtype == np.float32 and fg.dtype == np.float32 and fg.shape == img.shape
    assert 0.0 <= alpha.min() and alpha.max() <= 1.0
    assert alpha_sad(alpha, gt) < 0.7 * alpha_sad(mask, gt)
    tri = make_trimap(mask)
    assert (alpha[tri == 255] == 1.0).all() and (alpha[tri == 0] == 0.0).all()
    # Opaque pixels keep their own colour.
    np.testing.assert_allclose(fg[tri == 255], img[tri == 255] / 255.0, atol=1e-6)
    # Halo-free: composited over grey, the edge looks like object-over-grey,
    # unlike compositing the raw photo colours (which carry the backdrop).
    grey = np.float32([0.5, 0.5, 0.5])
    ideal = gt[..., None] * OBJECT / 255.0 + (1 - gt[..., None]) * grey
    ours = alpha[..., None] * fg + (1 - alpha[..., None]) * grey
    naive = alpha[..., None] * img / 255.0 + (1 - alpha[..., None]) * grey
    edge = ((gt > 0.05) & (gt < 0.95)) | ((alpha > 0.05) & (alpha < 0.95))
    d_ours = ciede2000(rgb_to_lab(ours[edge]), rgb_to_lab(ideal[edge]))
    d_naive = ciede2000(rgb_to_lab(naive[edge]), rgb_to_lab(ideal[edge]))
    assert np.median(d_ours) < 0.5 * np.median(d_naive)
    assert np.percentile(d_ours, 95) < 12.0


def test_matte_recovers_soft_fringe_outside_the_mask():
    hard = disk_alpha(radius=60.0)
    soft = np.clip(cv2.GaussianBlur(hard, (0, 0), 3.0), 0, 1)  # a fuzzy edge ~10 px wide
    img = compose(soft)
    mask = soft >= 0.5
    alpha, _ = matte(img, mask)
    assert alpha_sad(alpha, soft) < 0.95 * alpha_sad(mask, soft)
    fringe = (soft > 0.3) & (soft < 0.45) & ~mask
    assert alpha[fringe].mean() > 0.2  # the hard mask says 0 there


def test_contour_coverage_is_antialiased_and_keeps_thin_parts():
    gt = disk_alpha(radius=50.0)
    cov = contour_coverage(gt > 0.01)
    assert alpha_sad(cov, gt) < alpha_sad(gt > 0.01, gt)
    wire = np.zeros((60, 60), bool)
    wire[30, 5:55] = True
    assert contour_coverage(wire)[30, 10:50].min() == 1.0


def test_make_cutout_gates_on_coverage():
    settings = Settings()
    img = compose(disk_alpha())
    tiny = np.zeros(img.shape[:2], bool)
    tiny[100:104, 100:104] = True
    c = make_cutout(img, Mask(tiny, 0.5, "test"), settings)
    assert not c.ok and c.fail_reason.startswith("mask_fail: coverage 0.000 below 0.01")
    assert "mask_fail" in c.flags and c.dominant_colors == []
    full = np.ones(img.shape[:2], bool)
    c = make_cutout(img, Mask(full, 0.5, "test"), settings)
    assert not c.ok and "above 0.92" in c.fail_reason and "mask_fail" in c.flags
    empty = make_cutout(img, Mask(np.zeros_like(full), 0.0, "test"), settings)
    assert not empty.ok and empty.bbox is None


def test_make_cutout_ok_mask():
    settings = Settings()
    gt = disk_alpha()
    img = compose(gt, noise=1.0)
    mask = gt >= 0.5
    c = make_cutout(img, Mask(mask, 0.9, "test"), settings)
    assert c.ok and c.fail_reason is None
    ys, xs = np.nonzero(mask)
    assert c.bbox.xyxy() == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert c.coverage == pytest.approx(mask.mean())
    assert c.flags == ()
    assert 0.0 <= c.leakage_score < 0.05
    assert len(c.dominant_colors) >= 1
    assert sum(col.weight for col in c.dominant_colors) == pytest.approx(1.0)
    assert ciede2000(c.dominant_colors[0].lab, rgb_to_lab(OBJECT / 255.0)) < 3.0
    assert c.rgba().shape == img.shape[:2] + (4,)


def test_make_cutout_flags():
    settings = Settings()
    img = compose(disk_alpha())
    # Two separate pieces.
    two = np.zeros(img.shape[:2], bool)
    two[40:100, 30:90] = True
    two[150:210, 150:210] = True
    assert "multi_component" in make_cutout(img, Mask(two, 0.5, "t"), settings).flags
    # A mask that floods the backdrop down to the image's bottom edge.
    gt = disk_alpha() >= 0.5
    flood = gt.copy()
    flood[120:, :] = True
    c = make_cutout(img, Mask(flood, 0.5, "t"), settings)
    assert {"touches_border", "leakage"} <= set(c.flags)
    assert c.leakage_score > 0.15
    assert leakage_score(img, gt) < 0.05


def test_composite_for_embedding_square_centred_neutral():
    settings = Settings()
    gt = disk_alpha(shape=(200, 300), centre=(80, 100), radius=40.0)
    img = compose(gt)
    c = make_cutout(img, Mask(gt >= 0.5, 0.9, "t"), settings)
    out = composite_for_embedding(c, background=(128, 128, 128), margin=0.1)
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[0] == out.shape[1]
    side = max(c.bbox.width, c.bbox.height)
    assert abs(out.shape[0] - side * 1.2) <= 3
    assert (out[0, 0] == 128).all() and (out[-1, -1] == 128).all() and (out[0, -1] == 128).all()
    mid = out[out.shape[0] // 2, out.shape[1] // 2].astype(np.float32)
    np.testing.assert_allclose(mid, OBJECT, atol=3)
    # No backdrop colour anywhere: everything is object, grey, or a blend of the two.
    lab = rgb_to_lab(out.reshape(-1, 3))
    assert ciede2000(lab, np.broadcast_to(rgb_to_lab(BACKDROP / 255.0), lab.shape)).min() > 10
    # A failed cutout has no box: plain background.
    failed = make_cutout(img, Mask(np.zeros(gt.shape, bool), 0.0, "t"), settings)
    plain = composite_for_embedding(failed)
    assert plain.shape[0] == plain.shape[1] and (plain == 128).all()


def test_composite_pads_object_at_image_edge():
    gt = np.zeros((100, 100), np.float32)
    gt[0:30, 0:80] = 1.0  # touches the top-left corner, wider than tall
    c = make_cutout(compose(gt), Mask(gt > 0.5, 0.9, "t"), Settings())
    out = composite_for_embedding(c, background=(10, 20, 30), margin=0.06)
    assert out.shape[0] == out.shape[1]
    assert (out[0, 0] == (10, 20, 30)).all()


def test_matte_on_bench_photo_helps(bench_dir):
    """Matting beats the hard mask against the true alpha. (Its speed is a benchmark's business, not a test's:
    a wall-clock bound fails on a loaded machine; `matcher eval-masks` reports seconds per image.)"""
    row = json.loads((bench_dir / "catalog" / "products.jsonl").read_text().splitlines()[0])
    img = np.asarray(Image.open(bench_dir / row["image"]).convert("RGB"))
    gt = np.asarray(Image.open(bench_dir / row["alpha"]).convert("L")).astype(np.float32) / 255.0
    from matcher import registry

    seg = registry.create("segmenter", "classical", Settings())
    mask = seg.segment(img)[0].binary
    alpha, _ = matte(img, mask)
    assert alpha_sad(alpha, gt) < alpha_sad(mask, gt)


def test_fast_matting_gives_the_legacy_matte_and_palette(bench_dir):
    """The fast path (closed form solved only around possible fringes, ichol, a 4,000-pixel palette on one
    thread) changes the answer by less than the noise: alpha SAD against the truth and the palette agree."""
    from matcher import registry

    seg = registry.create("segmenter", "classical", Settings())
    rows = [json.loads(line) for line in (bench_dir / "catalog" / "products.jsonl").read_text().splitlines()[:6]]
    for row in rows:
        img = np.asarray(Image.open(bench_dir / row["image"]).convert("RGB"))
        gt = np.asarray(Image.open(bench_dir / row["alpha"]).convert("L")).astype(np.float32) / 255.0
        mask = Mask(binary=seg.segment(img)[0].binary, score=1.0, source="classical")
        fast = make_cutout(img, mask, Settings(fast_matting=True))
        legacy = make_cutout(img, mask, Settings(fast_matting=False))
        assert np.abs(fast.alpha - legacy.alpha).mean() < 0.002, row["sku"]
        sad_fast, sad_legacy = alpha_sad(fast.alpha, gt), alpha_sad(legacy.alpha, gt)
        assert abs(sad_fast - sad_legacy) <= 0.01 * sad_legacy + 1.0, (row["sku"], sad_fast, sad_legacy)
        top_fast, top_legacy = fast.dominant_colors[0], legacy.dominant_colors[0]
        assert ciede2000(top_fast.lab, top_legacy.lab) < 3.0 and abs(top_fast.weight - top_legacy.weight) < 0.05


def test_colour_line_fit_on_chosen_pixels_equals_the_whole_fit():
    """Only the band pixels outside the mask are asked about; fitting just those gives them the same answer."""
    alpha = disk_alpha()
    img = compose(alpha, noise=0.02)
    trimap = make_trimap(alpha >= 0.5, 10)
    where = (trimap == 128) & (alpha < 0.5)
    whole_a, whole_r = color_line_fit(img, trimap)
    part_a, part_r = color_line_fit(img, trimap, where=where)
    assert np.array_equal(whole_a[where], part_a[where]) and np.array_equal(whole_r[where], part_r[where])
    assert np.isnan(part_a[~where]).all() and np.isinf(part_r[~where]).all()
    assert np.isfinite(whole_a).all()


def test_backdrop_likeness_counts_mask_pixels_that_look_like_the_border():
    img = np.full((100, 100, 3), 200, np.uint8)
    img[30:70, 30:70] = (40, 90, 160)
    square = np.zeros((100, 100), bool)
    square[30:70, 30:70] = True
    assert backdrop_likeness(img, square) == 0.0
    flooded = square.copy()
    flooded[10:90, 10:30] = True  # 1,600 backdrop pixels join 1,600 object pixels
    assert backdrop_likeness(img, flooded) == pytest.approx(0.5)
    assert backdrop_likeness(img, np.ones((100, 100), bool)) == 0.0  # no border left to model the backdrop
