"""A small indexed catalog from the bundled sample: the products of one scene and six distractors."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest

from matcher.indexing import run_index
from matcher.settings import Settings

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample"
SCENE = SAMPLE / "scenes" / "images" / "scene_00000.jpg"


def _scene_annotations(file_name: str) -> list[dict]:
    coco = json.loads((SAMPLE / "scenes" / "instances.json").read_text())
    image_id = next(i["id"] for i in coco["images"] if i["file_name"] == file_name)
    return [a for a in coco["annotations"] if a["image_id"] == image_id]


@pytest.fixture(scope="module")
def indexed(pg_server, tmp_path_factory) -> Settings:
    """A database holding the scene's two products and six distractors from the bundled sample."""
    folder = tmp_path_factory.mktemp("catalog")
    products = [json.loads(line) for line in (SAMPLE / "catalog" / "products.jsonl").open()]
    wanted = {a["sku"] for a in _scene_annotations("scenes/images/scene_00000.jpg")}
    chosen = [p for p in products if p["sku"] in wanted] + [p for p in products if p["sku"] not in wanted][:6]
    (folder / "catalog").mkdir()
    for p in chosen:
        target = folder / p["image"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLE / p["image"], target)
    (folder / "catalog" / "products.jsonl").write_text("".join(json.dumps(p) + "\n" for p in chosen))
    name = "q_" + uuid.uuid4().hex[:10]
    pg_server.psql(f"CREATE DATABASE {name};")
    settings = Settings(database_url=pg_server.get_uri().replace("/postgres?", f"/{name}?", 1),
                        data_dir=folder / "data", backend="classical")
    report = run_index(folder / "catalog" / "products.jsonl", settings, progress=False)
    assert report.counts["indexed"] == len(chosen)
    return settings
