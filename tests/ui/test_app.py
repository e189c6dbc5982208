"""The real review app (ui/app.py) driven by Streamlit's AppTest against the embedded Postgres.

A reviewer signs in, uploads a dev scene, sees detections and candidates, approves,
adjusts a box and re-runs it, rejects, undoes, and meets a conflicting decision.
"""

from __future__ import annotations

import os
import re

import pytest
from markdown_it import MarkdownIt
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from streamlit.testing.v1 import AppTest

from matcher import review
from matcher.db.engine import get_engine
from matcher.db.models import Decision, DetectionRow, Product
from tests.review_support import PASSWORD, SCENE, clone_settings, env_for, sample_template, scene_annotations

from ui.launch import APP_PATH

# Ceiling for one script run (uploading a photo loads the query engine and matches it): generous, for a loaded
# 2-core machine.  AppTest returns as soon as the run ends, so a long ceiling costs nothing when all is well.
HOSTILE_TITLE = "![pixel](http://127.0.0.1:9/x.png) **bold** <img src=x>"
TIMEOUT = float(os.environ.get("MATCHER_APPTEST_TIMEOUT", "900"))


@pytest.fixture(scope="module")
def template(pg_server, tmp_path_factory):
    return sample_template(pg_server, tmp_path_factory)


@pytest.fixture
def settings(pg_server, template, tmp_path, monkeypatch):
    s = clone_settings(pg_server, template[0], tmp_path / "data")
    for key, value in env_for(s).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MATCHER_REVIEW_DETECTORS", raising=False)
    return s


