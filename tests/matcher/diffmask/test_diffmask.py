"""Change masks (``matcher.diffmask``): exactness, robustness, regions, protection, preview, CLI.

Every test works on real image files written to ``tmp_path`` (or the bench
edit pairs) and decoded with ``load_image``; nothing is mocked.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from matcher.diffmask import (
    FaceDetectorUnavailable,
    apply_change,
    composite,
    compute_change_mask,
    estimate_colour_shift,
    face_detector_available,
    feather_mask,
    naive_change_mask,
    perceptually_equal,
)
from matcher.diffmask.cli import diffmask_command
from matcher.imageio import load_image
from matcher.types import Box

# --------------------------------------------------------------------------- helpers


def _save(path: Path, rgb: np.ndarray, quality: int | None = None) -> Path:
    image = Image.fromarray(rgb)
    if quality is None:
        image.save(path)
    else:
        image.save(path, "JPEG", quality=quality)
    return path


def _jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def _room(h: int = 480, w: int = 640, seed: int = 0) -> np.ndarray:
    """A synthetic room: lit wall and floor gradients, a rug, a few props, mild texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    horizon = int(h * 0.45)
    light = 1.0 - 0.25 * np.hypot((xx - w * 0.3) / w, (yy - h * 0.2) / h)
    img[:horizon] = np.array([228, 220, 205], np.float32) * light[:horizon, :, None]
    img[horizon:] = np.array([150, 120, 95], np.float32) * light[horizon:, :, None]
    img += rng.normal(0, 2.0, img.shape).astype(np.float32)  # texture
    out = np.clip(img, 0, 255).astype(np.uint8)
    cv2.fillConvexPoly(out, np.array([[60, 400], [300, 400], [340, 300], [110, 300]], np.int32), (200, 60, 50))  # rug
    cv2.rectangle(out, (520, 150), (600, 330), (90, 90, 100), -1)  # cabinet
    cv2.circle(out, (70, 120), 30, (250, 250, 240), -1)  # lamp shade, near white
    return out


def _place_objects(base: np.ndarray, objects: list[tuple[str, tuple, tuple[int, int, int]]]) -> tuple[np.ndarray, np.ndarray]:
    """Draw filled shapes on a copy of ``base``; returns the image and the union mask of the shapes."""
    img = base.copy()
    mask = np.zeros(base.shape[:2], np.uint8)
    for kind, geom, colour in objects:
        if kind == "rect":
            (x0, y0), (x1, y1) = geom
            cv2.rectangle(img, (x0, y0), (x1, y1), colour, -1)
            cv2.rectangle(mask, (x0, y0), (x1, y1), 1, -1)
        else:
            centre, axes = geom
            cv2.ellipse(img, centre, axes, 0, 0, 360, colour, -1)
            cv2.ellipse(mask, centre, axes, 0, 0, 360, 1, -1)
    return img, mask > 0


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    k = 2 * max(0, radius) + 1
    return cv2.dilate(mask.astype(np.uint8), np.ones((k, k), np.uint8)) > 0


@pytest.fixture(scope="module")
def synthetic_pair(tmp_path_factory) -> dict:
    """BEFORE: a room with a sofa; AFTER: the sofa replaced by another, relit +2 %, saved at another JPEG quality."""
    root = tmp_path_factory.mktemp("synthetic")
    room = _room()
    before_rgb, old = _place_objects(room, [("rect", ((180, 250), (400, 380)), (70, 110, 160))])
    after_rgb, new = _place_objects(room, [("ellipse", ((300, 320), (120, 55)), (160, 150, 60))])
    after_rgb = np.clip(after_rgb.astype(np.float32) * 1.02, 0, 255).astype(np.uint8)
    before_path = _save(root / "before.jpg", before_rgb, 92)
    after_path = _save(root / "after.jpg", after_rgb, 75)
    return {"before": before_path, "after": after_path, "truth": old | new, "root": root}


