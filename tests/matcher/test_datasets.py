"""`matcher dataset export` on a real database of reviewed masks, and `matcher seg train` on what it wrote."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from matcher import review
from matcher.cli import app
from matcher.datasets import DatasetExportError, export_reviewed_masks
from matcher.mask_edit import Hint
from matcher.query import QueryEngine
from matcher.review import Reviewer
from matcher.segmentation.data import decode_mask, read_bench, split_bench
from tests.review_support import SAMPLE, clone_settings, env_for, sample_template, scene_boxes

SCENES = [f"scenes/images/scene_0000{i}.jpg" for i in (0, 1, 3, 6, 9)]


@pytest.fixture(scope="module")
def reviewed(pg_server, tmp_path_factory):
    """Five sample photos matched; every mask verified by bob, one corrected by alice, all top candidates approved,
    and one more photo matched and reviewed whose file is gone by export time."""
    template = sample_template(pg_server, tmp_path_factory)
    settings = clone_settings(pg_server, template[0], tmp_path_factory.mktemp("dataset") / "data")
    engine = QueryEngine(settings)
    views = []
    for name in SCENES:
        result = engine.match(SAMPLE / name, boxes=scene_boxes(name), store=True)
        views += [review.detection_view(settings, o.detection_id) for o in result.objects]
    for view in views:
        review.verify_mask(settings, view.id, Reviewer("bob"))
    first = views[0]
    x, y, w, h = first.box.xywh()
    fixed = review.correct_mask(settings, first.id, engine, remove=[Hint(x - 2, y - 2, w + 4, h / 2)],
                                expected_version=0, reviewer=Reviewer("alice"))
    views[0] = fixed
    for view in views:
        review.decide(settings, view.id, Reviewer("carol"), "approve", view.candidates[0].product_id,
                      expected_version=view.version)
    gone = tmp_path_factory.mktemp("moved") / "scene_gone.jpg"
    shutil.copy(SAMPLE / SCENES[0], gone)
    lost = engine.match(gone, boxes=scene_boxes(SCENES[0])[:1], store=True)
    review.verify_mask(settings, lost.objects[0].detection_id, Reviewer("bob"))
    gone.unlink()
    return settings, views


def test_export_writes_a_versioned_bench_data_set_with_provenance(reviewed, tmp_path):
    settings, views = reviewed
    out = tmp_path / "reviewed-v1"
    report = export_reviewed_masks(settings, out, name="reviewed", version="v1")
    assert (report.images, report.annotations) == (5, 10)
    assert report.methods == {"verified": 9, "corrected": 1}
    assert len(report.skipped) == 1 and "scene_gone.jpg" in report.skipped[0]
    coco = json.loads((out / "scenes" / "instances.json").read_text())
    card = json.loads((out / "dataset.json").read_text())
    assert (card["name"], card["version"], card["split_seed"]) == ("reviewed", "v1", 42)

    by_detection = {a["detection_id"]: a for a in coco["annotations"]}
    assert set(by_detection) == {v.id for v in views}  # the corrected object appears once, with its new mask
    corrected = by_detection[views[0].id]
    assert (corrected["method"], corrected["reviewer"], corrected["mask_version"]) == ("corrected", "alice", 2)
    assert all(a["reviewer"] == "bob" and a["mask_version"] == 1 for a in coco["annotations"] if a is not corrected)
    images = {img["id"]: img for img in coco["images"]}
    for view in views:
        ann = by_detection[view.id]
        image = images[ann["image_id"]]
        assert image["source_photo"] == view.image_path and (out / image["file_name"]).is_file()
        stored = review.load_mask(view.mask_path)
        assert np.array_equal(decode_mask(ann["segmentation"], image["height"], image["width"]), stored)
        assert ann["sku"] == view.candidates[0].sku and ann["label_source"] == "approved product"
    skus = {json.loads(line)["sku"] for line in (out / "catalog" / "products.jsonl").open()}
    assert skus == {a["sku"] for a in coco["annotations"]}

    # The split is by photo: no photo in two parts, every photo in one, and seg train reads the same split.
    splits = json.loads((out / "splits.json").read_text())
    parts = [set(files) for files in splits.values()]
    assert sum(len(p) for p in parts) == len(set().union(*parts)) == 5
    assert all(splits[img["split"]].count(img["file_name"]) == 1 for img in coco["images"])
    bench = read_bench(out)
    assert {k: sorted(v) for k, v in split_bench(bench).items()} == \
        {part: sorted(img["id"] for img in coco["images"] if img["split"] == part) for part in splits}
    assert all(inst.label for scene in bench.scenes.values() for inst in scene.instances)


def test_a_version_is_never_overwritten_and_bad_names_are_refused(reviewed, tmp_path, monkeypatch):
    settings, _ = reviewed
    for key, value in env_for(settings).items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "ds"
    first = CliRunner().invoke(app, ["dataset", "export", "--out", str(out), "--name", "rooms", "--version", "v1"])
    assert first.exit_code == 0, first.output
    assert "5 photos, 10 masks" in first.output and "skipped" in first.output
    before = (out / "scenes" / "instances.json").read_bytes()
    again = CliRunner().invoke(app, ["dataset", "export", "--out", str(out), "--name", "rooms", "--version", "v2"])
    assert again.exit_code == 2 and "never overwritten" in again.output
    assert (out / "scenes" / "instances.json").read_bytes() == before
    with pytest.raises(DatasetExportError, match="--version"):
        export_reviewed_masks(settings, tmp_path / "x", name="rooms", version="../v1")
    assert not (tmp_path / "x").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no staging folder left behind


@pytest.mark.slow
def test_seg_train_trains_on_an_exported_data_set(reviewed, tmp_path):
    from matcher.segmentation.model import load_model_dir
    from matcher.segmentation.train import TrainOptions, train_model

    settings, _ = reviewed
    export_reviewed_masks(settings, tmp_path / "ds", name="reviewed", version="v1")
    opts = TrainOptions(box_size=64, text_long_side=64, decoder_channels=(16, 16, 8, 8, 8), imagenet=False,
                        box_batch=4, text_batch=2, panels=1, max_train_minutes=None, thresholds=(0.5,),
                        min_label_instances=1, epochs=1)
    lines: list[str] = []
    data = train_model(tmp_path / "ds", tmp_path / "model", opts, report=lines.append)
    assert lines[0].startswith("5 scenes:")
    assert data["test"]["images"] >= 1
    assert load_model_dir(tmp_path / "model").config.labels
