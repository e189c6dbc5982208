"""Text and box prompts give full-size masks with values exactly {0, 255}."""

from __future__ import annotations

import numpy as np
import pytest

from matcher.segmentation.predict import (clean_box_mask, clean_text_mask, clip_to_box, paste, segment_boxes,
                                          segment_prompt)

from .conftest import tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def photo(h=50, w=70):
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("threshold", [0.0001, 0.5, 0.9999])
def test_segment_prompt_full_size_binary_mask(model, threshold):
    result = segment_prompt(photo(), "chair", model, threshold=threshold)
    assert result.mask.shape == (50, 70) and result.mask.dtype == np.uint8
    assert set(np.unique(result.mask)) <= {0, 255}
    assert sum(r.area for r in result.regions) == int((result.mask > 0).sum())
    assert all(0.0 <= r.score <= 1.0 for r in result.regions)
    assert result.to_dict()["label"] == "chair"


def test_lowest_threshold_covers_the_photo(model):
    assert (segment_prompt(photo(), "table", model, threshold=1e-9).mask == 255).all()


def test_unknown_label_is_an_error(model):
    with pytest.raises(ValueError, match="does not know"):
        segment_prompt(photo(), "spaceship", model)


def test_segment_boxes_full_size_masks_inside_their_boxes(model):
    boxes = [(5, 5, 30, 40), (40, 10, 69, 49), (-10, -10, 20, 20)]  # the last one leaves the photo
    results = segment_boxes(photo(), boxes, model, threshold=1e-9)
    assert len(results) == 3
    for result, (x0, y0, x1, y1) in zip(results, boxes):
        assert result.mask.shape == (50, 70) and set(np.unique(result.mask)) <= {0, 255}
        ys, xs = np.nonzero(result.mask)
        assert xs.min() >= max(0, x0 - 1) and xs.max() <= x1 + 1 and ys.min() >= max(0, y0 - 1)


def test_greyscale_and_float_photos_are_accepted(model):
    grey = photo()[..., 0]
    assert segment_prompt(grey, "chair", model).mask.shape == (50, 70)
    assert segment_boxes(photo().astype(np.float32) / 255.0, [(1, 1, 20, 20)], model)[0].mask.shape == (50, 70)


def test_paste_drops_what_is_outside():
    full = paste((-2, -2, 3, 3), np.ones((5, 5), np.float32), (4, 4))
    assert full.sum() == 9 and full[:3, :3].all()


def test_clip_to_box():
    mask = np.ones((20, 20), bool)
    assert clip_to_box(mask, (5, 5, 10, 10), tolerance=0.0).sum() == 25


def test_clean_box_mask_keeps_big_pieces_and_fills_pin_holes():
    mask = np.zeros((40, 40), bool)
    mask[5:30, 5:30] = True
    mask[15, 15] = False  # a pin-hole
    mask[35, 35] = True  # a speck
    cleaned = clean_box_mask(mask)
    assert cleaned[15, 15] and not cleaned[35, 35]


def test_clean_text_mask_keeps_several_instances():
    mask = np.zeros((200, 200), bool)
    mask[10:60, 10:60] = True
    mask[100:150, 120:160] = True
    mask[190, 190] = True
    cleaned = clean_text_mask(mask)
    assert cleaned[30, 30] and cleaned[120, 130] and not cleaned[190, 190]


def test_a_box_under_a_pixel_gives_an_empty_mask(model):
    results = segment_boxes(photo(), [(5, 5, 5.5, 30), (1, 1, 20, 20)], model, threshold=1e-9)
    assert results[0].mask.max() == 0 and results[0].score == 0.0 and results[1].mask.max() == 255


def table_photo():
    """A dark table (top and two legs) on a light, noisy floor; the truth mask; and the kind of probability
    map a 256 px network gives: the gap between the legs filled in."""
    rng = np.random.default_rng(1)
    image = np.clip(rng.normal(200, 6, (120, 160, 3)), 0, 255).astype(np.uint8)
    truth = np.zeros((120, 160), bool)
    truth[30:45, 30:130] = True  # top
    truth[45:100, 30:42] = truth[45:100, 118:130] = True  # legs
    image[truth] = np.clip(rng.normal(60, 6, (int(truth.sum()), 3)), 0, 255).astype(np.uint8)
    probs = np.zeros((120, 160), np.float32)
    probs[30:100, 30:130] = 0.7  # the whole box "probably object"
    probs[truth] = 0.99
    probs[47:98, 50:110] = 0.6  # the floor between the legs, wrongly above the threshold
    return image, truth, probs


def test_grabcut_refinement_gives_the_floor_between_the_legs_back():
    from matcher.segmentation.evaluate import iou_and_dice
    from matcher.segmentation.predict import grabcut_refine

    image, truth, probs = table_photo()
    rough = probs >= 0.5
    refined = grabcut_refine(image, probs, (30, 30, 130, 100), 0.5)
    assert iou_and_dice(rough, truth)[0] < 0.6
    assert iou_and_dice(refined, truth)[0] > 0.95
    assert refined[truth].all()  # the sure pixels stay object


def test_grabcut_refinement_keeps_the_mask_when_there_is_nothing_to_learn_from():
    from matcher.segmentation.predict import grabcut_refine

    image, _, probs = table_photo()
    empty = np.zeros_like(probs)
    assert not grabcut_refine(image, empty, (30, 30, 130, 100), 0.5).any()
    assert (grabcut_refine(image, probs, (5, 5, 7, 7), 0.5) == (probs >= 0.5)).all()  # a box too small to cut