@pytest.fixture(scope="module")
def bench_pair(bench_dir) -> dict:
    """A bench edit pair with a mid-sized product swap (the first with 5-30 % of the frame changed)."""
    rows = [json.loads(line) for line in (bench_dir / "edits" / "pairs.jsonl").read_text().splitlines() if line.strip()]
    row = next(r for r in rows if 0.05 <= r["changed_fraction"] <= 0.30)
    before = load_image(bench_dir / row["before"])
    after = load_image(bench_dir / row["after"])
    truth = np.asarray(Image.open(bench_dir / row["change_mask"]).convert("L")) > 127
    return {"before": before.rgb, "after": after.rgb, "truth": truth, "row": row,
            "before_path": bench_dir / row["before"], "after_path": bench_dir / row["after"]}


# --------------------------------------------------------------------------- exactness


def test_composite_is_original_outside_the_change_on_a_synthetic_pair(synthetic_pair):
    before = load_image(synthetic_pair["before"]).rgb
    after = load_image(synthetic_pair["after"]).rgb
    truth = synthetic_pair["truth"]
    change = compute_change_mask(before, after)
    out = apply_change(before, after, change)
    diff = np.abs(out.astype(np.int16) - before.astype(np.int16)).max(axis=2)

    # bit-exact wherever the alpha is zero, and the alpha is zero everywhere beyond the feather of the true
    # change plus a 5 px edge zone (JPEG 4:2:0 chroma bleeds 2-3 px across a saturated edge in AFTER, and
    # those pixels really differ)
    assert diff[change.alpha == 0].max() == 0
    outside = ~_dilate(truth, change.feather_radius + 5)
    assert outside.mean() > 0.5
    assert int(diff[outside].max()) == 0
    # and the change itself was taken from AFTER
    assert _iou(change.mask, truth) > 0.85
    inside = truth & (change.alpha == 255)
    assert inside.mean() > 0.8 * truth.mean()
    assert np.array_equal(out[inside], after[inside])


def test_composite_is_original_outside_the_change_on_a_bench_pair(bench_pair):
    before, after, truth = bench_pair["before"], bench_pair["after"], bench_pair["truth"]
    change = compute_change_mask(before, after)
    out = apply_change(before, after, change)
    diff = np.abs(out.astype(np.int16) - before.astype(np.int16)).max(axis=2)
    assert diff[change.alpha == 0].max() == 0  # bit-exact where m == 0
    far = ~_dilate(truth, change.feather_radius + 5)
    untouched = diff[far] == 0
    # at most a shadow's worth of pixels beyond the feather of the true change are not the original
    assert untouched.mean() > 0.99, f"{1 - untouched.mean():.2%} of the pixels outside the change were modified"
    assert _iou(change.mask, truth) > 0.8


def test_integer_composite_is_exact_at_alpha_0_and_255():
    rng = np.random.default_rng(3)
    original = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    edited = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    alpha[:, :20] = 0
    alpha[:, 40:] = 255
    out = composite(original, edited, alpha)
    assert np.array_equal(out[:, :20], original[:, :20])
    assert np.array_equal(out[:, 40:], edited[:, 40:])
    lo, hi = np.minimum(original, edited), np.maximum(original, edited)
    assert np.all((out >= lo) & (out <= hi))


def test_feather_follows_strong_edges_of_the_original_and_stays_inside_its_dilation():
    h, w = 120, 160
    guide = np.full((h, w, 3), 40, np.uint8)
    guide[:, 80:] = 220  # a strong vertical edge at x = 80
    hard = np.zeros((h, w), bool)
    hard[30:90, 20:76] = True  # the change stops 4 px short of the edge
    hard[55:58, 40:44] = False  # a small gap inside it
    radius = 12
    soft = feather_mask(hard, guide, radius)
    assert soft[~_dilate(hard, radius)].max() == 0.0  # exactly 0 beyond the dilation
    assert soft[30:90, 20:76].min() == 1.0  # the whole change (gap filled) is taken from AFTER
    # outward of the flat left side the ramp is smooth and falls off; 4 px right of the change, across the
    # strong edge of the original, it is (almost) nothing, although a Gaussian feather reaches there
    ramp = soft[60, 8:20]
    assert np.all(np.diff(ramp) >= 0) and 0.3 < soft[60, 16] < 1.0 and soft[60, 8] < 0.2
    assert soft[35:85, 80:88].max() < 0.05
    gaussian = cv2.GaussianBlur(hard.astype(np.float32), (2 * radius + 1, 2 * radius + 1), 0)
    assert gaussian[35:85, 80:88].max() > 0.1