def _texts(at: AppTest, kind: str) -> list[str]:
    """The texts as a reader sees them: the app backslash-escapes punctuation in Markdown (ui.app.plain)."""
    return [re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", e.value) for e in getattr(at, kind)]


def _no_exceptions(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def signed_in(name: str = "alice") -> AppTest:
    at = AppTest.from_file(str(APP_PATH), default_timeout=TIMEOUT)
    at.run()
    _no_exceptions(at)
    assert at.sidebar.button  # the sign-in form
    at.text_input(key="signin_name").input(name)
    at.text_input(key="signin_password").input("not the password")
    at.sidebar.button[0].click().run()
    assert any("wrong name or password" in e for e in _texts(at, "error"))
    assert "reviewer" not in at.session_state
    at.text_input(key="signin_name").input(name)
    at.text_input(key="signin_password").input(PASSWORD)
    at.sidebar.button[0].click().run()
    _no_exceptions(at)
    assert at.session_state["reviewer"] == review.Reviewer(name)
    return at


def _decisions(settings, detection_id: int) -> list[tuple[str, str, int | None, bool]]:
    with Session(get_engine(settings)) as session:
        rows = session.scalars(select(Decision).where(Decision.detection_id == detection_id).order_by(Decision.id))
        return [(d.reviewer, d.verdict, d.product_id, d.undone_at is None) for d in rows]


def _status(settings, detection_id: int) -> str:
    with Session(get_engine(settings)) as session:
        return session.get(DetectionRow, detection_id).status


def test_upload_decide_adjust_undo_and_conflict(settings):
    anns = scene_annotations()
    at = signed_in("alice")
    assert at.sidebar.radio(key="page").value == "Upload & match"

    # A file that is not a photo is refused with a clear message, and nothing is matched.
    at.file_uploader(key="uploads").set_value(("notes.jpg", b"#!/bin/sh\necho hi\n", "image/jpeg")).run()
    at.text_area(key="upload_boxes").input("10,10,50,50")
    at.button(key="match_uploads").click().run()
    _no_exceptions(at)
    assert any("notes.jpg" in e and "not a JPEG, PNG or WebP" in e for e in _texts(at, "error"))
    assert not at.session_state["recent_queries"]

    # Upload the dev scene with its two annotated boxes.
    boxes = "\n".join(",".join(str(round(v)) for v in a["bbox"]) for a in anns)
    at.file_uploader(key="uploads").set_value(("scene_00000.jpg", SCENE.read_bytes(), "image/jpeg")).run()
    at.text_area(key="upload_boxes").input(boxes)
    at.button(key="match_uploads").click().run()
    _no_exceptions(at)
    [query_id] = at.session_state["recent_queries"]
    first, second = review.query_detections(settings, query_id)
    assert first.query_source == "upload:alice"
    assert str(review.uploads_dir(settings)) in first.image_path
    # The photo with boxes and outlines, the cutouts, and product cards with the feature breakdown.
    captions_of_images = [c for img in at.image for c in img.captions]
    assert len(at.image) >= 1 + 2 + 2 + 5 and "cutout" in captions_of_images
    markdown = " ".join(_texts(at, "markdown"))
    captions = " ".join(_texts(at, "caption"))
    for view in (first, second):
        assert f"Detection {view.id}" in markdown
        assert view.candidates[0].sku in markdown
    assert "cos " in captions and "ΔE" in captions and "sil. IoU" in captions and "aspect" in captions
    assert "final score" in markdown

    # Approve the right product for the first object, with a note.
    right = next(c for c in first.candidates if c.sku == anns[0]["sku"])
    at.text_input(key=f"d{first.id}-note").input("same lantern")
    at.button(key=f"d{first.id}-approve-{right.product_id}").click().run()
    _no_exceptions(at)
    assert any(f"approved {right.sku}" in s for s in _texts(at, "success"))
    assert _decisions(settings, first.id) == [("alice", "approve", right.product_id, True)]

    # Adjust the second object's box and re-run only that detection.
    x, y, w, h = second.box.xywh()
    at.number_input(key=f"d{second.id}-x").set_value(max(0.0, x - 6))
    at.number_input(key=f"d{second.id}-w").set_value(w + 12)
    at.button(key=f"d{second.id}-rerun").click().run()
    _no_exceptions(at)
    assert _status(settings, second.id) == "superseded"
    current = review.query_detections(settings, query_id)
    assert [v.id for v in current][0] == first.id and len(current) == 2
    adjusted = current[1]
    assert adjusted.source == "review-adjust" and adjusted.box.x0 == pytest.approx(max(0.0, x - 6))
    assert any(f"as detection {adjusted.id}" in s for s in _texts(at, "success"))
    assert _status(settings, first.id) == "decided"  # the other detection is untouched

    # Reject all candidates of the adjusted detection.
    at.button(key=f"d{adjusted.id}-reject").click().run()
    _no_exceptions(at)
    assert _decisions(settings, adjusted.id) == [("alice", "reject_all", None, True)]

    # History: both decisions with the reviewer and re-ranker version; undo the last one.
    at.sidebar.radio(key="page").set_value("History & export").run()
    _no_exceptions(at)
    table = at.dataframe[0].value
    assert list(table["reviewer"]) == ["alice", "alice"] and list(table["decision"]) == ["none of these", "approved"]
    assert all(table["re-ranker"])
    assert [b.label for b in at.get("download_button")] == ["Download CSV", "Download JSONL"]
    at.button(key="undo_last").click().run()
    _no_exceptions(at)
    assert any("Undone" in s for s in _texts(at, "success"))
    assert _decisions(settings, adjusted.id) == [("alice", "reject_all", None, False)]
    assert _status(settings, adjusted.id) == "pending"
    assert _decisions(settings, first.id)[0][3]  # the approval stays

    # Queue: the adjusted detection is pending again and is the one shown.
    at.sidebar.radio(key="page").set_value("Queue").run()
    _no_exceptions(at)
    assert f"Detection {adjusted.id}" in " ".join(_texts(at, "markdown"))
    # Meanwhile bob decides it in his own session; alice's click on the stale screen is refused.
    review.decide(settings, adjusted.id, review.Reviewer("bob"), "wrong_object",
                  expected_version=review.detection_view(settings, adjusted.id).version)
    at.button(key=f"d{adjusted.id}-reject").click().run()
    _no_exceptions(at)
    assert any("Conflict" in e and "already decided by bob" in e for e in _texts(at, "error"))
    assert [d for d in _decisions(settings, adjusted.id) if d[3]] == [("bob", "wrong_object", None, True)]
    assert any("Nothing to review" in s for s in _texts(at, "success"))

    # Re-ranker page: the labelled data is counted; two objects are too few to train, said clearly.
    at.sidebar.radio(key="page").set_value("Re-ranker").run()
    _no_exceptions(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["approved"] == "1" and metrics["labelled objects"] == "1"
    at.button(key="train").click().run()
    _no_exceptions(at)
    assert any("Not trained" in e and "at least 5" in e for e in _texts(at, "error"))


def test_queue_shows_cli_matches_and_filters(settings):
    from matcher.query import QueryEngine
    from tests.review_support import scene_boxes

    result = QueryEngine(settings).match(SCENE, boxes=scene_boxes(), store=True, source="cli")
    ids = [o.detection_id for o in result.objects]
    with Session(get_engine(settings)) as session, session.begin():  # a hostile catalog export
        session.execute(update(Product).values(title=HOSTILE_TITLE))
    at = signed_in("carol")
    at.sidebar.radio(key="page").set_value("Queue").run()
    _no_exceptions(at)
    # Catalog text is shown literally: rendered as CommonMark (as the browser does) it has no image and no bold.
    titles = [c.value for c in at.caption if "pixel" in c.value]
    assert titles
    for caption in titles:
        html = MarkdownIt().render(caption)
        assert "<img" not in html and "<strong>" not in html and "![pixel](http://127.0.0.1:9/x.png)" in html, html
    assert list(at.dataframe[0].value["detection"]) == ids  # oldest first
    assert f"Detection {ids[0]}" in " ".join(_texts(at, "markdown"))
    at.selectbox(key="q_band").set_value("none").run()
    _no_exceptions(at)
    assert any("Nothing to review" in s for s in _texts(at, "success"))
    at.selectbox(key="q_band").set_value("any")
    at.selectbox(key="q_category").set_value(review.detection_view(settings, ids[0]).candidates[0].category).run()
    _no_exceptions(at)
    assert ids[0] in list(at.dataframe[0].value["detection"])
    # Keyboard: the focused detection's first card approves with "1", "N" rejects all.
    buttons = {b.key: b for b in at.button}
    assert buttons[f"d{ids[0]}-reject"].proto.shortcut.upper() == "N"
    assert buttons[f"d{ids[0]}-wrong"].proto.shortcut.upper() == "W"
    first_card = review.detection_view(settings, ids[0]).candidates[0]
    assert buttons[f"d{ids[0]}-approve-{first_card.product_id}"].proto.shortcut == "1"


def test_a_reviewer_fixes_a_mask_and_the_fix_is_recorded_with_them(settings):
    from matcher.db.models import MaskCorrection
    from matcher.query import QueryEngine
    from tests.review_support import scene_boxes

    result = QueryEngine(settings).match(SCENE, boxes=scene_boxes(), store=True, source="cli")
    first = review.detection_view(settings, result.objects[0].detection_id)
    at = signed_in("bob")
    at.sidebar.radio(key="page").set_value("Queue").run()
    _no_exceptions(at)
    assert at.get("vega_lite_chart")  # the photo where rectangles are dragged
    x, y, w, h = first.box.xywh()
    at.text_area(key=f"d{first.id}-remove").input(f"{x - 2:.0f},{y - 2:.0f},{w + 4:.0f},{h / 2:.0f}")
    at.button(key=f"d{first.id}-preview-mask").click().run()
    _no_exceptions(at)
    preview = at.session_state[f"d{first.id}-preview"]
    assert 0 < preview.sum() < review.load_mask(first.mask_path).sum()
    at.button(key=f"d{first.id}-fix-mask").click().run()
    _no_exceptions(at)
    assert any("corrected mask saved" in s for s in _texts(at, "success")), _texts(at, "error")
    assert _status(settings, first.id) == "superseded"
    with Session(get_engine(settings)) as session:
        [row] = session.scalars(select(MaskCorrection)).all()
        assert (row.reviewer, row.method, row.version, row.corrected_detection_id) == ("bob", "corrected", 1, first.id)
        fixed_id = row.detection_id
    assert review.detection_view(settings, fixed_id).candidates  # re-ranked from the corrected mask
    # The queue moves on to the next pending detection: a bad hint line is one clear message, nothing stored.
    shown = next(b.key for b in at.button if b.key and b.key.endswith("-fix-mask")).split("-")[0][1:]
    at.text_area(key=f"d{shown}-add").input("here please")
    at.button(key=f"d{shown}-fix-mask").click().run()
    _no_exceptions(at)
    assert any("x,y" in e for e in _texts(at, "error"))
    assert _status(settings, int(shown)) == "pending"
    at.button(key=f"d{shown}-verify-mask").click().run()
    _no_exceptions(at)
    assert any("mask verified (version 1)" in s for s in _texts(at, "success"))