def test_segment_boxes_applies_the_configured_refinement(model):
    import copy
    import dataclasses

    refined = copy.copy(model)
    refined.config = dataclasses.replace(model.config, refine_box="grabcut")
    assert refined.model_id.endswith("+grabcut") and not model.model_id.endswith("+grabcut")
    image = photo(64, 64)
    plain = segment_boxes(image, [(8, 8, 56, 56)], model, threshold=0.5)[0]
    again = segment_boxes(image, [(8, 8, 56, 56)], refined, threshold=0.5, refine="none")[0]
    assert (plain.mask == again.mask).all() and set(np.unique(plain.mask)) <= {0, 255}
    cut = segment_boxes(image, [(8, 8, 56, 56)], refined, threshold=0.5)[0]
    assert cut.mask.shape == (64, 64) and set(np.unique(cut.mask)) <= {0, 255}


def test_threads_give_the_same_masks_as_one_after_another(model):
    import copy
    import dataclasses

    refined = copy.copy(model)
    refined.config = dataclasses.replace(model.config, refine_box="grabcut")
    image, _, _ = table_photo()
    boxes = [(30, 30, 130, 100), (0, 0, 60, 60), (100, 50, 160, 120), (5, 5, 5.5, 9)]
    one = segment_boxes(image, boxes, refined, threshold=0.5, workers=1)
    two = segment_boxes(image, boxes, refined, threshold=0.5, workers=3)
    assert [r.box for r in one] == [r.box for r in two] == [tuple(map(float, b)) for b in boxes]
    assert all((a.mask == b.mask).all() and a.score == b.score for a, b in zip(one, two))
    assert not one[3].mask.any()  # the box under a pixel wide


def test_grabcut_refinement_does_not_depend_on_opencvs_random_state():
    import cv2

    from matcher.imageio import load_image
    from matcher.segmentation.data import decode_mask
    from matcher.segmentation.predict import grabcut_refine
    from tests.query_support import SCENE, _scene_annotations

    image = load_image(SCENE).rgb  # a real rendered room: GrabCut's k-means start changes its answer there
    ann = _scene_annotations("scenes/images/scene_00000.jpg")[1]
    truth = decode_mask(ann["segmentation"], *image.shape[:2]).astype(np.float32)
    probs = np.clip(cv2.GaussianBlur(truth, (0, 0), 6) * 1.2, 0, 1)  # soft, like the network's edges
    x, y, w, h = ann["bbox"]
    masks = []
    for seed in (1, 2, 3):
        cv2.setRNGSeed(seed)
        masks.append(grabcut_refine(image, probs, (x, y, x + w, y + h), 0.5))
    assert all(np.array_equal(masks[0], m) for m in masks[1:])


def test_recut_pieces_one_box_prompt_per_region_specks_skipped(model):
    from matcher.segmentation.predict import MIN_REGION_SHARE, REGION_BOX_GROWTH, recut_pieces

    model.config.threshold_box = 1e-9  # the box channel keeps its whole window: each piece shows its clip box
    try:
        mask = np.zeros((50, 70), bool)
        mask[5:20, 5:25] = True  # 300 px
        mask[30:45, 40:65] = True  # 375 px, the largest
        mask[2, 60] = True  # a speck under MIN_REGION_SHARE
        assert MIN_REGION_SHARE * mask.size > 1
        pieces = recut_pieces(model, photo(), mask)
    finally:
        model.config.threshold_box = 0.5
    assert [box for box, _ in pieces] == [(40, 30, 65, 45), (5, 5, 25, 20)]  # largest first, no speck
    for (x0, y0, x1, y1), piece in pieces:
        assert piece.shape == mask.shape and piece[y0:y1, x0:x1].all()  # the region itself is covered
        dx, dy = REGION_BOX_GROWTH * (x1 - x0), REGION_BOX_GROWTH * (y1 - y0)
        ys, xs = np.nonzero(piece)
        assert xs.min() >= x0 - dx - 1 and xs.max() <= x1 + dx + 1 and ys.min() >= y0 - dy - 1 and ys.max() <= y1 + dy + 1


def test_text_refinement_is_the_configs_and_reported(model):
    from matcher.segmentation.predict import label_mask, recut_regions, text_mask

    probs = np.zeros((50, 70), np.float32)
    probs[10:30, 10:40] = 0.9
    plain = label_mask(model, photo(), probs, 0.5, False, "none")
    assert np.array_equal(plain, text_mask(probs, 0.5, False))
    assert np.array_equal(label_mask(model, photo(), probs, 0.5, False, "boxes"), recut_regions(model, photo(), plain))
    model.config.refine_text = "boxes"
    try:
        result = segment_prompt(photo(), "chair", model, threshold=0.5)
        assert result.refine == "boxes" and result.to_dict()["refine"] == "boxes"
        assert set(np.unique(result.mask)) <= {0, 255}
        assert segment_prompt(photo(), "chair", model, threshold=0.5, refine="none").refine == "none"
    finally:
        model.config.refine_text = "none"


def test_unknown_text_refinement_is_refused():
    from matcher.segmentation.model import SegConfig

    with pytest.raises(ValueError, match="refine_text"):
        SegConfig(labels=["chair"], refine_text="magic")
