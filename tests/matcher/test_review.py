"""The review service on a real (embedded) Postgres: decide, conflict, undo, queue, export, re-run, uploads, sign-in."""

from __future__ import annotations

import csv
import io
import json
import os
import threading
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from matcher import review, service
from matcher.db.engine import get_engine
from matcher.db.models import Decision, DetectionRow, ReviewerAccount, SignInAttempt
from matcher.query import QueryEngine
from matcher.review import ConflictError, Reviewer, ReviewError, UploadError
from matcher.types import Box
from tests.review_support import PASSWORD, SCENE, clone_settings, sample_template, scene_annotations, scene_boxes

ALICE, BOB = Reviewer("alice"), Reviewer("bob")


@pytest.fixture(scope="module")
def template(pg_server, tmp_path_factory):
    return sample_template(pg_server, tmp_path_factory)


@pytest.fixture
def settings(pg_server, template, tmp_path):
    return clone_settings(pg_server, template[0], tmp_path / "data")


@pytest.fixture
def matched(settings):
    """scene_00000 matched with its two annotated boxes, stored for review as `matcher match` does."""
    engine = QueryEngine(settings)
    result = engine.match(SCENE, boxes=scene_boxes(), store=True, source="cli")
    views = [review.detection_view(settings, o.detection_id) for o in result.objects]
    return engine, result, views


def _right(view: review.DetectionView, sku: str) -> review.CandidateView:
    return next(c for c in view.candidates if c.sku == sku)


def _decisions(settings, detection_id: int) -> list[Decision]:
    with Session(get_engine(settings)) as session:
        return list(session.scalars(select(Decision).where(Decision.detection_id == detection_id).order_by(Decision.id)))


def _detection(settings, detection_id: int) -> DetectionRow:
    with Session(get_engine(settings)) as session:
        return session.get(DetectionRow, detection_id)


def test_views_carry_what_a_reviewer_needs(settings, matched):
    _engine, result, views = matched
    for view, ann in zip(views, scene_annotations()):
        assert view.pending and view.version == 0 and view.query_id == result.query_id
        assert Path(view.cutout_path).is_file() and Path(view.mask_path).is_file()
        assert review.load_mask(view.mask_path).shape == (600, 800)
        assert view.candidates and [c.rank for c in view.candidates] == list(range(1, len(view.candidates) + 1))
        top = view.candidates[0]
        assert top.sku and top.title and Path(top.image).is_file()
        assert {"cosine", "delta_e", "silhouette_iou", "aspect_agreement", "fill_agreement"} <= set(top.features)
        assert "cosine" in top.explanation
        assert ann["sku"] in [c.sku for c in view.candidates]


def test_decisions_record_reviewer_and_reranker_version_and_become_training_data(settings, matched):
    _engine, result, (first, second) = matched
    sku = scene_annotations()[0]["sku"]
    record = review.decide(settings, first.id, ALICE, "approve", _right(first, sku).product_id, note=" looks right ",
                           expected_version=first.version)
    assert record.reviewer == "alice" and record.sku == sku and record.note == "looks right"
    assert record.reranker_version == result.reranker_version
    review.decide(settings, second.id, BOB, "reject_all", expected_version=second.version)

    [row] = _decisions(settings, first.id)
    assert (row.reviewer, row.verdict, row.product_id, row.reranker_version) == (
        "alice", "approve", _right(first, sku).product_id, result.reranker_version)
    assert _detection(settings, first.id).status == "decided" and _detection(settings, first.id).version == 1
    assert review.detection_view(settings, first.id).decision.reviewer == "alice"
    assert [d.verdict for d in _decisions(settings, second.id)] == ["reject_all"]

    counts = review.labelled_pair_count(settings)
    assert counts == {"approved": 1, "rejected_all": 1, "objects": 2,
                      "pairs": len(first.candidates) + len(second.candidates)}
    groups = service.labelled_groups_from_decisions(settings)
    assert sorted(sum(g.labels) for g in groups) == [0, 1]
    # Decisions belong to the space their query was answered in: another model's space has none.
    assert service.labelled_groups_from_decisions(settings, space_id=_engine.space.id + 1000) == []
    progress = {p.reviewer: p for p in review.reviewer_progress(settings)}
    assert progress["alice"].approved == 1 and progress["bob"].rejected_all == 1
    assert review.queue_size(settings) == 0


