"""Shared set-up for the review tests: a small indexed sample catalog, indexed once per
test session into a template database, and cheap per-test copies of it
(``CREATE DATABASE ... TEMPLATE``), so every test decides on fresh detections."""

from __future__ import annotations

import json
import shutil
import threading
import uuid
from pathlib import Path

from matcher.settings import Settings
from matcher.types import Box

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample"
SCENE_NAME = "scenes/images/scene_00000.jpg"
SCENE = SAMPLE / SCENE_NAME
PASSWORD = "correct horse battery staple"
REVIEWERS = ("alice", "bob", "carol", "smoke")  # accounts in every copy of the template, with PASSWORD

_templates: dict[int, tuple[str, Path]] = {}
_lock = threading.Lock()


def scene_annotations(file_name: str = SCENE_NAME, root: Path = SAMPLE) -> list[dict]:
    coco = json.loads((root / "scenes" / "instances.json").read_text())
    image_id = next(i["id"] for i in coco["images"] if i["file_name"] == file_name)
    return [a for a in coco["annotations"] if a["image_id"] == image_id]


def scene_boxes(file_name: str = SCENE_NAME) -> list[Box]:
    return [Box.from_xywh(*a["bbox"]) for a in scene_annotations(file_name)]


def _url(pg_server, name: str) -> str:
    return pg_server.get_uri().replace("/postgres?", f"/{name}?", 1)


def sample_template(pg_server, tmp_path_factory, n_distractors: int = 4) -> tuple[str, Path]:
    """(template database, catalog folder): scene_00000's products plus a few distractors, indexed."""
    from matcher.db.engine import get_engine
    from matcher.indexing import run_index

    with _lock:
        key = id(pg_server)
        if key in _templates:
            return _templates[key]
        folder = tmp_path_factory.mktemp("review_catalog")
        products = [json.loads(line) for line in (SAMPLE / "catalog" / "products.jsonl").open()]
        wanted = {a["sku"] for a in scene_annotations()}
        chosen = [p for p in products if p["sku"] in wanted] + [p for p in products if p["sku"] not in wanted][:n_distractors]
        for p in chosen:
            target = folder / p["image"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(SAMPLE / p["image"], target)
        (folder / "catalog").mkdir(exist_ok=True)
        (folder / "catalog" / "products.jsonl").write_text("".join(json.dumps(p) + "\n" for p in chosen))
        name = "rt_" + uuid.uuid4().hex[:10]
        pg_server.psql(f"CREATE DATABASE {name};")
        settings = Settings(database_url=_url(pg_server, name), data_dir=folder / "data", backend="classical")
        report = run_index(folder / "catalog" / "products.jsonl", settings, progress=False)
        assert report.counts["indexed"] == len(chosen), report.counts
        add_reviewers(settings)
        get_engine(settings).dispose()  # a template database must have no open connections
        _templates[key] = (name, folder)
        return name, folder


def clone_settings(pg_server, template: str, data_dir: Path, **overrides) -> Settings:
    """A fresh copy of the template database, and Settings for it."""
    name = "rc_" + uuid.uuid4().hex[:10]
    pg_server.psql(f"CREATE DATABASE {name} TEMPLATE {template};")
    values = {"database_url": _url(pg_server, name), "data_dir": data_dir, "backend": "classical", **overrides}
    return Settings(**values)


def env_for(settings: Settings) -> dict[str, str]:
    """The MATCHER_* variables that make the app (``Settings()``) see these settings."""
    env = {"MATCHER_DATABASE_URL": settings.database_url or "", "MATCHER_DATA_DIR": str(settings.data_dir),
           "MATCHER_BACKEND": settings.backend, "MATCHER_MAX_UPLOAD_BYTES": str(settings.max_upload_bytes)}
    return env


def add_reviewers(settings: Settings, names=REVIEWERS) -> None:
    from matcher import review

    for name in names:
        review.add_reviewer(settings, name, PASSWORD)
