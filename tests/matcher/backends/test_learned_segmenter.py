"""The learned segmenter backend: the Segmenter protocol, the registry, its id and the missing-model message."""

from __future__ import annotations

import numpy as np
import pytest

from matcher import registry
from matcher.backends.protocols import Segmenter
from matcher.segmentation.model import MissingSegModelError
from matcher.settings import Settings
from matcher.types import Box, Mask

from ..segmentation.conftest import tiny_model_dir  # noqa: F401 - the fixture


def settings_for(model_dir, tmp_path) -> Settings:
    return Settings(seg_model_dir=model_dir, data_dir=tmp_path / "data", device="cpu", segmenter="learned")


def test_registered_and_satisfies_the_protocol(tiny_model_dir, tmp_path):  # noqa: F811
    segmenter = registry.create_segmenter(settings_for(tiny_model_dir, tmp_path))
    assert isinstance(segmenter, Segmenter)
    assert "learned" in registry.available("segmenter")
    prefix, digest = segmenter.segmenter_id.split(":")
    assert prefix == "learned" and len(digest) == 12 and int(digest, 16) >= 0


def test_one_full_size_mask_per_box_and_one_for_a_catalog_shot(tiny_model_dir, tmp_path):  # noqa: F811
    segmenter = registry.create("segmenter", "learned", settings_for(tiny_model_dir, tmp_path))
    image = np.full((60, 80, 3), 240, np.uint8)
    image[20:40, 30:50] = (120, 60, 30)
    masks = segmenter.segment(image, [Box(28, 18, 52, 42), Box(0, 0, 10, 10), Box(70, 50, 200, 200)])
    assert len(masks) == 3
    for mask in masks:
        assert isinstance(mask, Mask) and mask.binary.shape == (60, 80) and mask.binary.dtype == bool
        assert mask.source == segmenter.segmenter_id and 0.0 <= mask.score <= 1.0
    assert not masks[1].binary[12:, 12:].any()  # clipped to its box (plus the small tolerance)
    (catalog,) = segmenter.segment(image)
    assert catalog.binary.shape == (60, 80)


def test_missing_model_dir_is_one_line_saying_how_to_train(tmp_path, monkeypatch):
    monkeypatch.setattr("matcher.segmentation.model.DEFAULT_MODEL_DIR", tmp_path / "no-default-model")
    with pytest.raises(MissingSegModelError) as info:
        registry.create("segmenter", "learned", settings_for(None, tmp_path))
    assert "matcher seg train DATASET --out MODEL_DIR" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(MissingSegModelError, match="matcher seg train"):
        registry.create("segmenter", "learned", settings_for(tmp_path / "missing", tmp_path))


def test_segmenter_setting_overrides_the_preset(tmp_path):
    assert registry.segmenter_name(Settings(data_dir=tmp_path, segmenter="learned")) == "learned"
    assert registry.segmenter_name(Settings(data_dir=tmp_path)) == "classical"


@pytest.mark.parametrize("overrides, kinds, expected", [
    ({}, ("effnet", "classical"), "learned"),  # the default preset: classical catalog shots, learned rooms
    ({}, ("classical", "classical"), "classical"),
    ({}, ("open_clip", "sam"), "sam"),
    ({}, ("effnet", "sam"), "sam"),  # a space no preset built: its own segmenter
    ({"segmenter": "classical"}, ("effnet", "classical"), "classical"),  # one segmenter named for both sides
    ({"query_segmenter": "classical"}, ("effnet", "classical"), "classical"),
    ({"query_segmenter": "learned"}, ("classical", "classical"), "learned"),
])
def test_room_photos_get_the_query_segmenter(tmp_path, overrides, kinds, expected):
    assert registry.query_segmenter_name(Settings(data_dir=tmp_path, **overrides), *kinds) == expected


def test_query_segmenter_reuses_the_catalog_one_or_loads_its_own(tiny_model_dir, tmp_path):  # noqa: F811
    settings = Settings(data_dir=tmp_path / "data", seg_model_dir=tiny_model_dir, device="cpu")
    classical = registry.create("segmenter", "classical", settings)
    room = registry.query_segmenter(settings, "effnet:lite0:gem3-224@abc", classical)
    assert room.segmenter_id.startswith("learned:") and room is not classical
    same = registry.query_segmenter(settings, "classical:lab-texture-shape-v1", classical)
    assert same is classical
    assert registry.create_query_segmenter(settings).segmenter_id == room.segmenter_id