def test_a_second_decision_on_the_same_detection_is_refused_and_names_the_first(settings, matched):
    _engine, _result, (first, second) = matched
    review.decide(settings, first.id, ALICE, "wrong_object", expected_version=0)
    with pytest.raises(ConflictError, match="already decided by alice") as info:
        review.decide(settings, first.id, BOB, "reject_all", expected_version=0)
    assert info.value.decided_by == "alice"
    assert [(d.reviewer, d.verdict) for d in _decisions(settings, first.id)] == [("alice", "wrong_object")]

    # Truly at once: two threads race for the same version; exactly one wins.
    barrier, outcomes = threading.Barrier(2), []

    def attempt(reviewer: Reviewer) -> None:
        barrier.wait()
        try:
            review.decide(settings, second.id, reviewer, "reject_all", expected_version=0)
            outcomes.append(("ok", reviewer.name))
        except ConflictError as exc:
            outcomes.append(("conflict", exc.decided_by))

    threads = [threading.Thread(target=attempt, args=(r,)) for r in (ALICE, BOB)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [name for kind, name in outcomes if kind == "ok"]
    assert len(winners) == 1 and [k for k, _ in outcomes].count("conflict") == 1
    assert [d.reviewer for d in _decisions(settings, second.id)] == winners
    assert _detection(settings, second.id).version == 1


def test_bad_decisions_are_refused_clearly(settings, matched):
    _engine, _result, (first, _second) = matched
    with pytest.raises(ReviewError, match="unknown verdict"):
        review.decide(settings, first.id, ALICE, "maybe", expected_version=0)
    with pytest.raises(ReviewError, match="needs the candidate"):
        review.decide(settings, first.id, ALICE, "approve", expected_version=0)
    with pytest.raises(ReviewError, match="not a candidate"):
        review.decide(settings, first.id, ALICE, "approve", product_id=10**9, expected_version=0)
    with pytest.raises(ReviewError, match="no detection"):
        review.decide(settings, 10**9, ALICE, "reject_all", expected_version=0)
    assert _decisions(settings, first.id) == [] and _detection(settings, first.id).status == "pending"


def test_undo_reverts_only_ones_own_last_decision(settings, matched):
    _engine, _result, (first, second) = matched
    review.decide(settings, first.id, ALICE, "approve", first.candidates[0].product_id, expected_version=0)
    review.decide(settings, second.id, BOB, "reject_all", expected_version=0)

    undone = review.undo_last(settings, ALICE)
    assert undone.detection_id == first.id and undone.undone_at is not None
    row = _detection(settings, first.id)
    assert row.status == "pending" and row.version == 2
    assert _detection(settings, second.id).status == "decided"  # bob's decision stands
    with pytest.raises(ReviewError, match="no decision to undo"):
        review.undo_last(settings, ALICE)

    # A screen still showing version 1 cannot decide; a fresh one can.
    with pytest.raises(ConflictError, match="changed since you loaded it"):
        review.decide(settings, first.id, BOB, "reject_all", expected_version=1)
    review.decide(settings, first.id, BOB, "reject_all", expected_version=2)

    mine = review.history(settings, ALICE)
    assert [(r.verdict, r.live) for r in mine] == [("approve", False)]
    everyone = review.history(settings)
    assert [r.reviewer for r in everyone] == ["bob", "bob", "alice"]
    assert all(r.reranker_version for r in everyone)
    assert review.labelled_pair_count(settings)["approved"] == 0  # undone approvals are not training data


def test_queue_is_pending_oldest_first_and_filters(settings, matched):
    engine, _result, views = matched
    later = engine.match(SCENE, boxes=scene_boxes()[:1], store=True, source="cli").objects[0].detection_id
    items = review.queue(settings)
    assert [i.detection_id for i in items] == [views[0].id, views[1].id, later]
    assert items[0].top_sku == views[0].candidates[0].sku and items[0].category == views[0].candidates[0].category

    for item in items:
        assert item.detection_id in {i.detection_id for i in review.queue(settings, category=item.category)}
    assert review.queue(settings, category="no such category") == []
    for band, (low, high) in review.SCORE_BANDS.items():
        expected = {i.detection_id for i in items
                    if (low is None or i.top_score >= low) and (high is None or i.top_score < high)}
        assert {i.detection_id for i in review.queue(settings, score_band=band)} == expected
        assert review.queue_size(settings, score_band=band) == len(expected)
    for flag in review.QUALITY_FLAGS:
        expected = {v.id for v in [*views, review.detection_view(settings, later)] if flag in v.quality_flags}
        assert {i.detection_id for i in review.queue(settings, flag=flag)} == expected
    with pytest.raises(ReviewError, match="unknown quality flag"):
        review.queue(settings, flag="blurry")

    review.decide(settings, views[0].id, ALICE, "reject_all", expected_version=0)
    assert [i.detection_id for i in review.queue(settings)] == [views[1].id, later]
    assert [i.detection_id for i in review.queue(settings, limit=1)] == [views[1].id]
    assert [i.detection_id for i in review.queue(settings, limit=1, offset=1)] == [later]  # the next page
    assert review.queue(settings, limit=1, offset=2) == []


def test_export_has_live_approvals_only_in_csv_and_jsonl(settings, matched):
    engine, _result, (first, second) = matched
    sku = scene_annotations()[0]["sku"]
    review.decide(settings, first.id, ALICE, "approve", _right(first, sku).product_id,
                  note="=HYPERLINK(\"http://x\")", expected_version=0)
    review.decide(settings, second.id, BOB, "approve", second.candidates[0].product_id, expected_version=0)
    review.undo_last(settings, BOB)
    review.decide(settings, second.id, BOB, "reject_all", expected_version=2)

    rows = list(csv.DictReader(io.StringIO(review.export_approved(settings, "csv"))))
    assert [r["sku"] for r in rows] == [sku]
    assert rows[0]["reviewer"] == "alice" and rows[0]["note"].startswith("'=")  # no spreadsheet formula
    assert rows[0]["image_path"] == str(SCENE) and float(rows[0]["box_w"]) > 0
    lines = review.export_approved(settings, "jsonl").splitlines()
    assert [json.loads(line)["sku"] for line in lines] == [sku]
    assert json.loads(lines[0])["reranker_version"]
    with pytest.raises(ReviewError, match="unknown export format"):
        review.export_approved(settings, "xlsx")


def test_rerun_replaces_only_that_detection(settings, matched):
    engine, result, (first, second) = matched
    x, y, w, h = first.box.xywh()
    adjusted = review.rerun_detection(settings, first.id, Box.from_xywh(x - 4, y - 4, w + 8, h + 8), engine,
                                      expected_version=0, reviewer=ALICE)
    assert adjusted.id != first.id and adjusted.query_id == result.query_id and adjusted.pending
    assert adjusted.source == "review-adjust" and adjusted.label == "adjusted by alice"
    assert adjusted.box.xywh() == pytest.approx((x - 4, y - 4, w + 8, h + 8))
    assert adjusted.candidates and Path(adjusted.cutout_path).is_file()
    assert _detection(settings, first.id).status == "superseded"
    assert [v.id for v in review.query_detections(settings, result.query_id)] == [second.id, adjusted.id]
    with pytest.raises(ConflictError, match="replaced by an adjusted box"):
        review.decide(settings, first.id, BOB, "reject_all", expected_version=0)
    with pytest.raises(ConflictError):
        review.rerun_detection(settings, first.id, first.box, engine, expected_version=0)
    review.decide(settings, adjusted.id, BOB, "approve", adjusted.candidates[0].product_id, expected_version=0)


def test_a_corrected_mask_is_a_new_version_with_its_reviewer_and_re_ranked_candidates(settings, matched):
    from matcher.db.models import MaskCorrection
    from matcher.mask_edit import Hint

    engine, result, (first, second) = matched
    before = review.load_mask(first.mask_path)
    x, y, w, h = first.box.xywh()
    stray = Hint(x - 2, y - 2, w + 4, h / 2)  # the reviewer strokes out the upper half
    preview = review.preview_mask(settings, first.id, engine, remove=[stray])
    assert preview.sum() < before.sum()
    fixed = review.correct_mask(settings, first.id, engine, remove=[stray], expected_version=0, reviewer=ALICE)
    assert fixed.source == "review-mask" and fixed.pending and fixed.candidates
    assert np.array_equal(review.load_mask(fixed.mask_path), preview)
    assert _detection(settings, first.id).status == "superseded"
    with pytest.raises(ConflictError, match="corrected mask"):
        review.correct_mask(settings, first.id, engine, remove=[stray], expected_version=0, reviewer=BOB)
    assert review.verify_mask(settings, fixed.id, BOB) == 2
    history = review.mask_history(settings, fixed.id)
    assert [(h["version"], h["method"], h["reviewer"]) for h in history] == [(2, "verified", "bob"),
                                                                             (1, "corrected", "alice")]
    assert history[1]["hints"] == {"add": [], "remove": [stray.to_list()]}
    with Session(get_engine(settings)) as session:
        stored = session.scalars(select(MaskCorrection).order_by(MaskCorrection.id)).all()
        assert [row.corrected_detection_id for row in stored] == [first.id, None]
        assert all(row.created_at is not None and len(row.mask_sha256) == 64 for row in stored)
    with pytest.raises(ReviewError, match="at least one region"):
        review.correct_mask(settings, second.id, engine, expected_version=0, reviewer=ALICE)
    everything = Hint(0, 0, *second.image_size)
    with pytest.raises(ReviewError, match="empty"):
        review.correct_mask(settings, second.id, engine, remove=[everything], expected_version=0, reviewer=ALICE)
    assert _detection(settings, second.id).status == "pending"  # a refused fix leaves the detection as it was


def _jpeg(size=(64, 48)) -> bytes:
    import numpy as np

    noise = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "JPEG")
    return buffer.getvalue()