# --------------------------------------------------------------------------- perceptual equality


def test_reencoded_and_resampled_copies_are_perceptually_equal(bench_pair, tmp_path):
    original = _save(tmp_path / "q95.jpg", bench_pair["before"], 95)
    q95 = load_image(original).rgb
    q70 = load_image(_save(tmp_path / "q70.jpg", q95, 70)).rgb
    h, w = q95.shape[:2]
    resampled = load_image(_save(tmp_path / "resampled.png", cv2.resize(q95, (w + 1, h + 1), interpolation=cv2.INTER_LINEAR))).rgb
    shrunk = load_image(_save(tmp_path / "shrunk.png", cv2.resize(q95, (w - 1, h - 1), interpolation=cv2.INTER_AREA))).rgb
    for other in (q70, resampled, shrunk):
        verdict = perceptually_equal(q95, other)
        assert verdict.equal, verdict.reason
        assert verdict.changed_fraction <= verdict.tolerance


def test_a_copy_shifted_by_a_few_pixels_is_perceptually_equal(bench_pair, tmp_path):
    original = bench_pair["before"]
    shifted = np.roll(original, (2, 3), axis=(0, 1))  # re-framed by 3 px right, 2 px down
    shifted = load_image(_save(tmp_path / "shifted.jpg", shifted, 90)).rgb
    verdict = perceptually_equal(original, shifted)
    assert verdict.equal, verdict.reason
    assert verdict.translation != (0.0, 0.0)


def test_a_product_swap_is_not_perceptually_equal(bench_pair):
    verdict = perceptually_equal(bench_pair["before"], bench_pair["after"])
    assert not verdict.equal
    assert verdict.changed_fraction > 0.5 * bench_pair["row"]["changed_fraction"]


def test_different_pictures_are_not_perceptually_equal(bench_dir):
    rows = [json.loads(line) for line in (bench_dir / "edits" / "pairs.jsonl").read_text().splitlines()[:4] if line.strip()]
    scenes = [load_image(bench_dir / r["before"]).rgb for r in rows]
    for a, b in zip(scenes, scenes[1:]):
        verdict = perceptually_equal(a, b)
        assert not verdict.equal, verdict.reason
        # and the change mask of two unrelated scenes covers much of the frame instead of calling it noise
        assert compute_change_mask(a, b).changed_fraction > 0.3


def test_a_new_colourway_is_not_perceptually_equal(synthetic_pair, tmp_path):
    before = load_image(synthetic_pair["before"]).rgb
    recoloured = before.copy()
    recoloured[250:381, 180:401] = (150, 60, 60)  # the sofa, now in red
    other = load_image(_save(tmp_path / "red.jpg", recoloured, 90)).rgb
    assert not perceptually_equal(before, other).equal


# --------------------------------------------------------------------------- robustness and regions


@pytest.mark.parametrize("gain", [1.03, 0.97])
def test_global_brightness_shift_alone_is_not_a_change(bench_pair, tmp_path, gain):
    before = bench_pair["before"]
    relit = np.clip(before.astype(np.float32) * gain + 0.5, 0, 255).astype(np.uint8)
    after = load_image(_save(tmp_path / "relit.jpg", relit, 85)).rgb
    change = compute_change_mask(before, after)
    assert change.changed_fraction < 0.002, change.summary()
    assert change.colour_shift.applied
    assert abs(np.mean(change.colour_shift.gain) - gain) < 0.015
    # the compensation is what keeps the noise level (and so the automatic threshold) down
    uncompensated = compute_change_mask(before, after, compensate=False)
    assert uncompensated.noise_level > 1.5 * change.noise_level


def test_relighting_the_edit_does_not_change_its_mask(bench_pair, tmp_path):
    before, after = bench_pair["before"], bench_pair["after"]
    reference = compute_change_mask(before, after)
    for gain in (1.03, 0.97):
        relit = np.clip(after.astype(np.float32) * gain + 0.5, 0, 255).astype(np.uint8)
        again = compute_change_mask(before, load_image(_save(tmp_path / f"relit{gain}.jpg", relit, 90)).rgb)
        assert _iou(again.mask, reference.mask) > 0.95


