"""`matcher index` end to end on the real embedded Postgres with real bench images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from matcher.db import repository as repo
from matcher.db.engine import get_engine
from matcher.db.models import Cutout, Embedding, EmbeddingSpace, Product
from matcher.indexing import run_index


def _bench_subset(bench_dir: Path, tmp_path: Path, n: int) -> tuple[Path, list[dict]]:
    """Copy ``n`` bench products (images only) into a small catalog of our own."""
    products = [json.loads(line) for line in (bench_dir / "catalog" / "products.jsonl").open()][:n]
    (tmp_path / "images").mkdir(exist_ok=True)
    rows = []
    for p in products:
        target = tmp_path / "images" / Path(p["image"]).name
        shutil.copy(bench_dir / p["image"], target)
        rows.append({"sku": p["sku"], "title": p["name"], "category": p["category"], "image": f"images/{target.name}"})
    catalog = tmp_path / "products.jsonl"
    catalog.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return catalog, rows


def _skus(session: Session, model) -> set[str]:
    return set(session.scalars(select(Product.sku).join(model, model.product_id == Product.id)))


def test_index_stores_every_product_and_rerun_does_no_work(bench_dir, tmp_path, db_settings):
    catalog, rows = _bench_subset(bench_dir, tmp_path, 6)
    report = run_index(catalog, db_settings, progress=False)
    assert report.counts["indexed"] + report.counts["mask_fail"] == 6
    assert report.failures == []

    with Session(get_engine(db_settings)) as session:
        skus = {r["sku"] for r in rows}
        assert set(session.scalars(select(Product.sku))) == skus
        assert _skus(session, Cutout) == skus
        assert len(_skus(session, Embedding)) == report.counts["indexed"]
        space = repo.active_space(session)
        assert space is not None and space.embedder_id.startswith("classical:")
        stored_dim = session.scalar(select(Embedding.dim).limit(1))
        assert stored_dim == space.dim

    again = run_index(catalog, db_settings, progress=False)
    assert again.processed == 0
    assert again.counts["unchanged"] == 6


def test_changed_image_and_metadata_are_picked_up(bench_dir, tmp_path, db_settings):
    catalog, rows = _bench_subset(bench_dir, tmp_path, 3)
    run_index(catalog, db_settings, progress=False)
    # Swap the first product's image for the fourth bench image, and retitle the second.
    other = json.loads((bench_dir / "catalog" / "products.jsonl").open().readlines()[3])
    shutil.copy(bench_dir / other["image"], tmp_path / rows[0]["image"])
    rows[1]["title"] = "Renamed"
    catalog.write_text("".join(json.dumps(r) + "\n" for r in rows))

    report = run_index(catalog, db_settings, progress=False)
    assert report.processed == 1
    assert report.counts["metadata_updated"] == 1
    with Session(get_engine(db_settings)) as session:
        titles = dict(session.execute(select(Product.sku, Product.title)).all())
        assert titles[rows[1]["sku"]] == "Renamed"


def test_bad_items_are_reported_and_leave_nothing_behind(bench_dir, tmp_path, db_settings):
    catalog, rows = _bench_subset(bench_dir, tmp_path, 2)
    good_jpeg = (tmp_path / rows[0]["image"]).read_bytes()
    (tmp_path / "images" / "truncated.jpg").write_bytes(good_jpeg[: len(good_jpeg) // 3])
    (tmp_path / "images" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg" * 50)
    bad = [
        {"sku": "bad/truncated", "title": "t", "image": "images/truncated.jpg"},
        {"sku": "bad/corrupt", "title": "c", "image": "images/corrupt.jpg"},
        {"sku": "bad/missing", "title": "m", "image": "images/missing.jpg"},
    ]
    catalog.write_text("".join(json.dumps(r) + "\n" for r in rows + bad) + "{broken json\n")

    report = run_index(catalog, db_settings, progress=False)
    reasons = {f.sku: f.reason for f in report.failures}
    assert set(reasons) == {"bad/truncated", "bad/corrupt", "bad/missing", None}
    assert "truncated" in reasons["bad/truncated"] or "corrupt" in reasons["bad/truncated"]
    assert "not a recognised image" in reasons["bad/corrupt"] or "corrupt" in reasons["bad/corrupt"]
    assert "file not found" in reasons["bad/missing"]
    assert report.processed == 2

    with Session(get_engine(db_settings)) as session:
        assert set(session.scalars(select(Product.sku))) == {r["sku"] for r in rows}
        stored = repo.run_failures(session, report.run_id)
        assert {f.sku for f in stored} == set(reasons)


def test_a_failure_while_storing_rolls_back_the_whole_item(bench_dir, tmp_path, db_settings, monkeypatch):
    catalog, rows = _bench_subset(bench_dir, tmp_path, 3)
    victim = rows[1]["sku"]
    real_upsert = repo.upsert_embedding

    def failing_upsert(session, product_id, space, model_id, vector, image_sha256):
        sku = session.scalar(select(Product.sku).where(Product.id == product_id))
        if sku == victim:
            raise RuntimeError("simulated crash after product and cutout were written")
        return real_upsert(session, product_id, space, model_id, vector, image_sha256)

    monkeypatch.setattr(repo, "upsert_embedding", failing_upsert)
    report = run_index(catalog, db_settings, progress=False)
    if report.counts["mask_fail"]:
        pytest.skip("the victim item failed its mask gate, so no embedding was written")
    assert [f.sku for f in report.failures] == [victim]
    with Session(get_engine(db_settings)) as session:
        assert victim not in set(session.scalars(select(Product.sku)))
        assert victim not in _skus(session, Cutout)
        assert len(set(session.scalars(select(Product.sku)))) == 2


def test_deep_backend_indexes_with_tiny_random_models(bench_dir, tmp_path, db_settings, monkeypatch):
    """SAM + open_clip through the real loading code (local checkpoints), tiny random weights."""
    import segment_anything

    from tests.tiny_models import TINY_SAM_TYPE, build_tiny_sam, tiny_open_clip, tiny_sam

    monkeypatch.setitem(segment_anything.sam_model_registry, TINY_SAM_TYPE, build_tiny_sam)
    clip_name, clip_checkpoint = tiny_open_clip(tmp_path)
    settings = db_settings.model_copy(update={
        "backend": "deep", "device": "cpu",
        "sam_model": TINY_SAM_TYPE, "sam_checkpoint": tiny_sam(tmp_path),
        "clip_model": clip_name, "clip_pretrained": "tiny-random", "clip_checkpoint": clip_checkpoint,
    })
    catalog, rows = _bench_subset(bench_dir, tmp_path, 3)
    report = run_index(catalog, settings, progress=False)
    assert report.failures == []
    assert report.counts["indexed"] + report.counts["mask_fail"] == 3
    with Session(get_engine(settings)) as session:
        (space,) = session.scalars(select(EmbeddingSpace)).all()
        assert space.embedder_id.startswith(f"open_clip:{clip_name}") and space.segmenter_id.startswith("sam:")
        assert space.dim == 32
        assert set(session.scalars(select(Cutout.segmenter_id))) == {space.segmenter_id}
        assert len(_skus(session, Cutout)) == 3
        assert len(_skus(session, Embedding)) == report.counts["indexed"]


def test_nul_characters_fail_their_row_not_the_run(bench_dir, tmp_path, db_settings):
    """Postgres text cannot hold NUL: such a row is that row's failure; the run ends and the space is usable."""
    from matcher.db.models import IndexFailure, IndexRun
    from matcher.query import QueryEngine

    catalog, rows = _bench_subset(bench_dir, tmp_path, 4)
    rows[1]["title"] = "Arm\u0000chair"
    rows[2]["sku"] = "bad\u0000sku"
    rows[3]["attributes"] = {"finish": ["oak", "wal\u0000nut"]}
    catalog.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for _ in range(2):  # and again: nothing is left blocked
        report = run_index(catalog, db_settings, progress=False)
        assert report.counts["failed"] == 3 and report.space_active
    with Session(get_engine(db_settings)) as session:
        assert [r.status for r in session.scalars(select(IndexRun))] == ["done", "done"]
        reasons = {f.line: (f.sku, f.reason) for f in session.scalars(select(IndexFailure).where(
            IndexFailure.run_id == report.run_id))}
        assert reasons[2] == (rows[1]["sku"], "field 'title' contains a NUL character")
        assert reasons[3][0] is None and "'sku'" in reasons[3][1]
        assert reasons[4] == (rows[3]["sku"], "field 'finish' contains a NUL character")
        assert _skus(session, Embedding) == {rows[0]["sku"]}
    assert QueryEngine(db_settings).space.status == "active"


