"""``matcher eval --model A --model B``: embedders compared on the same query cutouts in one run."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from matcher.cli import app

SAMPLE = Path(__file__).resolve().parents[3] / "sample"


@pytest.fixture
def small_bench(tmp_path) -> Path:
    """The sample's first two scenes and a catalog of their products plus a few distractors."""
    coco = json.loads((SAMPLE / "scenes" / "instances.json").read_text())
    images = coco["images"][:2]
    anns = [a for a in coco["annotations"] if a["image_id"] in {i["id"] for i in images}]
    wanted = {a["sku"] for a in anns}
    products = [json.loads(line) for line in (SAMPLE / "catalog" / "products.jsonl").open()]
    chosen = [p for p in products if p["sku"] in wanted] + [p for p in products if p["sku"] not in wanted][:5]
    folder = tmp_path / "bench"
    for rel in [p["image"] for p in chosen] + [i["file_name"] for i in images]:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLE / rel, folder / rel)
    (folder / "catalog" / "products.jsonl").write_text("".join(json.dumps(p) + "\n" for p in chosen))
    (folder / "scenes" / "instances.json").write_text(json.dumps(dict(coco, images=images, annotations=anns)))
    return folder


def test_two_embedders_on_the_same_cutouts_in_one_run(small_bench, pg_server, tmp_path, monkeypatch):
    name = "e_" + uuid.uuid4().hex[:10]
    pg_server.psql(f"CREATE DATABASE {name};")
    monkeypatch.setenv("MATCHER_DATABASE_URL", pg_server.get_uri().replace("/postgres?", f"/{name}?", 1))
    monkeypatch.setenv("MATCHER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MATCHER_DEVICE", "cpu")
    out = tmp_path / "compare.json"
    args = ["eval", str(small_bench), "--use-gt-boxes", "--json", str(out), "--model", "classical", "--model", "effnet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    objects = len(json.loads((small_bench / "scenes" / "instances.json").read_text())["annotations"])
    classical, effnet = report["models"]["classical"], report["models"]["effnet"]
    assert report["scenes"] == 2 and report["query_cutouts"] == objects == classical["objects"] == effnet["objects"]
    assert classical["space"].startswith("classical:") and effnet["space"].startswith("effnet:lite0:")
    for row in (classical, effnet):
        assert 0 <= row["recall@1"] <= row["recall@5"] <= row["recall@10"] <= 1
        assert row["embed_ms_per_image"] > 0 and row["index"]["products_per_s"] > 0
    assert effnet["recall@5"] == 1.0  # unoccluded sample objects: the pretrained tier finds every one
    table = out.with_suffix(".md").read_text()
    assert "| classical |" in table and "| effnet |" in table and "effnet" in result.output

    refused = CliRunner().invoke(app, ["eval", str(small_bench), "--json", str(out), "--model", "classical"])
    assert refused.exit_code == 2 and "--use-gt-boxes" in refused.output
