"""Layers as files: order, PSD round trip (names, offsets, alpha, RLE), compositing and GIMP's view of the PSD."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from psd_tools import PSDImage
from psd_tools.constants import Compression

from matcher.layers import (LayerObject, build_layer_set, composite_error, gimp_render, psd_problems,
                            write_all)
from matcher.types import Box

WALL = (200, 190, 170)


def _disc_object(label: str, centre: tuple[int, int], radius: int, colour, sku=None) -> LayerObject:
    """A disc with a one-pixel soft edge, cropped to its box, as a matted cutout would be."""
    cx, cy = centre
    size = 2 * radius + 4
    yy, xx = np.mgrid[0:size, 0:size]
    dist = np.hypot(xx - size / 2 + 0.5, yy - size / 2 + 0.5)
    alpha = np.clip(radius + 0.5 - dist, 0.0, 1.0)
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[..., :3] = colour
    rgba[..., 3] = np.round(alpha * 255).astype(np.uint8)
    x0, y0 = cx - size // 2, cy - size // 2
    return LayerObject(label=label, box=Box(x0, y0, x0 + size, y0 + size), rgba=rgba, offset=(x0, y0),
                       mask_score=0.9, segmenter="test:disc", sku=sku, match_score=0.8 if sku else None)


def _photo_of(objects: list[LayerObject], height=120, width=160) -> np.ndarray:
    """The scene the objects were cut from: a plain wall with the discs composited back to front."""
    photo = np.zeros((height, width, 3), np.float32) + WALL
    for obj in sorted(objects, key=lambda o: o.box.y1):
        x, y = obj.offset
        h, w = obj.rgba.shape[:2]
        a = obj.rgba[..., 3:4] / 255.0
        photo[y:y + h, x:x + w] = obj.rgba[..., :3] * a + photo[y:y + h, x:x + w] * (1 - a)
    return np.round(photo).astype(np.uint8)


@pytest.fixture
def scene():
    far = _disc_object("lamp", (50, 40), 12, (30, 60, 200))
    near = _disc_object("armchair", (60, 70), 25, (180, 40, 40), sku="blendswap/armchair")
    other_chair = _disc_object("armchair", (120, 60), 15, (40, 140, 40))
    objects = [near, far, other_chair]
    return _photo_of(objects), objects


def test_layers_go_back_to_front_with_numbered_names(scene):
    photo, objects = scene
    layer_set = build_layer_set(photo, objects)
    assert [layer.obj.label for layer in layer_set.layers] == ["lamp", "armchair", "armchair"]
    assert [layer.z for layer in layer_set.layers] == [1, 2, 3]
    assert [layer.name for layer in layer_set.layers] == ["lamp_001", "armchair_001", "armchair_002"]
    assert layer_set.layers[2].obj.sku == "blendswap/armchair"  # the nearest (lowest) object is on top


def test_psd_round_trip_keeps_order_names_offsets_and_alpha(scene, tmp_path):
    photo, objects = scene
    layer_set = build_layer_set(photo, objects)
    manifest = write_all(layer_set, "room.jpg", tmp_path)

    assert psd_problems(tmp_path / "layers.psd", manifest, tmp_path) == []
    psd = PSDImage.open(tmp_path / "layers.psd")
    assert (psd.width, psd.height, psd.depth) == (160, 120, 8)
    layers = list(psd)
    assert [layer.name for layer in layers] == ["background", "lamp_001", "armchair_001",
                                                "armchair_002 blendswap/armchair"]
    for layer, entry, obj in zip(layers[1:], manifest["layers"], [ly.obj for ly in layer_set.layers]):
        assert (layer.left, layer.top) == tuple(entry["offset"]) == obj.offset
        assert np.array_equal(np.asarray(layer.topil().convert("RGBA"))[..., 3], obj.rgba[..., 3])
        assert all(channel.compression == Compression.RLE for channel in layer._channels)
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk == manifest
    assert [e["z"] for e in on_disk["layers"]] == [1, 2, 3] and on_disk["background"]["z"] == 0
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["armchair_001.png", "armchair_002.png",
                                                                    "lamp_001.png"]


def test_a_psd_that_differs_from_its_manifest_is_reported(scene, tmp_path):
    photo, objects = scene
    manifest = write_all(build_layer_set(photo, objects), "room.jpg", tmp_path)
    swapped = dict(manifest, layers=list(reversed(manifest["layers"])))
    assert psd_problems(tmp_path / "layers.psd", swapped, tmp_path)
    moved = json.loads(json.dumps(manifest))
    moved["layers"][0]["offset"] = [0, 0]
    assert any("offset" in p for p in psd_problems(tmp_path / "layers.psd", moved, tmp_path))


def test_layers_over_the_filled_background_rebuild_the_photo(scene):
    photo, objects = scene
    layer_set = build_layer_set(photo, objects)
    assert composite_error(layer_set) < 1.5  # 0..255 scale, where the objects were
    hole = np.zeros(photo.shape[:2], bool)
    for obj in objects:
        x, y = obj.offset
        h, w = obj.rgba.shape[:2]
        hole[y:y + h, x:x + w] |= obj.rgba[..., 3] > 0
    # the plain wall is filled back in where the objects stood
    assert np.abs(layer_set.background[hole].astype(int) - WALL).max() <= 12


def test_hostile_labels_make_safe_file_names(scene, tmp_path):
    photo, objects = scene
    odd = [LayerObject(**{**obj.__dict__, "label": label}) for obj, label in
           zip(objects, ["../../etc/passwd", "Stühle & Tische", ""])]
    manifest = write_all(build_layer_set(photo, odd), "room.jpg", tmp_path)
    files = [entry["file"] for entry in manifest["layers"]]
    assert all(f.startswith("png/") and ".." not in f and "/" not in f[4:] for f in files)
    assert all((tmp_path / f).is_file() for f in files)


@pytest.mark.slow
def test_gimp_opens_the_psd_with_every_layer(scene, tmp_path):
    if not any(shutil.which(c) for c in ("gimp-console-2.10", "gimp-console", "gimp")):
        pytest.skip("GIMP is not installed (scripts/test.sh installs Debian's gimp)")
    photo, objects = scene
    layer_set = build_layer_set(photo, objects)
    write_all(layer_set, "room.jpg", tmp_path)
    count = gimp_render(tmp_path / "layers.psd", tmp_path / "gimp.png")
    assert count == 1 + len(objects)
    rendered = np.asarray(Image.open(tmp_path / "gimp.png").convert("RGB")).astype(float)
    assert rendered.shape == photo.shape
    assert np.abs(rendered - photo).mean() < 2.0  # GIMP's flattening matches the original photo
