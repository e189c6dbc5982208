"""Reading bench-format data, the image-id split, and the training samples."""

from __future__ import annotations

import numpy as np
import pytest

from matcher.segmentation.data import (Augment, NotABenchError, boundary_weights, box_sample, box_window, context_map,
                                       decode_mask, jitter_box, load_rgb, mirror, read_bench, split_bench,
                                       split_image_ids, text_canvas, text_sample)


def test_read_bench_labels_instances_from_the_catalog(tiny_bench):
    bench = read_bench(tiny_bench)
    assert len(bench.scenes) == 14
    counts = bench.label_counts()
    assert set(counts) == {"armchair", "chair", "table", "(none)"}
    scene = bench.scenes[1]
    assert scene.ignore_boxes == [(0, 0, 3, 3)]
    mask = decode_mask(scene.instances[0].rle, scene.height, scene.width)
    assert mask.shape == (48, 64) and mask.sum() == scene.instances[0].area


def test_not_a_bench(tmp_path):
    with pytest.raises(NotABenchError, match="products.jsonl"):
        read_bench(tmp_path)


def test_split_keeps_every_label_in_every_split_and_shares_no_image(tiny_bench):
    bench = read_bench(tiny_bench)
    split = split_bench(bench, seed=42)
    ids = [set(split[name]) for name in ("train", "val", "test")]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert set().union(*ids) == set(bench.scenes)
    for name in ("train", "val", "test"):
        assert set().union(*(bench.scenes[i].labels for i in split[name])) == {"armchair", "chair", "table"}
    assert split == split_bench(bench, seed=42)  # seeded


def test_split_sizes_and_rare_labels():
    labels = {i: {"common"} for i in range(100)}
    labels[3] = {"common", "rare"}
    labels[50] = {"rare"}
    labels[70] = {"rare"}
    labels[80] = {"twice"}
    labels[81] = {"twice"}
    split = split_image_ids(labels, seed=42)
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (70, 15, 15)
    for name in ("train", "val", "test"):
        assert any("rare" in labels[i] for i in split[name])
    # Two images: one stays in train, the other goes to test (test before val).
    assert any("twice" in labels[i] for i in split["train"]) and any("twice" in labels[i] for i in split["test"])


def test_text_canvas_is_a_multiple_of_32():
    assert text_canvas(600, 800, 384) == (288, 384)
    assert text_canvas(1000, 500, 320) == (320, 160)


def test_box_sample_crops_the_box_with_its_margin(tiny_bench):
    bench = read_bench(tiny_bench)
    scene = bench.scenes[2]
    inst = scene.instances[0]
    image = load_rgb(scene.path)
    x, y, w, h = inst.bbox
    crop, target, _ = box_sample(image, decode_mask(inst.rle, *image.shape[:2]), (x, y, x + w, y + h), 32, 0.1)
    assert crop.shape == (32, 32, 3) and crop.dtype == np.uint8
    assert target.shape == (32, 32) and 0.3 < target.mean() <= 1.0
    rng = np.random.default_rng(0)
    jittered, _, _ = box_sample(image, decode_mask(inst.rle, *image.shape[:2]), (x, y, x + w, y + h), 32, 0.1,
                                rng, Augment())
    assert jittered.shape == (32, 32, 3)


def first_instance(bench_root) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float, float]]:
    """(photo, true mask, box x0, y0, x1, y1) of the first instance of the tiny bench's second photo."""
    scene = read_bench(bench_root).scenes[2]
    inst = scene.instances[0]
    image = load_rgb(scene.path)
    x, y, w, h = inst.bbox
    return image, decode_mask(inst.rle, *image.shape[:2]), (x, y, x + w, y + h)


def test_box_jitter_share_keeps_some_boxes_exact_and_the_default_stream(tiny_bench):
    image, mask, box = first_instance(tiny_bench)
    exact, _, _ = box_sample(image, mask, box, 32, 0.1)
    never = [box_sample(image, mask, box, 32, 0.1, np.random.default_rng(s), Augment(box_jitter_p=0.0))[0]
             for s in range(5)]
    assert all(np.array_equal(crop, exact) for crop in never)
    always = [box_sample(image, mask, box, 32, 0.1, np.random.default_rng(s), Augment())[0] for s in range(5)]
    assert not any(np.array_equal(crop, exact) for crop in always)
    half = [box_sample(image, mask, box, 32, 0.1, np.random.default_rng(s), Augment(box_jitter_p=0.5))[0]
            for s in range(40)]
    assert 5 < sum(np.array_equal(crop, exact) for crop in half) < 35
    # At the default share of 1 no extra random number is drawn: earlier runs' samples are unchanged.
    sampled, direct = np.random.default_rng(3), np.random.default_rng(3)
    box_sample(image, mask, box, 32, 0.1, sampled, Augment())
    jitter_box(box, direct, Augment().box_jitter)
    assert sampled.random() == direct.random()


