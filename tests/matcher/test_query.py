"""The query path end to end: `matcher match` on a real scene against a real indexed catalog."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from matcher.cli import app
from matcher.db.engine import get_engine
from matcher.db.models import CandidateRow, DetectionRow, Query
from matcher.features import FEATURE_NAMES
from matcher.fusion import FusionConfig
from matcher.indexing import run_index
from matcher.query import QueryEngine
from matcher.settings import Settings
from matcher.types import Box

from tests.query_support import SAMPLE, SCENE, _scene_annotations, indexed  # noqa: F401 (a fixture)


def test_match_with_boxes_prints_candidates_with_feature_breakdowns(indexed, monkeypatch):
    for key, value in {"MATCHER_DATABASE_URL": indexed.database_url, "MATCHER_DATA_DIR": str(indexed.data_dir)}.items():
        monkeypatch.setenv(key, value)
    anns = _scene_annotations("scenes/images/scene_00000.jpg")
    args = ["match", str(SCENE), "--json", "--top-k", "3"]
    for ann in anns:
        args += ["--box", ",".join(str(round(v)) for v in ann["bbox"])]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert len(payload["detections"]) == len(anns)
    for ann, det in zip(anns, payload["detections"]):
        assert det["source"] == "user" and det["fail_reason"] is None
        assert Path(det["cutout_path"]).is_file() and Path(det["mask_path"]).is_file()
        assert len(det["candidates"]) == 3
        top = det["candidates"][0]
        # The classical embedder declares colour/texture/shape parts: every feature but the pretrained part is there.
        assert set(top["features"]) == set(FEATURE_NAMES) - {"cosine_deep", "cosine_deep_gap"}
        assert all(c["features"][n] <= 0 for c in det["candidates"] for n in top["features"] if n.endswith("_gap"))
        assert "cosine" in top["explanation"] and "colour" in top["explanation"]
        # Easy, unoccluded objects: the right product must be among the top 3.
        assert ann["sku"] in [c["sku"] for c in det["candidates"]]
    with Session(get_engine(indexed)) as session:
        query = session.get(Query, payload["query_id"])
        assert query is not None and query.reranker_version == payload["reranker"]
        n_dets = session.scalar(select(func.count()).select_from(DetectionRow).where(DetectionRow.query_id == query.id))
        assert n_dets == len(anns)
        assert session.scalar(select(func.count()).select_from(CandidateRow)
                              .join(DetectionRow, DetectionRow.id == CandidateRow.detection_id)
                              .where(DetectionRow.query_id == query.id)) > 0


def test_a_relative_photo_path_is_stored_absolute(indexed, monkeypatch):
    monkeypatch.chdir(SCENE.parent)
    result = QueryEngine(indexed).match(SCENE.name, boxes=[Box(0, 0, 100, 100)], store=True)
    with Session(get_engine(indexed)) as session:
        assert session.get(Query, result.query_id).image_path == str(SCENE.resolve())


def test_corrupt_query_image_gives_a_clear_error(indexed, monkeypatch, tmp_path):
    monkeypatch.setenv("MATCHER_DATABASE_URL", indexed.database_url)
    monkeypatch.setenv("MATCHER_DATA_DIR", str(indexed.data_dir))
    broken = tmp_path / "room.jpg"
    broken.write_bytes(SCENE.read_bytes()[:2000])
    result = CliRunner().invoke(app, ["match", str(broken), "--box", "10,10,100,100"])
    assert result.exit_code == 2
    assert "room.jpg" in result.output and ("truncated" in result.output or "corrupt" in result.output)
    assert "Traceback" not in result.output


def test_bad_boxes_and_no_detector_are_refused(indexed):
    engine = QueryEngine(indexed)
    with pytest.raises(ValueError, match="outside"):
        engine.match(SCENE, boxes=[Box(900, 700, 950, 750)], store=False)
    with pytest.raises(ValueError, match="no detector"):
        engine.match(SCENE, store=False)


def test_tiny_deep_models_run_detector_sam_and_open_clip_end_to_end(pg_server, tmp_path, monkeypatch):
    """RT-DETR (random, from yaml) + fusion + SAM (tiny) + open_clip (tiny): the deep query path runs."""
    import segment_anything

    from matcher.backends.ultralytics_detector import UltralyticsDetector
    from tests.tiny_models import TINY_SAM_TYPE, build_tiny_sam, tiny_open_clip, tiny_rtdetr, tiny_sam

    monkeypatch.setitem(segment_anything.sam_model_registry, TINY_SAM_TYPE, build_tiny_sam)
    clip_name, clip_checkpoint = tiny_open_clip(tmp_path)
    name = "d_" + uuid.uuid4().hex[:10]
    pg_server.psql(f"CREATE DATABASE {name};")
    settings = Settings(
        database_url=pg_server.get_uri().replace("/postgres?", f"/{name}?", 1), data_dir=tmp_path / "data",
        backend="deep", device="cpu", sam_model=TINY_SAM_TYPE, sam_checkpoint=tiny_sam(tmp_path),
        clip_model=clip_name, clip_pretrained="tiny-random", clip_checkpoint=clip_checkpoint)
    catalog = tmp_path / "products.jsonl"
    products = [json.loads(line) for line in (SAMPLE / "catalog" / "products.jsonl").open()][:4]
    catalog.write_text("".join(json.dumps({**p, "image": str(SAMPLE / p["image"])}) + "\n" for p in products))
    run_index(catalog, settings, progress=False)

    detector = UltralyticsDetector(tiny_rtdetr(), kind="rtdetr", weights_name="rtdetr-l-random", conf=0.0,
                                   imgsz=320, max_det=5, device="cpu")
    engine = QueryEngine(settings, detector_objects=[detector], fusion=FusionConfig(min_score=0.0))
    result = engine.match(SCENE, store=True)
    assert result.objects, "the random detector at conf 0 always proposes boxes"
    assert all(o.detection.source == detector.detector_id for o in result.objects)
    assert result.timings["find"] > 0 and result.timings["trace"] > 0
    assert result.query_id is not None
    assert all(o.cutout is not None and o.full_mask.shape == (600, 800) for o in result.objects)
    with Session(get_engine(settings)) as session:
        stored = session.scalar(select(func.count()).select_from(DetectionRow).where(DetectionRow.query_id == result.query_id))
        assert stored == len(result.objects)
    embedded = [o for o in result.objects if o.cutout.ok]
    for obj in embedded:
        assert obj.candidates and all(c.sku in {p["sku"] for p in products} for c in obj.candidates)
        assert "cosine_colour" not in obj.candidates[0].features  # open_clip declares no parts
        assert "silhouette_iou_gap" in obj.candidates[0].features


def test_objects_cut_out_on_threads_match_those_cut_out_one_by_one(indexed):
    import numpy as np

    boxes = [Box.from_xywh(*ann["bbox"]) for ann in _scene_annotations("scenes/images/scene_00000.jpg")]
    results = {}
    for workers in (1, 2, 2):  # the first threaded run may still be sequential (numba picks its layer lazily)
        engine = QueryEngine(indexed.model_copy(update={"query_workers": workers}))
        results[workers] = engine.match(SCENE, boxes=boxes, store=False)
    one, two = results[1], results[2]
    for a, b in zip(one.objects, two.objects):
        assert np.array_equal(a.cutout.alpha, b.cutout.alpha) and np.array_equal(a.full_mask, b.full_mask)
        assert [c.sku for c in a.candidates] == [c.sku for c in b.candidates]
