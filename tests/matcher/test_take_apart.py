"""`matcher layers` on real photos: drawn boxes against an indexed catalog, text prompts through the shipped
learned segmenter, no catalog at all, and bad input."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from psd_tools import PSDImage
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from matcher.cli import app
from matcher.db.engine import get_engine
from matcher.db.models import Query
from matcher.settings import Settings
from matcher.take_apart import LayersRequest, take_apart
from matcher.types import Box

from tests.query_support import SAMPLE, SCENE, _scene_annotations, indexed  # noqa: F401 (a fixture)

CHAIRS_SCENE = SAMPLE / "scenes" / "images" / "scene_00006.jpg"


def _env(monkeypatch, settings: Settings) -> None:
    monkeypatch.setenv("MATCHER_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("MATCHER_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("MATCHER_BACKEND", settings.backend)


def _box_args(file_name: str) -> list[str]:
    return [arg for a in _scene_annotations(file_name) for arg in ("--box", ",".join(str(v) for v in a["bbox"]))]


def test_layers_of_drawn_boxes_are_matched_written_and_verified(indexed, monkeypatch, tmp_path):
    _env(monkeypatch, indexed)
    with Session(get_engine(indexed)) as session:
        queries_before = session.scalar(select(func.count()).select_from(Query))
    out = tmp_path / "layers"
    result = CliRunner().invoke(app, ["layers", str(SCENE), "--out", str(out), "--json",
                                      *_box_args("scenes/images/scene_00000.jpg")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    manifest = json.loads((out / "manifest.json").read_text())
    assert report["manifest"] == manifest and report["psd_problems"] == []
    catalog = {json.loads(line)["sku"] for line in (indexed.data_dir.parent / "catalog" / "products.jsonl").open()}
    assert len(manifest["layers"]) == 2
    for entry in manifest["layers"]:
        assert entry["sku"] in catalog and 0 < entry["match_score"] <= 1
        assert entry["segmenter"].startswith("classical:")
        assert (out / entry["file"]).is_file()
    # the wardrobe reaches the floor lower in the photo than the lantern, so it is nearer and on top
    assert [e["box"][1] + e["box"][3] for e in manifest["layers"]] == sorted(e["box"][1] + e["box"][3]
                                                                           for e in manifest["layers"])
    names = [layer.name for layer in PSDImage.open(out / "layers.psd")]
    assert names == ["background"] + [f"{_stem(e['file'])} {e['sku']}" for e in manifest["layers"]]
    assert report["composite_error"] < 8.0
    with Session(get_engine(indexed)) as session:  # taking a photo apart is not a shopper's query
        assert session.scalar(select(func.count()).select_from(Query)) == queries_before


def _stem(file: str) -> str:
    return file.rsplit("/", 1)[-1].removesuffix(".png")


def test_layers_without_a_catalog_carry_no_sku(db_settings, tmp_path):
    boxes = tuple(Box.from_xywh(*a["bbox"]) for a in _scene_annotations("scenes/images/scene_00000.jpg"))
    result = take_apart(SCENE, tmp_path / "out", db_settings, LayersRequest(boxes=boxes))
    assert [e["sku"] for e in result.manifest["layers"]] == [None, None]
    assert any("no sku" in note for note in result.notes)
    assert result.psd_problems == []
    background = np.asarray(Image.open(tmp_path / "out" / "background.png"))
    assert background.shape == (result.manifest["height"], result.manifest["width"], 3)


def test_a_text_prompt_gives_one_layer_per_instance(db_settings, tmp_path):
    result = take_apart(CHAIRS_SCENE, tmp_path / "out", db_settings,
                        LayersRequest(prompt="segment the chairs", match=False))
    layers = result.manifest["layers"]
    truth = [Box.from_xywh(*a["bbox"]) for a in _scene_annotations("scenes/images/scene_00006.jpg")]
    assert {e["label"] for e in layers} == {"chair"} and all(e["segmenter"].startswith("learned:") for e in layers)
    # each annotated chair (a chair and a stool) is found as its own layer
    for box in truth:
        assert max(box.iou(Box.from_xywh(*e["box"])) for e in layers) > 0.7
    assert result.psd_problems == []


def test_bad_input_is_one_error_line_and_nothing_written(db_settings, monkeypatch, tmp_path):
    _env(monkeypatch, db_settings)
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(SCENE.read_bytes()[:2000])
    cases = [
        ([str(truncated), "--box", "1,1,50,50"], "cut.jpg"),
        ([str(SCENE), "--prompt", "segment the spaceship"], "unknown prompt"),
        ([str(SCENE), "--box", "5000,5000,10,10"], "outside"),
        ([str(SCENE)], "nothing to take apart"),
        ([str(SCENE), "--box", "1,1,50,50", "--inpaint", "magic"], "--inpaint"),
    ]
    for index, (args, message) in enumerate(cases):
        out = tmp_path / f"out{index}"
        result = CliRunner().invoke(app, ["layers", *args, "--out", str(out)])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and "Traceback" not in result.output
        assert not out.exists()
