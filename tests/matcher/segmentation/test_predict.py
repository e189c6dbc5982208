"""Text and box prompts give full-size masks with values exactly {0, 255}."""

from __future__ import annotations

import numpy as np
import pytest

from matcher.segmentation.predict import (CONTEST_SCALE, box_mask, box_probabilities, clean_box_mask,
                                          clean_text_mask, clip_to_box, contest_overlaps, paste, segment_boxes,
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


def two_claims(own: float, theirs: float):
    """Box A (0..40 x 0..20) and box B (30..60 x 0..20) overlapping on x 30..40; A's crop says ``own`` everywhere,
    B's says ``theirs``; windows are the boxes themselves."""
    a, b = (0, 0, 40, 20), (30, 0, 60, 20)
    return [(a, np.full((20, 40), own, np.float32)), (b, np.full((20, 30), theirs, np.float32))], [a, b]


def test_contest_the_more_confident_box_takes_the_shared_pixels():
    prompts, boxes = two_claims(own=0.8, theirs=0.99)
    (_, a), (_, b) = contest_overlaps(prompts, boxes, threshold=0.5)
    assert np.allclose(a[:, 30:], 0.8 * CONTEST_SCALE) and np.allclose(a[:, :30], 0.8)  # only the overlap is lost
    assert np.allclose(b, 0.99)  # the winner keeps everything
    assert np.allclose(prompts[0][1], 0.8)  # the input is not changed


def test_contest_a_claim_under_the_threshold_takes_nothing():
    prompts, boxes = two_claims(own=0.2, theirs=0.45)
    (_, a), (_, b) = contest_overlaps(prompts, boxes, threshold=0.5)
    assert np.allclose(a, 0.2) and np.allclose(b, 0.45)


def test_contest_a_box_nested_in_another_keeps_its_pixels():
    table, vase = (0, 0, 60, 40), (20, 5, 30, 20)  # the vase's box lies inside the table's
    prompts = [(table, np.full((40, 60), 0.9, np.float32)), (vase, np.full((15, 10), 0.8, np.float32))]
    (_, t), (_, v) = contest_overlaps(prompts, [table, vase], threshold=0.5)
    assert np.allclose(v, 0.8)  # the table's surer claim does not take the vase
    assert np.allclose(t, 0.9)  # and the vase's weaker claim does not take the table
    prompts[1] = (vase, np.full((15, 10), 0.95, np.float32))
    (_, t), _ = contest_overlaps(prompts, [table, vase], threshold=0.5)
    assert np.allclose(t[5:20, 20:30], 0.9 * CONTEST_SCALE) and np.isclose(t[0, 0], 0.9)


def test_contest_near_duplicate_boxes_do_not_compete():
    one, two = (0, 0, 40, 20), (1, 0, 41, 20)  # the same object boxed twice (IoU 0.95)
    prompts = [(one, np.full((20, 40), 0.7, np.float32)), (two, np.full((20, 40), 0.9, np.float32))]
    (_, a), (_, b) = contest_overlaps(prompts, [one, two], threshold=0.5)
    assert np.allclose(a, 0.7) and np.allclose(b, 0.9)


def test_segment_boxes_applies_the_configured_contest(model):
    import copy
    import dataclasses

    contested = copy.copy(model)
    contested.config = dataclasses.replace(model.config, box_contest=True)
    assert contested.model_id.endswith("+contest") and "+contest" not in model.model_id
    image = photo(64, 64)
    boxes = [(4, 4, 44, 44), (24, 20, 62, 60)]  # overlapping, neither inside the other
    probs = box_probabilities(model, image, boxes)
    # A threshold both crops clear over most of their shared pixels, so that the contest decides them.
    threshold = float(np.quantile(paste(*probs[0], (64, 64))[24:44, 24:44], 0.2))
    plain = segment_boxes(image, boxes, model, threshold=threshold)
    same = segment_boxes(image, boxes, contested, threshold=threshold, contest=False)
    fought = segment_boxes(image, boxes, contested, threshold=threshold)
    assert all((p.mask == s.mask).all() for p, s in zip(plain, same))
    expected = [box_mask(w, p, box, (64, 64), threshold, False)[0]
                for box, (w, p) in zip(boxes, contest_overlaps(probs, boxes, threshold))]
    assert all(((f.mask > 0) == e).all() for f, e in zip(fought, expected))
    # Without refinement the contest only takes pixels away, and here it does take some.
    assert all(not ((f.mask > 0) & ~(p.mask > 0)).any() for f, p in zip(fought, plain))
    assert sum(int((p.mask > 0).sum() - (f.mask > 0).sum()) for f, p in zip(fought, plain)) > 0
    alone = segment_boxes(image, boxes[:1], contested, threshold=threshold)[0]
    assert (alone.mask == segment_boxes(image, boxes[:1], model, threshold=threshold)[0].mask).all()


def test_a_box_context_model_sees_the_photos_other_boxes(model):
    import dataclasses

    import torch

    from matcher.segmentation.model import SegModel, build_segnet

    torch.manual_seed(0)
    config = dataclasses.replace(model.config, box_context=True)
    aware = SegModel(net=build_segnet(config, imagenet=False).eval(), config=config, path=None)
    box, neighbour, far = (5, 5, 40, 40), (25, 10, 69, 49), (60, 45, 69, 49)
    for m, sees in ((aware, True), (model, False)):
        alone = box_probabilities(m, photo(), [box])[0][1]
        outside_the_crop = box_probabilities(m, photo(), [box, far])[0][1]
        beside = box_probabilities(m, photo(), [box, neighbour])[0][1]
        assert np.abs(outside_the_crop - alone).max() < 1e-5  # (batches of 1 and 2 may round differently)
        assert (np.abs(beside - alone).max() > 1e-3) == sees