def test_uploads_are_checked_and_stored_only_under_the_data_dir(settings, tmp_path, matched):
    engine = matched[0]
    uploads = review.uploads_dir(settings)
    saved = review.save_upload(settings, "../../../../tmp/evil.jpg", _jpeg())
    assert saved.parent == uploads and saved.suffix == ".jpg" and "evil" not in saved.name and len(saved.stem) == 32
    assert not (tmp_path / "evil.jpg").exists() and not Path("/tmp/evil.jpg").exists()
    assert review.save_upload(settings, "C:\\photos\\room.png", _jpeg()).suffix == ".jpg"  # the bytes decide

    def refused(name: str, data: bytes, match: str, **overrides) -> None:
        s = settings.model_copy(update=overrides) if overrides else settings
        with pytest.raises(UploadError, match=match):
            review.save_upload(s, name, data)

    refused("run.sh.jpg", b"#!/bin/sh\nrm -rf /\n", "not a JPEG, PNG or WebP")
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buffer, "GIF")
    refused("anim.gif", buffer.getvalue(), r"\(it is GIF\)")
    whole = _jpeg((400, 300))
    refused("cut.jpg", whole[: len(whole) // 2], "truncated|corrupt")
    refused("empty.jpg", b"", "empty")
    refused("big.jpg", _jpeg((400, 300)), "upload limit", max_upload_bytes=1000)
    refused("bomb.jpg", _jpeg((400, 300)), "pixel limit", max_image_pixels=10_000)
    refused("bomb.png", _png_header_only(60_000, 60_000), "decompression bomb")  # PIL refuses to even open it
    assert sorted(p.name for p in uploads.iterdir()) == sorted(p.name for p in uploads.glob("*.jpg"))
    assert len(list(uploads.iterdir())) == 2

    with pytest.raises(UploadError, match="only photos saved by save_upload"):
        review.match_upload(settings, SCENE, engine, reviewer=ALICE, boxes=scene_boxes())
    with pytest.raises(ReviewError, match="no detector is configured"):
        review.match_upload(settings, saved, engine, reviewer=ALICE)
    scene_copy = review.save_upload(settings, "room.jpg", SCENE.read_bytes())
    query_id = review.match_upload(settings, scene_copy, engine, reviewer=ALICE, boxes=scene_boxes()[:1])
    [view] = review.query_detections(settings, query_id)
    assert view.query_source == "upload:alice" and view.image_path == str(scene_copy)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels in a few bytes (a decompression bomb's header)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


def test_reviewers_sign_in_with_their_own_hashed_password(settings):
    assert review.authenticate(settings, "  ALICE ", PASSWORD) == Reviewer("alice", "account")  # the stored name
    for name in ("", "   ", "../etc", "x" * 65, "<script>"):
        with pytest.raises(review.AuthError, match="enter your name"):
            review.authenticate(settings, name, PASSWORD)
    for name, password in (("alice", PASSWORD + "x"), ("mallory", PASSWORD), ("alice", "")):
        with pytest.raises(review.AuthError, match="^wrong name or password$"):  # same answer: no account probing
            review.authenticate(settings, name, password)
    with Session(get_engine(settings)) as session:
        stored = session.scalar(select(ReviewerAccount.password_hash).where(ReviewerAccount.name == "alice"))
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    with pytest.raises(review.AuthError, match="at least 10 characters"):
        review.add_reviewer(settings, "dana", "short")
    with pytest.raises(review.AuthError, match="exists already"):
        review.add_reviewer(settings, "Alice", PASSWORD)
    assert review.reviewer_from_identity("alice@example.org").method == "streamlit"


def test_a_disabled_reviewer_cannot_sign_in_and_an_admin_manages_accounts_from_the_cli(settings, monkeypatch):
    from matcher.cli import app
    from tests.review_support import env_for

    for key, value in env_for(settings).items():
        monkeypatch.setenv(key, value)
    runner = CliRunner()
    added = runner.invoke(app, ["reviewers", "add", "dana", "--password-stdin"], input="a long passphrase\n")
    assert added.exit_code == 0 and "reviewer dana added" in added.output, added.output
    assert review.authenticate(settings, "dana", "a long passphrase").name == "dana"
    short = runner.invoke(app, ["reviewers", "add", "erin", "--password-stdin"], input="short\n")
    assert short.exit_code == 2 and short.output.strip() == "error: a password needs at least 10 characters"
    assert runner.invoke(app, ["reviewers", "disable", "dana"]).exit_code == 0
    with pytest.raises(review.AuthError, match="wrong name or password"):
        review.authenticate(settings, "dana", "a long passphrase")
    listed = runner.invoke(app, ["reviewers", "list"])
    cells = [line.replace("│", " ").split()[:2] for line in listed.output.splitlines()]
    assert listed.exit_code == 0 and ["dana", "no"] in cells and ["alice", "yes"] in cells, listed.output
    assert runner.invoke(app, ["reviewers", "enable", "dana"]).exit_code == 0
    assert runner.invoke(app, ["reviewers", "passwd", "dana", "--password-stdin"], input="another passphrase\n").exit_code == 0
    assert review.authenticate(settings, "dana", "another passphrase").name == "dana"
    missing = runner.invoke(app, ["reviewers", "disable", "nobody"])
    assert missing.exit_code == 2 and "no account named 'nobody'" in missing.output


def test_failed_sign_ins_are_logged_and_lock_that_name_only(settings, caplog):
    strict = settings.model_copy(update={"review_max_failed_sign_ins": 3})
    with caplog.at_level("WARNING", logger="matcher.review.auth"):
        for _ in range(3):
            with pytest.raises(review.AuthError, match="wrong name or password"):
                review.authenticate(strict, "bob", "guess " * 3)
        with pytest.raises(review.AuthError, match="too many failed sign-ins"):
            review.authenticate(strict, "bob", PASSWORD)  # the right password does not help while locked
    assert sum("failed sign-in for 'bob'" in r.getMessage() for r in caplog.records) == 3
    assert any("refused for 'bob': locked" in r.getMessage() for r in caplog.records)
    assert review.authenticate(strict, "alice", PASSWORD).name == "alice"  # other names are not affected
    with Session(get_engine(settings)) as session, session.begin():
        rows = session.execute(select(SignInAttempt.succeeded, SignInAttempt.reason)
                               .where(SignInAttempt.name == "bob").order_by(SignInAttempt.id)).all()
        assert [tuple(r) for r in rows] == [(False, "wrong password")] * 3 + [(False, "locked")]
        # The lockout window passes (moved back in time rather than waited for).
        session.execute(update(SignInAttempt).values(created_at=SignInAttempt.created_at - timedelta(hours=1)))
    assert review.authenticate(strict, "bob", PASSWORD).name == "bob"


def test_parse_boxes_names_the_bad_line():
    assert review.parse_boxes("1,2,30,40\n\n5,6,70,80\n") == [Box(1, 2, 31, 42), Box(5, 6, 75, 86)]
    with pytest.raises(ReviewError, match="line 2"):
        review.parse_boxes("1,2,30,40\n1,2,three,4")
    with pytest.raises(ReviewError, match="finite"):  # float() reads "nan" and "inf"; a box cannot be either
        review.parse_boxes("nan,2,30,40")


def test_cli_review_starts_streamlit_on_the_current_settings(settings, monkeypatch):
    from matcher import cli
    from matcher.cli import app
    from tests.review_support import env_for

    for key, value in env_for(settings).items():
        monkeypatch.setenv(key, value)
    calls = []
    monkeypatch.setattr(cli, "_run_forwarding_signals", lambda command, env: calls.append((command, env)) or 0)
    result = CliRunner().invoke(app, ["review", "--headless", "--port", "8765"])
    assert result.exit_code == 0, result.output
    [(command, env)] = calls
    assert command[1:4] == ["-m", "streamlit", "run"] and command[4].endswith("ui/app.py")
    assert command[command.index("--server.headless") + 1] == "true"
    assert command[command.index("--server.port") + 1] == "8765"
    assert command[command.index("--server.address") + 1] == "127.0.0.1"  # this machine only, by default
    assert "warning" not in result.output
    assert env["MATCHER_DATABASE_URL"] == settings.database_url
    assert env["MATCHER_DATA_DIR"] == str(settings.data_dir.resolve())
    assert "MATCHER_REVIEW_SECRET" not in env and "no reviewer accounts" not in result.output

    wide = CliRunner().invoke(app, ["review", "--headless", "--address", "0.0.0.0"])
    assert wide.exit_code == 0 and "warning" in wide.output and "reverse proxy" in wide.output
    assert calls[-1][0][calls[-1][0].index("--server.address") + 1] == "0.0.0.0"
    bad_port = CliRunner().invoke(app, ["review", "--port", "70000"])
    assert bad_port.exit_code == 2 and len(calls) == 2


def test_pruning_removes_old_uploads_that_no_pending_review_needs(settings, matched, monkeypatch):
    engine, _result, _views = matched
    pending_photo = review.save_upload(settings, "pending.jpg", SCENE.read_bytes())
    review.match_upload(settings, pending_photo, engine, reviewer=ALICE, boxes=scene_boxes()[:1])
    decided_photo = review.save_upload(settings, "decided.jpg", SCENE.read_bytes())
    [view] = review.query_detections(settings, review.match_upload(settings, decided_photo, engine, reviewer=ALICE,
                                                                    boxes=scene_boxes()[:1]))
    review.decide(settings, view.id, ALICE, "reject_all", expected_version=view.version)
    never_matched = review.save_upload(settings, "orphan.jpg", _jpeg())
    week_ago = time.time() - 7 * 86400
    for path in (pending_photo, decided_photo, never_matched):
        os.utime(path, (week_ago, week_ago))

    # Matched just now: too recent to go, whatever its state; the unmatched file is a week old.
    from matcher.cli import app
    from tests.review_support import env_for

    for key, value in env_for(settings).items():
        monkeypatch.setenv(key, value)
    listed = CliRunner().invoke(app, ["prune-uploads", "--older-than-days", "1", "--dry-run"])
    assert listed.exit_code == 0 and never_matched.name in listed.output and "1 upload(s) would be removed" in listed.output
    assert never_matched.exists()
    assert review.prune_uploads(settings, timedelta(days=1)) == [never_matched]
    assert not never_matched.exists() and decided_photo.exists()

    # With a cut-off in the future, only the photo with a detection still pending review stays.
    assert review.prune_uploads(settings, timedelta(days=-1), dry_run=True) == [decided_photo]
    assert decided_photo.exists()
    assert review.prune_uploads(settings, timedelta(days=-1)) == [decided_photo]
    assert pending_photo.exists() and not decided_photo.exists()
    assert review.detection_view(settings, view.id).decision.verdict == "reject_all"  # the decision stays


def test_damaged_catalog_images_and_cutouts_do_not_stop_the_panel(tmp_path):
    import cv2
    import numpy as np

    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(_jpeg((64, 48))[:40])
    replaced = tmp_path / "replaced.jpg"
    replaced.write_text("<html>moved</html>")
    assert review.load_catalog_image(corrupt) is None and review.load_catalog_image(replaced) is None
    assert review.load_catalog_image(tmp_path / "gone.jpg") is None and review.load_catalog_image(None) is None
    good = tmp_path / "good.jpg"
    good.write_bytes(_jpeg((1600, 900)))
    shown = review.load_catalog_image(good)
    assert shown.dtype == np.uint8 and max(shown.shape[:2]) == 512

    deep = np.zeros((20, 30, 4), np.uint16)
    deep[..., 1] = 65535
    deep[..., 3] = 65535
    sixteen = tmp_path / "cutout16.png"
    cv2.imwrite(str(sixteen), deep)
    cutout = review.load_cutout(sixteen)
    assert cutout.dtype == np.uint8 and cutout.shape == (20, 30, 4) and cutout[0, 0, 1] == 255
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnope")
    assert review.load_cutout(broken) is None


def test_stopping_the_review_launcher_stops_the_server(settings, tmp_path):
    """SIGTERM to `matcher review` (systemd, a container) reaches the Streamlit server; nothing keeps listening."""
    import signal
    import subprocess
    import sys

    from tests.process_support import children_of, is_running
    from tests.review_support import env_for

    env = {**os.environ, **env_for(settings)}
    launcher = subprocess.Popen([sys.executable, "-m", "matcher.cli", "review", "--headless", "--port", "0"], env=env,
                                cwd=Path(__file__).resolve().parents[2], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not children_of(launcher.pid) and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    servers = children_of(launcher.pid)
    assert servers, "the launcher never started the server"
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(60) == 0
    assert not [pid for pid in servers if is_running(pid)], "the Streamlit server outlived its launcher"