def test_text_sample_has_one_channel_per_label_and_the_ignore_region(tiny_bench):
    bench = read_bench(tiny_bench)
    scene = bench.scenes[1]
    image = load_rgb(scene.path)
    crop, targets, ignore = text_sample(image, scene, ["armchair", "chair", "table"], (64, 96))
    assert crop.shape == (64, 96, 3) and targets.shape == (3, 64, 96) and ignore.shape == (64, 96)
    present = {["armchair", "chair", "table"][c] for c in range(3) if targets[c].max() > 0}
    assert present == scene.labels
    assert ignore[:3, :3].min() > 0.5 and ignore[-5:, -5:].max() == 0


def test_photometric_augmentation_keeps_uint8_images():
    import torch

    torch.manual_seed(0)
    transform = Augment(jpeg_p=1.0).photometric()
    crop = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    out = transform(crop, np.random.default_rng(0))
    assert out.dtype == np.uint8 and out.shape == (32, 32, 3) and not np.array_equal(out, crop)


def test_mirror_flips_the_image_and_its_maps_together_and_passes_a_missing_map_through():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    target = np.array([[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]], np.float32)  # (C, H, W)
    flipped, flipped_target, missing = mirror(image, target, None)
    assert np.array_equal(flipped, image[:, ::-1]) and flipped.flags.c_contiguous
    assert np.array_equal(flipped_target, [[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]])
    assert missing is None


def test_boundary_weights_mark_a_band_around_the_outline():
    target = np.zeros((40, 40), np.float32)
    target[10:30, 10:30] = 1.0
    weights = boundary_weights(target, extra=2.0, width=3)
    assert weights[20, 20] == 1.0 and weights[0, 0] == 1.0  # the bulk of the object and the open backdrop
    assert weights[20, 10] == 3.0 and weights[20, 8] == 3.0 and weights[20, 12] == 3.0  # the edge, both sides
    assert weights[20, 5] == 1.0 and weights[20, 15] == 1.0  # out of the band
    leg = np.zeros((40, 40), np.float32)
    leg[5:35, 19:21] = 1.0  # a 2-pixel leg lies wholly in the band
    assert (boundary_weights(leg, 2.0, 3)[leg > 0] == 3.0).all()
    assert (boundary_weights(target, 0.0, 3) == 1.0).all()


def test_context_map_marks_the_other_boxes_inside_the_crop():
    window = (100, 50, 200, 150)  # 100 x 100 photo pixels, resized to 10 x 10
    out = context_map(window, [(150, 50, 300, 100), (0, 0, 20, 20)], 10)
    assert out.dtype == np.float32 and out.shape == (10, 10)
    assert (out[:5, 5:] == 1.0).all() and out.sum() == 25  # the box outside the crop leaves no trace
    assert context_map(window, [], 10).sum() == 0


def test_box_sample_maps_the_other_boxes_and_jitters_them_with_the_box(tiny_bench):
    image, mask, box = first_instance(tiny_bench)
    x0, y0, x1, y1 = box
    other = (x0 + (x1 - x0) / 2, y0, x1 + (x1 - x0), y1)  # covers the right half of the box and beyond
    assert box_sample(image, mask, box, 32, 0.1)[2] is None
    _, _, exact = box_sample(image, mask, box, 32, 0.1, others=[other])
    assert np.array_equal(exact, context_map(box_window(box, 0.1), [other], 32)) and 0 < exact.mean() < 1
    jittered = [box_sample(image, mask, box, 32, 0.1, np.random.default_rng(s), Augment(box_jitter_p=0.0),
                           others=[other])[2] for s in range(3)]
    assert not all(np.array_equal(m, exact) for m in jittered)  # detector-like boxes all round, the prompt's kept
