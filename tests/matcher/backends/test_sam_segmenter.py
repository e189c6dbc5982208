"""SAM segmenter with a tiny random ``segment_anything`` model (no weights, no network)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
segment_anything = pytest.importorskip("segment_anything")

from matcher import registry, weights  # noqa: E402
from matcher.backends.protocols import Segmenter  # noqa: E402
from matcher.backends.sam_segmenter import SamSegmenter, catalog_box, clean_mask, stability_scores  # noqa: E402
from matcher.types import Box, Mask  # noqa: E402
from tests.tiny_models import TINY_SAM_TYPE, build_tiny_sam, tiny_sam  # noqa: E402


@pytest.fixture
def tiny_registry(monkeypatch: pytest.MonkeyPatch):
    """Make the tiny architecture loadable by name, like vit_b/vit_l/vit_h."""
    monkeypatch.setitem(segment_anything.sam_model_registry, TINY_SAM_TYPE, build_tiny_sam)
    return TINY_SAM_TYPE


def _scene(h: int = 180, w: int = 240) -> np.ndarray:
    img = np.full((h, w, 3), 245, np.uint8)
    cv2.rectangle(img, (60, 40), (170, 150), (150, 70, 40), -1)
    cv2.circle(img, (205, 60), 18, (40, 90, 160), -1)
    return img


def _spy_set_image(seg: SamSegmenter) -> list[tuple[int, ...]]:
    calls: list[tuple[int, ...]] = []
    real = seg.predictor.set_image

    def spy(image, image_format="RGB"):
        calls.append(image.shape)
        return real(image, image_format)

    seg.predictor.set_image = spy
    return calls


def test_tiny_sam_encodes_once_for_many_boxes():
    seg = SamSegmenter(build_tiny_sam(), TINY_SAM_TYPE, device="cpu")
    assert isinstance(seg, Segmenter) and seg.segmenter_id == f"sam:{TINY_SAM_TYPE}"
    calls = _spy_set_image(seg)
    img = _scene()
    boxes = [Box(60, 40, 170, 150), Box(187, 42, 224, 79), Box(0, 0, 240, 180)]
    masks = seg.segment(img, boxes)
    assert calls == [img.shape]
    assert len(masks) == 3
    for m in masks:
        assert isinstance(m, Mask) and m.binary.shape == img.shape[:2] and m.binary.dtype == bool
        assert 0.0 <= m.score <= 1.0 and m.source == seg.segmenter_id
    assert seg.segment(img, []) == [] and len(calls) == 1  # nothing to prompt: no encoding either

    # Catalog shot: one mask, one encoding.
    masks = seg.segment(img)
    assert len(masks) == 1 and masks[0].binary.shape == img.shape[:2] and len(calls) == 2


def test_selection_and_cleanup_on_controlled_logits():
    """Pick by predicted IoU x stability, then remove specks and fill small holes."""
    seg = SamSegmenter(build_tiny_sam(), TINY_SAM_TYPE, device="cpu")
    h, w = 120, 160
    crisp = np.full((h, w), -8.0, np.float32)
    crisp[30:90, 40:120] = 8.0  # the object
    crisp[50:52, 70:72] = -8.0  # a 4-pixel hole inside it
    crisp[5:7, 5:7] = 8.0  # a 4-pixel speck far away
    mushy = np.where(crisp > 0, 0.3, -0.3).astype(np.float32)  # same shape, logits hugging the threshold
    empty = np.full((h, w), -8.0, np.float32)
    logits = np.stack([mushy, crisp, empty])
    low_res = np.stack([cv2.resize(x, (64, 48)) for x in logits])

    seg.predictor.predict = lambda **kw: (logits, np.array([0.95, 0.80, 0.99], np.float32), low_res)
    seg.predictor.set_image = lambda image, image_format="RGB": None
    seg.predictor.reset_image = lambda: None
    [mask] = seg.segment(np.zeros((h, w, 3), np.uint8), [Box(35, 25, 125, 95)])

    expected = np.zeros((h, w), bool)
    expected[30:90, 40:120] = True
    assert np.array_equal(mask.binary, expected)  # crisp mask chosen, speck gone, hole filled
    assert mask.score == pytest.approx(0.80)


def test_clean_mask_keeps_large_holes_and_components():
    m = np.zeros((100, 100), bool)
    m[10:90, 10:90] = True
    m[30:70, 30:70] = False  # a big opening (e.g. a chair back), 1600 px
    m[95:97, 95:97] = True  # speck
    out = clean_mask(m, reference_area=80 * 80)
    assert not out[30:70, 30:70].any() and not out[95:97, 95:97].any() and out[10:30, 10:90].all()


def test_stability_scores():
    logits = np.stack([np.full((4, 4), 5.0), np.full((4, 4), 0.5), np.full((4, 4), -5.0)])
    logits[1, 0, :2] = 2.0
    np.testing.assert_allclose(stability_scores(logits), [1.0, 2 / 16, 0.0])


def test_catalog_box_from_border_background():
    img = _scene()
    box = catalog_box(img, margin=0.0)
    # rectangle + circle (inclusive outlines); the 3x3 opening may shave a pixel off round extremes
    assert (box.x0, box.y0, box.x1, box.y1) == pytest.approx((60, 40, 224, 151), abs=1.5)
    noisy = np.random.default_rng(0).integers(0, 256, (100, 120, 3), dtype=np.uint8)
    fallback = catalog_box(noisy, margin=0.05)
    assert (fallback.x0, fallback.y0, fallback.x1, fallback.y1) == pytest.approx((6, 5, 114, 95))


def test_from_settings_loads_checkpoint_through_weights(tmp_path: Path, tiny_registry: str):
    ckpt = tiny_sam(tmp_path)
    settings = SimpleNamespace(sam_model=tiny_registry, sam_checkpoint=ckpt, device="cpu",
                               resolved_weights_dir=tmp_path / "weights")
    seg = registry.create("segmenter", "sam", settings)
    digest = weights.file_sha256(ckpt)
    assert seg.segmenter_id == f"sam:{tiny_registry}@{digest[:12]}"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert torch.equal(seg.predictor.model.image_encoder.patch_embed.proj.weight, state["image_encoder.patch_embed.proj.weight"])
    [mask] = seg.segment(_scene(), [Box(60, 40, 170, 150)])
    assert mask.binary.shape == (180, 240)


def test_missing_sam_weights_message(tmp_path: Path):
    settings = SimpleNamespace(sam_model="vit_b", device="cpu", resolved_weights_dir=tmp_path / "w")
    with pytest.raises(weights.MissingWeightsError) as info:
        SamSegmenter.from_settings(settings)
    msg = str(info.value)
    assert "sam_vit_b_01ec64.pth" in msg and str(tmp_path / "w") in msg and "matcher models fetch sam:vit_b" in msg
