"""Copy-paste box samples: cutouts from catalog mattes, composites whose target mask is exactly what shows."""

from __future__ import annotations

import re

import numpy as np
import pytest

from matcher.segmentation.data import read_bench, read_products, split_bench
from matcher.cutout import mask_bbox
from matcher.segmentation.paste import Cutout, cutout_from, load_cutouts, paste_composite
from matcher.segmentation.train import (Augment, ImageCache, TrainOptions, build_batch, paste_pool, plan_epoch,
                                        train_model)

from .conftest import PRODUCTS, write_bench

RED, BLUE, GREY = (220, 20, 20), (20, 20, 220), (128, 128, 128)


def _solid(sku: str, colour, h: int = 60, w: int = 40) -> Cutout:
    alpha = np.zeros((h, w), np.float32)
    alpha[5:-5, 5:-5] = 1.0
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:] = colour
    return cutout_from(sku, rgb, alpha)


def test_cutout_is_the_matte_box_at_most_max_side():
    rgb = np.zeros((500, 300, 3), np.uint8)
    alpha = np.zeros((500, 300), np.float32)
    alpha[100:400, 50:110] = 1.0
    cut = cutout_from("x", rgb, alpha, max_side=150)
    assert cut.alpha.shape == (150, 30) and cut.rgb.shape == (150, 30, 3) and cut.alpha.min() > 0.99
    assert cutout_from("empty", rgb, np.zeros((500, 300), np.float32)) is None


@pytest.mark.parametrize("seed", range(12))
def test_the_target_mask_is_the_target_pixels_that_show(seed):
    background = np.full((300, 400, 3), GREY, np.uint8)
    target, other = _solid("target", RED), _solid("other", BLUE)
    image, mask = paste_composite(background, target, [other], np.random.default_rng(seed), canvas=128)
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8 and mask.shape == (128, 128)
    solid = mask > 0.99
    # The target's long side is at least 0.3 x 128 px (about 38 x 23 px) and an occluder hides at most 60 %.
    assert solid.sum() >= 250
    red = image[..., 0].astype(int) - image[..., 2]
    assert (red[solid] > 100).all()  # where the mask says "target", the target shows
    assert (mask[red < -100] < 0.01).all()  # where another product shows, the mask is empty
    box = mask_bbox(mask > 0.5)
    assert box is not None and box.x1 - box.x0 >= 4 and box.y1 - box.y0 >= 4


def test_the_same_seed_gives_the_same_sample():
    background = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    cuts = [_solid("a", RED), _solid("b", BLUE)]
    first = paste_composite(background, cuts[0], cuts[1:], np.random.default_rng(3), canvas=96)
    again = paste_composite(background, cuts[0], cuts[1:], np.random.default_rng(3), canvas=96)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])


def test_load_cutouts_reads_the_mattes_and_skips_bad_rows(tmp_path):
    root = write_bench(tmp_path / "bench", catalog_photos=True)
    products = read_products(root)
    (root / products["test/chair-1"]["alpha"]).write_bytes(b"not a png")  # a broken file
    products["test/table-1"] = {k: v for k, v in products["test/table-1"].items() if k != "alpha"}  # no matte
    cutouts = load_cutouts(root, products, list(PRODUCTS) + ["unknown/sku"])
    assert sorted(c.sku for c in cutouts) == ["test/armchair-1", "test/speaker-1"]
    assert all(c.alpha.max() == 1.0 and c.rgb.shape[:2] == c.alpha.shape for c in cutouts)


def test_training_adds_paste_batches_only_when_the_catalog_has_mattes(tiny_bench, tmp_path):
    opts = TrainOptions(box_batch=4, paste_share=0.5)
    plain = read_bench(tiny_bench)
    assert paste_pool(plain, split_bench(plain)["train"]) is None  # no catalog photos: nothing to paste
    bench = read_bench(write_bench(tmp_path / "with-photos", catalog_photos=True))
    train_ids = split_bench(bench)["train"]
    pool = paste_pool(bench, train_ids)
    assert pool is not None and {c.sku for c in pool.cutouts} <= {i.sku for t in train_ids
                                                                   for i in bench.scenes[t].instances}
    plan = plan_epoch(bench, train_ids, np.random.default_rng(0), opts, paste=True)
    instances = sum(len(bench.scenes[i].instances) for i in train_ids)
    assert sum(len(items) for kind, items in plan if kind == "paste") == round(0.5 * instances)
    items = next(items for kind, items in plan if kind == "paste")
    crops, targets, weights, _ = build_batch("paste", items, bench, ImageCache(bench), ["armchair"], opts,
                                             np.random.default_rng(0), Augment(), lambda crop, _rng: crop, pool)
    assert len(crops) == len(items) and targets.shape == (len(items), 1, 256, 256) and weights.min() == 1.0
    assert all(0.0 < t.mean() < 1.0 for t in targets)  # every sample has object and backdrop


def test_unplaced_products_join_the_pool_but_no_validation_or_test_product_does(tmp_path):
    import json
    import shutil

    root = write_bench(tmp_path / "bench", catalog_photos=True)
    chair = read_products(root)["test/chair-1"]
    unplaced = {"test/stool-8", "test/stool-9"}  # in the catalog, in no photo
    for sku in sorted(unplaced):
        row = dict(chair, sku=sku, name="Stool")
        for kind in ("image", "alpha"):
            row[kind] = chair[kind].replace("chair-1", sku.split("/")[1])
            shutil.copy(root / chair[kind], root / row[kind])
        with (root / "catalog" / "products.jsonl").open("a") as rows:
            rows.write(json.dumps(row) + "\n")
    bench = read_bench(root)
    split = split_bench(bench)
    train_ids = split["train"][:1]  # one training photo: the other photos' products must stay out
    in_train = {i.sku for i in bench.scenes[train_ids[0]].instances}
    assert {c.sku for c in paste_pool(bench, train_ids).cutouts} <= in_train
    with_unplaced = {c.sku for c in paste_pool(bench, train_ids, unplaced=True).cutouts}
    assert unplaced <= with_unplaced and with_unplaced - unplaced <= in_train
    assert {c.sku for c in paste_pool(bench, train_ids, unplaced=True, seen=False).cutouts} == unplaced


def test_train_model_reports_the_copy_paste_samples(tmp_path):
    from .test_train import TINY

    lines: list[str] = []
    root = write_bench(tmp_path / "bench", catalog_photos=True)
    opts = TrainOptions(**TINY, epochs=1, baselines=False, paste_share=0.5)
    train_model(root, tmp_path / "model", opts, report=lines.append)
    assert any(re.match(r"copy-paste box samples from [2-4] catalog cutouts", line) for line in lines), lines