def test_losing_the_database_after_the_last_product_is_one_clear_error(bench_dir, tmp_path, db_settings,
                                                                      monkeypatch):
    """The database stops between storing and switching the search space over: DatabaseUnavailableError (the
    command's exit 5), never a raw driver error."""
    from sqlalchemy.exc import OperationalError

    from matcher.db.engine import DatabaseUnavailableError
    from matcher.indexing import job

    catalog, _ = _bench_subset(bench_dir, tmp_path, 2)

    def gone(engine, space):
        raise OperationalError("SELECT 1", {}, Exception("connection is bad"))

    monkeypatch.setattr(job, "_activate_if_complete", gone)
    monkeypatch.setattr(job, "connection_lost", lambda engine, exc: isinstance(exc, OperationalError))
    with pytest.raises(DatabaseUnavailableError, match="stored every product, then the database stopped answering"):
        run_index(catalog, db_settings, progress=False)
    monkeypatch.setattr(job, "connection_lost", lambda engine, exc: False)  # a statement error stays itself
    with pytest.raises(OperationalError):
        run_index(catalog, db_settings, progress=False)


def test_pool_workers_die_with_a_killed_run(bench_dir, tmp_path, db_settings):
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.process_support import children_of, is_running

    catalog, _rows = _bench_subset(bench_dir, tmp_path, 12)
    env = {**os.environ, "MATCHER_DATABASE_URL": db_settings.database_url, "MATCHER_DATA_DIR": str(db_settings.data_dir),
           "MATCHER_BACKEND": db_settings.backend}
    run = subprocess.Popen([sys.executable, "-m", "matcher.cli", "index", str(catalog), "--workers", "2", "--no-progress"],
                           env=env, cwd=Path(__file__).resolve().parents[3], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    workers: set[int] = set()
    with Session(get_engine(db_settings)) as session:
        while time.monotonic() < deadline and run.poll() is None:  # wait until the pool is working
            workers = children_of(run.pid)
            if len(workers) >= 2 and session.scalar(select(Embedding.id).limit(1)) is not None:
                break
            session.rollback()
            time.sleep(0.1)
    assert run.poll() is None and len(workers) >= 2, "the run ended before its pool could be killed"
    run.send_signal(signal.SIGKILL)
    run.wait(30)
    deadline = time.monotonic() + 30
    while any(is_running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in workers if is_running(pid)], "pool workers outlived their killed parent"


def test_markup_in_catalog_text_is_printed_as_text(bench_dir, tmp_path, db_settings, monkeypatch):
    """Console output escapes catalog text: a sku like ``ok[/red]sku`` neither breaks nor styles the output."""
    from PIL import Image
    from typer.testing import CliRunner

    from matcher.cli import app

    catalog, rows = _bench_subset(bench_dir, tmp_path, 2)
    rows[0]["sku"], rows[1]["sku"], rows[1]["image"] = "good[/red]one", "bad[bold]two", "images/missing.jpg"
    catalog.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for key, value in {"MATCHER_DATABASE_URL": db_settings.database_url, "MATCHER_DATA_DIR": str(db_settings.data_dir),
                       "MATCHER_BACKEND": db_settings.backend}.items():
        monkeypatch.setenv(key, value)
    runner = CliRunner()
    indexed = runner.invoke(app, ["index", str(catalog), "--no-progress"])
    assert indexed.exit_code == 0, indexed.output
    assert "bad[bold]two [load]" in indexed.output
    photo = tmp_path / rows[0]["image"]
    width, height = Image.open(photo).size
    matched = runner.invoke(app, ["match", str(photo), "--box", f"0,0,{width},{height}", "--top-k", "1"])
    assert matched.exit_code == 0, matched.output
    assert "good[/red]one" in matched.output


def test_stopping_the_embedded_database_under_a_run_gives_one_error_and_a_failed_run(bench_dir, tmp_path):
    """``matcher db stop`` while ``matcher index --workers 2`` stores: one error line (exit 5), not a traceback
    per item; the run's end is recorded as failed once the database is back."""
    import os
    import subprocess
    import sys
    import time

    from matcher.settings import Settings

    # 40 products: the run is still storing when the server has stopped (with 10, two workers once finished first).
    catalog, _rows = _bench_subset(bench_dir, tmp_path, 40)
    data_dir = tmp_path / "d"  # its own embedded server: stopping it must not touch the suite's
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "MATCHER_DATABASE_URL")}
    env.update(MATCHER_DATA_DIR=str(data_dir), MATCHER_BACKEND="classical", MATCHER_BATCH_SIZE="1")
    matcher = [sys.executable, "-m", "matcher.cli"]
    cwd = Path(__file__).resolve().parents[3]

    def command(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run([*matcher, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)

    settings = Settings(data_dir=data_dir, database_url=None, backend="classical")
    try:
        assert command("db", "upgrade").returncode == 0
        run = subprocess.Popen([*matcher, "index", str(catalog), "--workers", "2", "--no-progress"], env=env, cwd=cwd,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        engine = get_engine(settings)
        deadline = time.monotonic() + 180
        with Session(engine) as session:  # wait until the run has stored something
            while time.monotonic() < deadline and run.poll() is None:
                if session.scalar(select(Cutout.id).limit(1)) is not None:
                    break
                session.rollback()
                time.sleep(0.1)
        engine.dispose()
        assert run.poll() is None, "the run ended before the database could be stopped under it"
        assert command("db", "stop").stdout.strip() == "stopped"
        output, _ = run.communicate(timeout=180)
        lines = [line for line in output.splitlines() if "platformdirs" not in line and "user_runtime_dir" not in line]
        assert run.returncode == 5, output
        assert "Traceback" not in output and output.count("error:") == 1, output
        assert lines[0].startswith("error: run 1 stopped: the database stopped answering while storing") and len(lines) <= 6
        runs = command("runs")  # starts the server again; the deferred end is recorded
        assert runs.returncode == 0, runs.stdout + runs.stderr
        with Session(get_engine(settings)) as session:
            [(status, finished)] = session.execute(text("SELECT status, finished_at FROM index_runs")).all()
        assert status == "failed" and finished is not None
        assert not list((data_dir / "deferred-run-ends").rglob("*.json"))
    finally:
        get_engine(settings).dispose()
        command("db", "stop")
