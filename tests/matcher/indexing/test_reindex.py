"""Nightly reindex: incremental, perceptual change checks, removal, exclusivity, kill -9 safety, model switch."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from matcher.db import repository as repo
from matcher.db.engine import get_engine
from matcher.db.models import Cutout, Embedding, EmbeddingSpace, IndexEvent, IndexRun, Product
from matcher.indexing import IndexLockedError, run_index
from matcher.query import QueryEngine
from matcher.rerank import FORMULA_VERSION

REPO = Path(__file__).resolve().parents[3]


def _catalog(bench_dir: Path, folder: Path, n: int, offset: int = 0) -> tuple[Path, list[dict]]:
    products = [json.loads(line) for line in (bench_dir / "catalog" / "products.jsonl").open()][offset: offset + n]
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for p in products:
        target = folder / "images" / Path(p["image"]).name
        shutil.copy(bench_dir / p["image"], target)
        rows.append({"sku": p["sku"], "title": p["name"], "category": p["category"], "image": f"images/{target.name}"})
    return _write(folder, rows), rows


def _write(folder: Path, rows: list[dict]) -> Path:
    catalog = folder / "products.jsonl"
    catalog.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return catalog


def _reencode(path: Path, quality: int) -> None:
    image = Image.open(path).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    path.write_bytes(buffer.getvalue())


def _reindex(catalog, settings, **kwargs):
    return run_index(catalog, settings, progress=False, remove_missing=True, kind="reindex", **kwargs)


def test_only_real_changes_are_reprocessed(bench_dir, tmp_path, db_settings):
    catalog, rows = _catalog(bench_dir, tmp_path, 8)
    first = _reindex(catalog, db_settings)
    assert first.counts["new"] == 8 and first.space_active

    # Re-encode two images (bytes change, picture does not), really change one, retitle one, drop one.
    _reencode(tmp_path / rows[0]["image"], 70)
    with Image.open(tmp_path / rows[1]["image"]) as image:
        image.resize((image.width // 2, image.height // 2)).save(tmp_path / rows[1]["image"], quality=90)
    other = json.loads((bench_dir / "catalog" / "products.jsonl").open().readlines()[20])
    shutil.copy(bench_dir / other["image"], tmp_path / rows[2]["image"])
    rows[3]["title"] = "Renamed"
    removed = rows.pop()
    _write(tmp_path, rows)

    second = _reindex(catalog, db_settings)
    assert second.counts["perceptually_equal"] == 2
    assert second.counts["changed"] == 1 and second.processed == 1
    assert second.counts["metadata_updated"] == 1 and second.counts["removed"] == 1
    assert second.counts["unchanged"] == 4  # 7 left: 2 re-encoded + 1 changed are not "unchanged"

    with Session(get_engine(db_settings)) as session:
        events = dict(session.execute(select(IndexEvent.sku, IndexEvent.kind).where(IndexEvent.run_id == second.run_id)).all())
        assert events[rows[0]["sku"]] == "perceptually_equal" and events[rows[2]["sku"]] == "changed"
        assert events[removed["sku"]] == "removed"
        deleted = session.scalar(select(Product.deleted_at).where(Product.sku == removed["sku"]))
        assert deleted is not None
        space = repo.active_space(session)
        hits = repo.search(session, space, np.ones(space.dim, np.float32) / np.sqrt(space.dim), 20, exact=True)
        assert removed["sku"] not in {h.sku for h in hits}

    third = _reindex(catalog, db_settings)  # the re-encoded files are now the reference: nothing to do
    assert third.processed == 0 and third.counts["perceptually_equal"] == 0 and third.counts["unchanged"] == 7


def test_a_concurrent_second_run_is_refused(bench_dir, tmp_path, db_settings):
    catalog, _ = _catalog(bench_dir, tmp_path, 2)
    engine = get_engine(db_settings)
    repo_run = run_index(catalog, db_settings, progress=False)  # schema + one finished run
    assert repo_run.counts["new"] == 2
    holder = engine.connect()
    try:
        assert repo.try_index_lock(holder)  # another process's run, as far as the database can tell
        with pytest.raises(IndexLockedError, match="another index run"):
            run_index(catalog, db_settings, progress=False)
    finally:
        holder.invalidate()
        holder.close()
    assert run_index(catalog, db_settings, progress=False).counts["unchanged"] == 2  # lock gone with its session


def _counts(settings) -> dict[str, int]:
    with Session(get_engine(settings)) as session:
        return {
            "products": session.scalar(select(func.count()).select_from(Product)),
            "distinct_skus": session.scalar(select(func.count(func.distinct(Product.sku)))),
            "cutouts": session.scalar(select(func.count()).select_from(Cutout)),
            "embeddings": session.scalar(select(func.count()).select_from(Embedding)),
            "completed_events": session.scalar(select(func.count()).select_from(IndexEvent).where(IndexEvent.kind == "new")),
            "distinct_completed": session.scalar(select(func.count(func.distinct(IndexEvent.sku))).where(IndexEvent.kind == "new")),
            "live_products": session.scalar(select(func.count()).select_from(Product).where(Product.deleted_at.is_(None))),
        }


def test_sigkill_mid_run_then_rerun_finishes_with_nothing_lost_or_duplicated(bench_dir, tmp_path, db_settings):
    n = 16
    catalog, rows = _catalog(bench_dir, tmp_path, n)
    run_index(catalog, db_settings, progress=False, limit=0)  # create the schema first
    env = {**os.environ, "MATCHER_DATABASE_URL": db_settings.database_url, "MATCHER_DATA_DIR": str(db_settings.data_dir),
           "MATCHER_BATCH_SIZE": "2", "MATCHER_BACKEND": db_settings.backend}
    process = subprocess.Popen([sys.executable, "-m", "matcher.cli", "reindex", str(catalog), "--no-progress"],
                               env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    engine = get_engine(db_settings)
    deadline = time.monotonic() + 240
    done = 0
    while time.monotonic() < deadline and process.poll() is None:
        with engine.connect() as conn:
            done = conn.execute(text("SELECT count(*) FROM embeddings")).scalar()
        if done >= 3:
            break
        time.sleep(0.2)
    assert process.poll() is None, f"the run ended before it could be killed: {process.stdout.read().decode()[-2000:]}"
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    mid = _counts(db_settings)
    assert 3 <= mid["embeddings"] < n
    assert mid["products"] == mid["cutouts"] == mid["completed_events"]  # whole items only

    report = _reindex(catalog, db_settings)
    assert report.counts["interrupted_runs"] == 1
    assert report.counts["unchanged"] == mid["products"]
    assert report.counts["new"] + report.counts["unchanged"] == n
    final = _counts(db_settings)
    assert final["products"] == final["distinct_skus"] == n
    assert final["cutouts"] == n
    assert final["embeddings"] == report.counts["indexed"] + mid["embeddings"]
    assert final["completed_events"] == final["distinct_completed"] == n  # no product processed twice to completion
    with Session(engine) as session:
        statuses = [r.status for r in session.scalars(select(IndexRun).order_by(IndexRun.id))]
    assert statuses[-2:] == ["interrupted", "done"]


def test_switching_models_keeps_search_on_the_old_space_until_the_new_one_is_complete(bench_dir, tmp_path, db_settings):
    from tests.tiny_models import tiny_open_clip

    catalog, rows = _catalog(bench_dir, tmp_path, 4)
    _reindex(catalog, db_settings)
    with Session(get_engine(db_settings)) as session:
        old = repo.active_space(session)
    assert old.embedder_id.startswith("classical:")

    clip_name, checkpoint = tiny_open_clip(tmp_path)
    new_settings = db_settings.model_copy(update={"embedder": "open_clip", "clip_model": clip_name,
                                                  "clip_pretrained": "tiny-random", "clip_checkpoint": checkpoint,
                                                  "device": "cpu"})
    partial = run_index(catalog, new_settings, progress=False, limit=2)  # an interrupted switch, in effect
    assert partial.counts["reembedded"] == 2 and not partial.space_active
    engine = QueryEngine(new_settings)
    assert engine.space.id == old.id and engine.embedder.model_id == old.embedder_id

    complete = _reindex(catalog, new_settings)
    assert complete.counts["reembedded"] == 2 and complete.space_active
    engine = QueryEngine(new_settings)
    assert engine.space.id != old.id and engine.embedder.model_id.startswith(f"open_clip:{clip_name}")
    with Session(get_engine(db_settings)) as session:
        statuses = {s.id: s.status for s in session.scalars(select(EmbeddingSpace))}
        assert statuses[old.id] == "retired"
        per_space = dict(session.execute(select(Embedding.space_id, func.count()).group_by(Embedding.space_id)).all())
        assert per_space[old.id] == 4 and per_space[engine.space.id] == 4
        repo.drop_space(session, old.id)
        session.commit()
        assert session.scalar(select(func.count()).select_from(Embedding).where(Embedding.space_id == old.id)) == 0


def test_switching_to_the_pretrained_default_answers_from_the_classical_space_until_complete(bench_dir, tmp_path,
                                                                                             db_settings):
    from matcher.types import Box

    catalog, rows = _catalog(bench_dir, tmp_path, 3)
    _reindex(catalog, db_settings)  # the classical tier
    photo = tmp_path / rows[0]["image"]
    width, height = Image.open(photo).size
    whole = [Box(0, 0, width, height)]

    with Session(get_engine(db_settings)) as session, session.begin():  # a re-ranker trained in the classical space
        classical_space = repo.active_space(session).name
        repo.save_reranker(session, version="hgb-classical", kind="formula", feature_names=["cosine"], model=None,
                           metrics={"space": classical_space}, activate=True)

    effnet_settings = db_settings.model_copy(update={"backend": "effnet", "device": "cpu"})
    partial = run_index(catalog, effnet_settings, progress=False, limit=2)  # an interrupted switch, in effect
    assert partial.counts["reembedded"] == 2 and not partial.space_active
    engine = QueryEngine(effnet_settings)
    assert engine.embedder.model_id.startswith("classical:")  # search still answered from the old, complete space
    assert engine.reranker.version == "hgb-classical"
    assert engine.match(photo, boxes=whole, store=False).objects[0].candidates[0].sku == rows[0]["sku"]

    complete = _reindex(catalog, effnet_settings)
    assert complete.counts["reembedded"] == 1 and complete.space_active
    engine = QueryEngine(effnet_settings)
    assert engine.embedder.model_id.startswith("effnet:lite0:") and engine.space.dim == 1536
    # catalog shots were cut out classically; room photos get the shipped learned segmenter
    assert engine.space.segmenter_id.startswith("classical:") and engine.segmenter.segmenter_id.startswith("learned:")
    assert engine.reranker.version == FORMULA_VERSION  # the classical space's re-ranker does not rank effnet cosines
    candidates = engine.match(photo, boxes=whole, store=False).objects[0].candidates
    assert candidates[0].sku == rows[0]["sku"] and len(candidates) == 3
    assert {"cosine_deep", "cosine_colour"} <= set(candidates[0].features)  # the parts reach the re-ranker


def test_an_empty_or_cut_off_export_does_not_wipe_the_catalog(bench_dir, tmp_path, db_settings, monkeypatch):
    from typer.testing import CliRunner

    from matcher.cli import app

    catalog, rows = _catalog(bench_dir, tmp_path, 5)
    _reindex(catalog, db_settings)
    for key, value in {"MATCHER_DATABASE_URL": db_settings.database_url, "MATCHER_DATA_DIR": str(db_settings.data_dir),
                       "MATCHER_BACKEND": db_settings.backend}.items():
        monkeypatch.setenv(key, value)
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    runner = CliRunner()
    refused = runner.invoke(app, ["reindex", str(empty), "--no-progress"])
    assert refused.exit_code == 4, refused.output
    assert "refusing to remove 5 of 5 live products" in " ".join(refused.output.split())
    assert _counts(db_settings)["live_products"] == 5

    cut = tmp_path / "cut.jsonl"  # 2 of 5 gone: 40 % > 20 %
    cut.write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    assert runner.invoke(app, ["reindex", str(cut), "--no-progress"]).exit_code == 4
    assert _counts(db_settings)["live_products"] == 5
    allowed = runner.invoke(app, ["reindex", str(cut), "--no-progress", "--allow-mass-removal"])
    assert allowed.exit_code == 0, allowed.output
    assert _counts(db_settings)["live_products"] == 3


def test_damaged_stored_artifacts_are_per_item_problems(bench_dir, tmp_path, db_settings):
    """A corrupt stored matte does not fail the queries that retrieve it; a corrupt stored reference
    thumbnail does not abort the reindex: that item is simply processed again."""
    from matcher.types import Box

    catalog, rows = _catalog(bench_dir, tmp_path, 3)
    _reindex(catalog, db_settings)
    with Session(get_engine(db_settings)) as session, session.begin():
        ids = {p.sku: p.id for p in session.scalars(select(Product))}
        session.execute(text("UPDATE cutouts SET alpha_png = :junk WHERE product_id = :p"),
                        {"junk": b"not a png", "p": ids[rows[0]["sku"]]})
        session.execute(text("UPDATE products SET reference_png = :junk WHERE id = :p"),
                        {"junk": b"\x89PNG garbage", "p": ids[rows[1]["sku"]]})

    photo = tmp_path / rows[0]["image"]
    width, height = Image.open(photo).size
    result = QueryEngine(db_settings).match(photo, boxes=[Box(0, 0, width, height)], store=False)
    assert result.objects[0].candidates[0].sku == rows[0]["sku"]

    _reencode(tmp_path / rows[1]["image"], 80)  # bytes change: the stored reference would be consulted
    report = _reindex(catalog, db_settings)
    assert report.counts["changed"] == 1 and report.counts["failed"] == 0
    with Session(get_engine(db_settings)) as session:
        assert session.scalar(select(IndexRun.status).where(IndexRun.id == report.run_id)) == "done"
        repaired = session.scalar(select(Product.reference_png).where(Product.sku == rows[1]["sku"]))
        assert repaired.startswith(b"\x89PNG\r\n\x1a\n") and len(repaired) > 100