def test_colour_shift_estimate_survives_a_large_change():
    rng = np.random.default_rng(1)
    before = rng.integers(30, 220, (200, 200, 3), dtype=np.uint8)
    after = np.clip(before.astype(np.float32) * np.array([1.03, 1.02, 0.98]), 0, 255).astype(np.uint8)
    after[:, :110] = rng.integers(0, 256, (200, 110, 3), dtype=np.uint8)  # 55 % of the frame replaced
    shift = estimate_colour_shift(before, after)
    assert shift.applied
    np.testing.assert_allclose(shift.gain, [1.03, 1.02, 0.98], atol=0.01)


def test_two_separate_changed_regions_are_both_kept(tmp_path):
    room = _room(seed=2)
    before_rgb, _ = _place_objects(room, [])
    after_rgb, _ = _place_objects(room, [("rect", ((40, 300), (170, 420)), (40, 140, 70)),
                                         ("ellipse", ((470, 230), (60, 45)), (60, 60, 170))])
    left = np.zeros(room.shape[:2], np.uint8)
    cv2.rectangle(left, (40, 300), (170, 420), 1, -1)
    right = np.zeros(room.shape[:2], np.uint8)
    cv2.ellipse(right, (470, 230), (60, 45), 0, 0, 360, 1, -1)
    before = load_image(_save(tmp_path / "b.jpg", before_rgb, 90)).rgb
    after = load_image(_save(tmp_path / "a.jpg", after_rgb, 80)).rgb
    change = compute_change_mask(before, after)
    assert len(change.regions) == 2
    for truth in (left > 0, right > 0):
        assert change.mask[truth].mean() > 0.9
    # the baseline keeps only the largest region and loses the ellipse
    naive = naive_change_mask(before, after)
    assert naive.mask[right > 0].mean() < 0.1


def test_small_regions_are_dropped_by_min_region(synthetic_pair):
    before = load_image(synthetic_pair["before"]).rgb
    after = load_image(synthetic_pair["after"]).rgb
    after = after.copy()
    after[20:32, 300:312] = (20, 200, 20)  # 144 px, 0.05 % of the frame
    kept = compute_change_mask(before, after, min_region=0.0002)
    default = compute_change_mask(before, after)
    assert kept.mask[20:32, 300:312].mean() > 0.5
    assert default.mask[20:32, 300:312].sum() == 0
    assert default.dropped_regions >= 1


# --------------------------------------------------------------------------- protection


def test_keep_out_box_is_excluded_from_the_mask_and_the_composite(synthetic_pair):
    before = load_image(synthetic_pair["before"]).rgb
    after = load_image(synthetic_pair["after"]).rgb
    truth = synthetic_pair["truth"]
    box = Box.from_xywh(200, 260, 80, 60)  # over the left part of the change
    change = compute_change_mask(before, after, keep_out=[box])
    ys, xs = box.int_slices()
    assert change.mask[ys, xs].sum() == 0
    assert change.soft[ys, xs].max() == 0.0
    out = apply_change(before, after, change)
    assert np.array_equal(out[ys, xs], before[ys, xs])
    # the rest of the change is still there, and the box is reported
    rest = truth.copy()
    rest[ys, xs] = False
    assert change.mask[rest].mean() > 0.8
    assert box in change.protected


def test_face_protection_reports_when_no_cascade_is_available(synthetic_pair):
    before = load_image(synthetic_pair["before"]).rgb
    after = load_image(synthetic_pair["after"]).rgb
    if face_detector_available():
        change = compute_change_mask(before, after, protect_faces=True)
        assert change.faces == []  # a face-free synthetic room
        assert change.mask.any()
    else:
        with pytest.raises(FaceDetectorUnavailable, match="no Haar cascade"):
            compute_change_mask(before, after, protect_faces=True)


# --------------------------------------------------------------------------- preview, threshold


