"""A reviewer's add/remove hints on a real photo-like image, with the real classical segmenter re-run."""

from __future__ import annotations

import numpy as np
import pytest

from matcher import registry
from matcher.mask_edit import Hint, parse_hints, refine_mask
from matcher.settings import Settings
from matcher.types import Box


@pytest.fixture(scope="module")
def room():
    """A warm wall with a dark cabinet (x 60..140, y 40..160) and a small blue vase on the floor beside it."""
    rng = np.random.default_rng(0)
    image = np.zeros((200, 240, 3), np.float32) + (205, 195, 175)
    image[40:160, 60:140] = (70, 45, 30)
    image[135:160, 170:190] = (40, 70, 160)
    image += rng.normal(0, 3, image.shape)
    truth = np.zeros(image.shape[:2], bool)
    truth[40:160, 60:140] = True
    return np.clip(image, 0, 255).astype(np.uint8), truth


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_hints_parse_points_and_rectangles_and_name_bad_lines():
    assert parse_hints("10,20\n\n 5, 6, 30, 40 \n") == [Hint(10, 20), Hint(5, 6, 30, 40)]
    for bad in ("10", "a,b", "1,2,3", "1,2,0,5", "nan,4"):
        with pytest.raises(ValueError, match="x,y"):
            Hint.parse(bad)


def test_a_click_on_a_missed_part_brings_it_back_through_the_segmenter(room):
    image, truth = room
    half = truth.copy()
    half[100:, :] = False  # the segmenter's first try lost the cabinet's lower half
    segmenter = registry.create("segmenter", "classical", Settings(backend="classical"))
    fixed = refine_mask(image, half, Box(60, 40, 140, 100), add=[Hint(100, 140)], segmenter=segmenter)
    assert _iou(half, truth) < 0.55 and _iou(fixed, truth) > 0.85


def test_a_click_on_a_stray_piece_removes_the_whole_piece(room):
    image, truth = room
    leaked = truth.copy()
    leaked[135:160, 170:190] = True  # the vase leaked into the mask
    fixed = refine_mask(image, leaked, Box(60, 40, 190, 160), remove=[Hint(180, 150)])
    assert not fixed[135:160, 170:190].any()
    assert np.array_equal(fixed & truth, truth)


def test_a_rectangle_removes_the_superpixels_inside_it_and_follows_edges(room):
    image, truth = room
    grown = truth.copy()
    grown[30:40, 60:140] = True  # a band of wall above the cabinet
    fixed = refine_mask(image, grown, Box(60, 30, 140, 160), remove=[Hint(55, 25, 90, 17)])
    assert fixed[30:38, 62:138].mean() < 0.2  # the wall band is gone ...
    assert fixed[45:155, 65:135].all()  # ... and the cabinet is untouched


def test_no_hints_change_nothing(room):
    image, truth = room
    assert np.array_equal(refine_mask(image, truth, Box(60, 40, 140, 160)), truth)