def test_preview_and_full_resolution_masks_agree(bench_pair, tmp_path):
    size = (1600, 1200)
    before = load_image(_save(tmp_path / "big_b.jpg", cv2.resize(bench_pair["before"], size, interpolation=cv2.INTER_CUBIC), 92)).rgb
    after = load_image(_save(tmp_path / "big_a.jpg", cv2.resize(bench_pair["after"], size, interpolation=cv2.INTER_CUBIC), 80)).rgb
    full = compute_change_mask(before, after)
    preview = compute_change_mask(before, after, preview=True)
    assert full.mask.shape == (1200, 1600)
    assert max(preview.mask.shape) == 1024
    assert full.threshold == preview.threshold
    upsampled = cv2.resize(preview.mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    assert _iou(full.mask, upsampled) > 0.9
    truth = cv2.resize(bench_pair["truth"].astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    assert _iou(full.mask, truth) > 0.8


def test_threshold_override_is_honoured_and_reported(bench_pair):
    before, after = bench_pair["before"], bench_pair["after"]
    auto = compute_change_mask(before, after)
    assert auto.threshold_method in ("floor", "noise-floor")
    strict = compute_change_mask(before, after, threshold=25.0)
    assert strict.threshold == 25.0 and strict.threshold_method == "override"
    assert strict.changed_fraction < auto.changed_fraction
    assert strict.summary()["threshold"] == 25.0
    with pytest.raises(ValueError):
        compute_change_mask(before, after, threshold=-1.0)


def test_sizes_are_aligned(synthetic_pair):
    before = load_image(synthetic_pair["before"]).rgb
    after = load_image(synthetic_pair["after"]).rgb
    bigger = cv2.resize(after, (after.shape[1] * 3 // 2, after.shape[0] * 3 // 2), interpolation=cv2.INTER_LINEAR)
    change = compute_change_mask(before, bigger)
    assert change.resized_after and change.mask.shape == before.shape[:2]
    assert _iou(change.mask, synthetic_pair["truth"]) > 0.8
    assert perceptually_equal(after, bigger).equal


# --------------------------------------------------------------------------- CLI


def _cli_app() -> typer.Typer:
    app = typer.Typer()
    app.command("diffmask")(diffmask_command)

    @app.command("noop")
    def _noop() -> None:  # a second command so the app dispatches on the command name, like `matcher`
        pass

    return app


def test_cli_writes_mask_composite_and_json(synthetic_pair, tmp_path):
    out = tmp_path / "mask.png"
    comp = tmp_path / "composite.png"
    result = CliRunner().invoke(_cli_app(), [
        "diffmask", str(synthetic_pair["before"]), str(synthetic_pair["after"]), "--out", str(out),
        "--composite", str(comp), "--keep-out", "200,260,80,60", "--min-region", "0.5%", "--threshold", "auto",
        "--feather", "auto", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["threshold_method"] in ("floor", "noise-floor")
    assert summary["regions"] and summary["changed_fraction"] > 0.05
    assert summary["protected"] == [[200.0, 260.0, 80.0, 60.0]]
    mask = np.asarray(Image.open(out))
    before = load_image(synthetic_pair["before"]).rgb
    assert mask.dtype == np.uint8 and mask.shape == before.shape[:2]
    assert mask[260:320, 200:280].max() == 0
    blended = np.asarray(Image.open(comp).convert("RGB"))
    assert np.array_equal(blended[mask == 0], before[mask == 0])


def test_cli_threshold_override_and_preview(synthetic_pair, tmp_path):
    out = tmp_path / "mask.png"
    result = CliRunner().invoke(_cli_app(), [
        "diffmask", str(synthetic_pair["before"]), str(synthetic_pair["after"]), "--out", str(out),
        "--threshold", "12.5", "--feather", "0", "--hard", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["threshold"] == 12.5 and summary["threshold_method"] == "override"
    assert summary["feather_radius"] == 0
    assert set(np.unique(np.asarray(Image.open(out)))) <= {0, 255}


def test_cli_corrupt_input_exits_2_with_a_clear_message(synthetic_pair, tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(synthetic_pair["before"].read_bytes()[:600])
    runner = CliRunner()
    result = runner.invoke(_cli_app(), ["diffmask", str(corrupt), str(synthetic_pair["after"]), "--out", str(tmp_path / "m.png")])
    assert result.exit_code == 2
    assert "error:" in result.stderr and "corrupt" in result.stderr
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m.png").exists()

    bad_box = runner.invoke(_cli_app(), ["diffmask", str(synthetic_pair["before"]), str(synthetic_pair["after"]),
                                         "--out", str(tmp_path / "m.png"), "--keep-out", "1,2,3"])
    assert bad_box.exit_code == 2 and "x,y,w,h" in bad_box.stderr
