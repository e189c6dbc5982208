"""matcher review: reviewers approve, reject and adjust matches; their decisions train the re-ranker.

Started by ``matcher review`` (``streamlit run ui/app.py``).  Pages: Upload &
match, Queue, History & export, Re-ranker.  Everything that touches data goes
through ``matcher.review`` / ``matcher.service`` (the same API as the CLI);
this file only lays out widgets.

Keyboard: on the focused detection (the Queue's current item and the newest
upload's first pending detection) ``1``-``5`` approve that candidate, ``N`` is
"none of these", ``W`` is "wrong object"; ``U`` undoes your last decision on
the History page.  Decisions are made in button callbacks with the version of
the detection that was on screen, so a detection someone else decided in the
meantime is refused with a message naming them, never overwritten.
"""

from __future__ import annotations

import math
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import streamlit as st

from matcher import review, service
from matcher.settings import Settings
from matcher.types import Box
from ui.drawing import Overlay, annotate, checkerboard_composite, crop

PAGES = ("Upload & match", "Queue", "History & export", "Re-ranker")
TOP_K = 5
BAND_LABELS = {"any": "any score", "high": "high (≥ 0.75)", "medium": "medium (0.5–0.75)", "low": "low (< 0.5)",
               "none": "no candidates"}
QUEUE_PAGE = 50  # detections listed per queue page
FEATURE_LABELS = (("cosine", "cos", "{:.3f}"), ("cosine_deep", "deep", "{:.2f}"), ("cosine_colour", "colour", "{:.2f}"),
                  ("cosine_texture", "texture", "{:.2f}"), ("cosine_shape", "shape", "{:.2f}"), ("delta_e", "ΔE", "{:.1f}"),
                  ("silhouette_iou", "sil. IoU", "{:.2f}"), ("aspect_agreement", "aspect", "{:.2f}"),
                  ("fill_agreement", "fill", "{:.2f}"))


# --- shared resources --------------------------------------------------------------------------------

@dataclass
class EngineHandle:
    engine: Any
    lock: threading.Lock


def settings() -> Settings:
    return Settings()


def _settings_key(s: Settings) -> str:
    return s.model_dump_json()


@st.cache_resource(show_spinner="Loading the models…")
def _engine(key: str, _settings: Settings) -> EngineHandle:
    return EngineHandle(service.query_engine(_settings, tuple(_settings.review_detectors)), threading.Lock())


def engine_handle(s: Settings) -> EngineHandle | None:
    """The query engine shared by all sessions (None, with a message, if the catalog is not indexed)."""
    from matcher.query import NotIndexedError

    try:
        return _engine(_settings_key(s), s)
    except NotIndexedError as exc:
        st.warning(f"No indexed catalog yet: {plain(exc)}")
    except Exception as exc:  # noqa: BLE001 - shown to the reviewer instead of a traceback
        st.error(f"The query engine could not start: {plain(exc)}")
    return None


def flash(kind: str, text: str) -> None:
    st.session_state.setdefault("flash", []).append((kind, text))


def show_flash() -> None:
    for kind, text in st.session_state.pop("flash", []):
        {"success": st.success, "error": st.error, "warning": st.warning}.get(kind, st.info)(plain(text))


def current_reviewer() -> review.Reviewer:
    reviewer = st.session_state.get("reviewer")
    if reviewer is None:
        raise review.AuthError("sign in first: every decision records who made it")
    return reviewer


# --- callbacks (run before the rerun, with the values that were on screen) -----------------------------

def on_decide(detection_id: int, version: int, verdict: str, product_id: int | None = None) -> None:
    note = st.session_state.get(f"d{detection_id}-note", "")
    try:
        record = review.decide(settings(), detection_id, current_reviewer(), verdict, product_id, note,
                               expected_version=version)
    except review.ConflictError as exc:
        flash("error", f"Conflict: {exc}")
        return
    except review.ReviewError as exc:
        flash("error", str(exc))
        return
    what = f"approved {record.sku}" if verdict == "approve" else review.VERDICT_LABELS[verdict]
    flash("success", f"Detection {detection_id}: {what} (by {record.reviewer}).")


def on_adjust(detection_id: int, version: int) -> None:
    s = settings()
    x, y, w, h = (float(st.session_state.get(f"d{detection_id}-{k}", 0.0)) for k in "xywh")
    if w < 4 or h < 4:
        flash("error", "The box needs a width and height of at least 4 pixels.")
        return
    try:
        handle = _engine(_settings_key(s), s)
        with handle.lock:
            view = review.rerun_detection(s, detection_id, Box.from_xywh(x, y, w, h), handle.engine,
                                          expected_version=version, reviewer=current_reviewer())
    except review.ConflictError as exc:
        flash("error", f"Conflict: {exc}")
        return
    except Exception as exc:  # noqa: BLE001 - review errors, or no indexed catalog
        flash("error", str(exc))
        return
    top = f"; best match now {view.candidates[0].sku}" if view.candidates else ""
    flash("success", f"Detection {detection_id} re-run with box {x:.0f},{y:.0f},{w:.0f},{h:.0f} "
                     f"as detection {view.id}{top}.")


def _hints(detection_id: int) -> tuple[list, list]:
    from matcher.mask_edit import parse_hints

    return (parse_hints(st.session_state.get(f"d{detection_id}-add", "") or ""),
            parse_hints(st.session_state.get(f"d{detection_id}-remove", "") or ""))


def on_stroke(detection_id: int, field: str) -> None:
    """The rectangle dragged on the mask chart becomes one hint line of the add or remove list."""
    brush = (st.session_state.get(f"d{detection_id}-strokes") or {}).get("selection", {}).get("brush") or {}
    xs, ys = brush.get("x"), brush.get("y")
    if not xs or not ys:
        flash("error", "Drag a rectangle over the photo first.")
        return
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    line = f"{x0:.0f},{y0:.0f},{max(x1 - x0, 1):.0f},{max(y1 - y0, 1):.0f}"
    key = f"d{detection_id}-{field}"
    st.session_state[key] = "\n".join(v for v in (st.session_state.get(key, "").strip(), line) if v)


def on_preview_mask(detection_id: int) -> None:
    s = settings()
    try:
        add, remove = _hints(detection_id)
        handle = _engine(_settings_key(s), s)
        with handle.lock:
            st.session_state[f"d{detection_id}-preview"] = review.preview_mask(s, detection_id, handle.engine,
                                                                                add=add, remove=remove)
    except Exception as exc:  # noqa: BLE001 - bad hint text, review errors, or no indexed catalog
        flash("error", str(exc))


def on_fix_mask(detection_id: int, version: int) -> None:
    s = settings()
    try:
        add, remove = _hints(detection_id)
        handle = _engine(_settings_key(s), s)
        with handle.lock:
            view = review.correct_mask(s, detection_id, handle.engine, add=add, remove=remove,
                                       expected_version=version, reviewer=current_reviewer())
    except review.ConflictError as exc:
        flash("error", f"Conflict: {exc}")
        return
    except Exception as exc:  # noqa: BLE001 - bad hint text, review errors, or no indexed catalog
        flash("error", str(exc))
        return
    st.session_state.pop(f"d{detection_id}-preview", None)
    top = f"; best match now {view.candidates[0].sku}" if view.candidates else ""
    flash("success", f"Detection {detection_id}: corrected mask saved as detection {view.id}{top}.")


def on_verify_mask(detection_id: int) -> None:
    try:
        version = review.verify_mask(settings(), detection_id, current_reviewer())
    except Exception as exc:  # noqa: BLE001 - review errors
        flash("error", str(exc))
        return
    flash("success", f"Detection {detection_id}: mask verified (version {version}).")


def on_undo() -> None:
    try:
        record = review.undo_last(settings(), current_reviewer())
    except review.ReviewError as exc:
        flash("error", str(exc))
        return
    flash("success", f"Undone: your {review.VERDICT_LABELS[record.verdict]} on detection {record.detection_id}; "
                     "it is back in the queue.")


def on_activate(version: str) -> None:
    s = settings()
    try:
        review.activate_reranker(s, version)
    except review.ReviewError as exc:
        flash("error", str(exc))
        return
    try:
        handle = _engine(_settings_key(s), s)
        with handle.lock:
            handle.engine.reload_reranker()
    except Exception:  # noqa: BLE001 - no engine yet: it loads the active version when it starts
        pass
    flash("success", f"Re-ranker {version} is active: new matches are ranked with it.")


def on_sign_out() -> None:
    st.session_state.pop("reviewer", None)


# --- sign-in ---------------------------------------------------------------------------------------

def _streamlit_auth_configured() -> bool:
    try:
        return "auth" in st.secrets
    except Exception:  # noqa: BLE001 - no secrets.toml
        return False


def sign_in(s: Settings) -> review.Reviewer | None:
    if "reviewer" in st.session_state:
        return st.session_state["reviewer"]
    if _streamlit_auth_configured():
        if st.user.is_logged_in:
            reviewer = review.reviewer_from_identity(st.user.get("email") or st.user.get("name"))
            st.session_state["reviewer"] = reviewer
            return reviewer
        st.sidebar.button("Sign in", key="sso_login", type="primary", on_click=st.login)
        return None
    with st.sidebar.form("sign_in"):
        st.text_input("Your name", key="signin_name")
        st.text_input("Password", type="password", key="signin_password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if submitted:
        try:
            reviewer = review.authenticate(s, st.session_state.get("signin_name", ""),
                                           st.session_state.get("signin_password", ""))
        except review.AuthError as exc:
            time.sleep(0.5)  # slows down guessing; repeated failures also lock the name (see review.authenticate)
            st.sidebar.error(str(exc))
            return None
        st.session_state["reviewer"] = reviewer
        st.rerun()
    return None


# --- detection panel -------------------------------------------------------------------------------

def feature_line(features: dict[str, float]) -> str:
    parts = [f"{label} {fmt.format(features[name])}" for name, label, fmt in FEATURE_LABELS if name in features]
    if "category_agreement" in features:
        parts.append({1.0: "same category", 0.0: "other category"}.get(features["category_agreement"], "category ?"))
    return " · ".join(parts)


_MARKDOWN_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")


def plain(text: object) -> str:
    """Catalog, reviewer and model text for Streamlit's Markdown widgets, shown literally: every ASCII
    punctuation character is backslash-escaped (CommonMark), so a title like ``![x](https://…)`` shows
    as text instead of making every reviewer's browser fetch that URL."""
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", str(text)).replace("\n", " ")


def _html(text: str) -> str:
    import html

    return html.escape(text or "")


def candidate_card(view: review.DetectionView, cand: review.CandidateView, position: int, focused: bool) -> None:
    with st.container(border=True):
        image = review.load_catalog_image(cand.image)
        if image is not None:
            st.image(image, width="stretch")
        else:
            st.caption("(catalog image unavailable)")
        st.markdown(f"**#{cand.rank}** · final score **{cand.score:.3f}**")
        st.markdown(f"<span style='font-size:0.8rem;word-break:break-all'>{_html(cand.sku)}</span>",
                    unsafe_allow_html=True)
        st.caption(f"{plain(cand.title or '—')} · {plain(cand.category or 'no category')}")
        st.caption(feature_line(cand.features))
        if view.pending:
            st.button(f"Approve #{cand.rank}", key=f"d{view.id}-approve-{cand.product_id}",
                      type="primary" if position == 0 else "secondary", on_click=on_decide,
                      args=(view.id, view.version, "approve", cand.product_id),
                      shortcut=str(position + 1) if focused else None, help=cand.explanation)


def detection_panel(s: Settings, view: review.DetectionView, photo=None, *, focused: bool = False) -> None:
    x, y, w, h = view.box.xywh()
    flags = ", ".join(view.quality_flags) or "none"
    shown_category = view.category or (view.candidates[0].category if view.candidates else None)
    st.markdown(f"#### Detection {view.id} · {plain(shown_category or view.label)}")
    st.caption(f"box {x:.0f},{y:.0f},{w:.0f},{h:.0f} · score {view.score:.2f} · {plain(view.source)} · flags: "
               f"{plain(flags)} · ranked by {plain(view.reranker_version or '?')} · {view.status}")
    left, right = st.columns([1, 4])
    with left:
        if photo is not None:
            st.image(crop(annotated_photo(photo, [view], focus=view.id), view.box), caption="in the photo",
                     width="stretch")
        cutout = review.load_cutout(view.cutout_path)
        if cutout is not None:
            st.image(checkerboard_composite(cutout) if cutout.ndim == 3 and cutout.shape[2] == 4 else cutout,
                     caption="cutout", width="stretch")
        if view.fail_reason:
            st.warning(f"mask: {plain(view.fail_reason)}")
    with right:
        if not view.candidates:
            st.info("No candidates: the mask could not be used. Adjust the box, or mark it as the wrong object.")
        shown = view.candidates[:TOP_K]
        if shown:
            for position, (col, cand) in enumerate(zip(st.columns(len(shown)), shown)):
                with col:
                    candidate_card(view, cand, position, focused)
        more = view.candidates[TOP_K:]
        if more:
            with st.expander(f"{len(more)} more candidates"):
                st.dataframe([{"rank": c.rank, "sku": c.sku, "title": c.title, "category": c.category,
                               "score": round(c.score, 3), **{k: round(v, 3) for k, v in c.features.items()}}
                              for c in more], hide_index=True)
                if view.pending:
                    pick = st.selectbox("Approve another candidate", more, key=f"d{view.id}-more",
                                        format_func=lambda c: f"#{c.rank} {c.sku} ({c.score:.3f})")
                    st.button("Approve selected", key=f"d{view.id}-approve-more", on_click=on_decide,
                              args=(view.id, view.version, "approve", pick.product_id if pick else None))
    if view.pending:
        note_col, none_col, wrong_col = st.columns([4, 1, 1])
        note_col.text_input("Note (optional)", key=f"d{view.id}-note", placeholder="e.g. same model, other colour")
        none_col.button("None of these", key=f"d{view.id}-reject", on_click=on_decide,
                        args=(view.id, view.version, "reject_all"), shortcut="N" if focused else None,
                        help="None of the candidates is the right product.")
        wrong_col.button("Wrong object", key=f"d{view.id}-wrong", on_click=on_decide,
                         args=(view.id, view.version, "wrong_object"), shortcut="W" if focused else None,
                         help="The box is not a catalog object (or the mask is unusable).")
        with st.expander("Adjust the box and re-run this detection"):
            width, height = view.image_size
            with st.form(f"d{view.id}-adjust"):
                cols = st.columns(4)
                for col, key, value, top in zip(cols, "xywh", (x, y, w, h), (width, height, width, height)):
                    col.number_input(key, min_value=0.0, max_value=float(top), value=float(min(max(value, 0.0), top)),
                                     step=1.0, format="%.0f", key=f"d{view.id}-{key}")
                st.form_submit_button("Re-run this box", key=f"d{view.id}-rerun", on_click=on_adjust,
                                      args=(view.id, view.version))
        with st.expander("Fix the mask"):
            mask_fixer(view, photo)
    elif view.decision is not None:
        d = view.decision
        what = f"approved {plain(d.sku)}" if d.verdict == "approve" else review.VERDICT_LABELS[d.verdict]
        st.success(f"Decided: {what} by {plain(d.reviewer)} at {d.created_at:%Y-%m-%d %H:%M}"
                   + (f" — {plain(d.note)}" if d.note else ""))


def mask_fixer(view: review.DetectionView, photo) -> None:
    """Drag rectangles over the photo (or type points x,y and rectangles x,y,w,h) to add or remove regions;
    preview re-runs the segmenter with those hints, accept stores the mask and re-ranks the candidates."""
    if photo is not None:
        preview = st.session_state.get(f"d{view.id}-preview")
        mask = preview if preview is not None else review.load_mask(view.mask_path)
        stroke_chart(view, annotate(photo, [Overlay(view.box, "", mask, "focus")]))
        st.caption("Drag a rectangle over what to add or remove, then press the matching button.")
        add_col, remove_col = st.columns(2)
        add_col.button("Add dragged region", key=f"d{view.id}-stroke-add", on_click=on_stroke, args=(view.id, "add"))
        remove_col.button("Remove dragged region", key=f"d{view.id}-stroke-remove", on_click=on_stroke,
                          args=(view.id, "remove"))
    add_col, remove_col = st.columns(2)
    add_col.text_area("Add (x,y or x,y,w,h per line)", key=f"d{view.id}-add", height=80)
    remove_col.text_area("Remove (x,y or x,y,w,h per line)", key=f"d{view.id}-remove", height=80)
    preview_col, accept_col, verify_col = st.columns(3)
    preview_col.button("Preview", key=f"d{view.id}-preview-mask", on_click=on_preview_mask, args=(view.id,))
    accept_col.button("Accept the fixed mask", key=f"d{view.id}-fix-mask", on_click=on_fix_mask,
                      args=(view.id, view.version), type="primary")
    verify_col.button("The mask is right", key=f"d{view.id}-verify-mask", on_click=on_verify_mask, args=(view.id,),
                      help="Keep this mask as verified training data.")


def stroke_chart(view: review.DetectionView, picture) -> None:
    """The photo around the detection as a chart in photo pixels, where a drag selects a rectangle."""
    import base64
    import io

    import altair as alt
    import pandas as pd
    from PIL import Image

    height, width = picture.shape[:2]
    rows, cols = view.box.expand(0.25, width, height).int_slices()
    part = picture[rows, cols]
    scale = min(1.0, 420 / max(part.shape[:2]))
    shown = (max(1, round(part.shape[1] * scale)), max(1, round(part.shape[0] * scale)))
    buffer = io.BytesIO()
    Image.fromarray(part).resize(shown).save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    x_scale = alt.Scale(domain=[cols.start, cols.stop], nice=False, zero=False)
    y_scale = alt.Scale(domain=[rows.stop, rows.start], nice=False, zero=False)  # image rows grow downwards
    frame = pd.DataFrame({"x": [(cols.start + cols.stop) / 2], "y": [(rows.start + rows.stop) / 2], "url": [url]})
    chart = (alt.Chart(frame).mark_image(width=shown[0], height=shown[1])
             .encode(x=alt.X("x:Q", scale=x_scale, title="x (px)"), y=alt.Y("y:Q", scale=y_scale, title="y (px)"),
                     url="url:N")
             .properties(width=shown[0], height=shown[1])
             .add_params(alt.selection_interval(name="brush")))
    st.altair_chart(chart, key=f"d{view.id}-strokes", on_select="rerun", selection_mode="brush", width="content")


def photo_for(s: Settings, image_path: str):
    try:
        return review.load_photo(image_path, s)
    except Exception as exc:  # noqa: BLE001 - the photo may have been moved since `matcher match`
        st.warning(f"Photo not available ({plain(exc)}); showing the stored cutouts and candidates only.")
        return None


def annotated_photo(photo, views: list[review.DetectionView], focus: int | None = None):
    overlays = [Overlay(v.box, str(v.id), review.load_mask(v.mask_path),
                        "focus" if v.id == focus else ("pending" if v.pending else "decided")) for v in views]
    return annotate(photo, overlays)


# --- pages ---------------------------------------------------------------------------------------

def page_upload(s: Settings, reviewer: review.Reviewer) -> None:
    st.header("Upload & match")
    limit_mb = s.max_upload_bytes / (1024 * 1024)
    files = st.file_uploader(f"Room photos (JPEG, PNG or WebP, up to {limit_mb:.0f} MB each)",
                             type=list(review.UPLOAD_SUFFIXES), accept_multiple_files=True, key="uploads",
                             max_upload_size=max(1, math.ceil(limit_mb)))
    detectors = ", ".join(s.review_detectors)
    st.text_area("Boxes: x,y,w,h in pixels, one per line" + (f" (empty: detect with {detectors})" if detectors else ""),
                 key="upload_boxes", height=90,
                 help="The same boxes are used for every photo of this upload."
                      + ("" if detectors else " No detector is configured (MATCHER_REVIEW_DETECTORS), so boxes are needed."))
    if st.button("Match photos", key="match_uploads", type="primary", disabled=not files):
        run_uploads(s, reviewer, files or [])
    recent = st.session_state.get("recent_queries", [])
    for index, query_id in enumerate(reversed(recent)):
        st.divider()
        show_query(s, query_id, focused=index == 0)


def run_uploads(s: Settings, reviewer: review.Reviewer, files: list) -> None:
    try:
        boxes = review.parse_boxes(st.session_state.get("upload_boxes", ""))
    except review.ReviewError as exc:
        st.error(f"Boxes: {plain(exc)}")
        return
    handle = engine_handle(s)
    if handle is None:
        return
    matched = st.session_state.setdefault("matched_files", {})
    recent = st.session_state.setdefault("recent_queries", [])
    bar = st.progress(0.0, text=f"0 of {len(files)} photos")
    for number, upload in enumerate(files, start=1):
        name = review.display_name(upload.name)
        if upload.file_id in matched:
            st.info(f"{plain(name)}: already matched (query {matched[upload.file_id]}).")
        else:
            with st.status(f"Matching {plain(name)}…", expanded=False) as status:
                try:
                    status.write("Checking the file…")
                    path = review.save_upload(s, upload.name, upload.getvalue())
                    status.write("Finding, tracing, matting, embedding, searching, ranking…")
                    with handle.lock:
                        query_id = review.match_upload(s, path, handle.engine, reviewer=reviewer, boxes=boxes or None)
                except review.ReviewError as exc:
                    status.update(label=f"{plain(name)}: not matched", state="error")
                    st.error(f"{plain(name)}: {plain(exc)}")
                else:
                    matched[upload.file_id] = query_id
                    recent.append(query_id)
                    status.update(label=f"{plain(name)}: matched (query {query_id})", state="complete")
        bar.progress(number / len(files), text=f"{number} of {len(files)} photos")


def show_query(s: Settings, query_id: int, *, focused: bool) -> None:
    views = review.query_detections(s, query_id)
    if not views:
        st.info(f"Query {query_id}: no detections.")
        return
    st.subheader(f"Photo {query_id}: {len(views)} detection(s)")
    photo = photo_for(s, views[0].image_path)
    if photo is not None:
        st.image(annotated_photo(photo, views), caption="boxes and mask outlines (amber: pending, green: decided)",
                 width="stretch")
    first_pending = next((v.id for v in views if v.pending), None)
    for view in views:
        with st.container(border=True):
            detection_panel(s, view, photo, focused=focused and view.id == first_pending)


def page_queue(s: Settings, reviewer: review.Reviewer) -> None:
    st.header("Queue")
    c1, c2, c3 = st.columns(3)
    category = c1.selectbox("Category", ["any", *review.categories(s)], key="q_category")
    band = c2.selectbox("Score band (best candidate)", list(BAND_LABELS), format_func=BAND_LABELS.get, key="q_band")
    flag = c3.selectbox("Quality flag", ["any", *review.QUALITY_FLAGS], key="q_flag")
    filters = {"category": None if category == "any" else category, "score_band": None if band == "any" else band,
               "flag": None if flag == "any" else flag}
    total = review.queue_size(s, **filters)
    all_pending = review.queue_size(s)
    st.caption(f"{total} pending detection(s) match the filters ({all_pending} pending in all), oldest first.")
    pages = max(1, math.ceil(total / QUEUE_PAGE))
    page = st.number_input(f"Page (of {pages})", 1, pages, key="q_page") if pages > 1 else 1
    items = review.queue(s, limit=QUEUE_PAGE, offset=(min(page, pages) - 1) * QUEUE_PAGE, **filters)
    if not items:
        st.success("Nothing to review with these filters.")
    else:
        with st.expander(f"Pending detections ({len(items)} shown on this page)", expanded=False):
            st.dataframe([{"detection": i.detection_id, "photo": i.query_id, "created": f"{i.created_at:%Y-%m-%d %H:%M}",
                           "category": i.category, "best sku": i.top_sku,
                           "best score": None if i.top_score is None else round(i.top_score, 3),
                           "flags": ", ".join(i.flags) + (f" ({i.fail_reason})" if i.fail_reason else ""),
                           "source": i.source} for i in items], hide_index=True)
        pick = st.selectbox("Review (oldest first)", items,
                            format_func=lambda i: f"detection {i.detection_id} (photo {i.query_id}, "
                                                  f"{i.category or 'no category'}, best {i.top_sku or '—'})")
        view = review.detection_view(s, pick.detection_id)
        photo = photo_for(s, view.image_path)
        with st.container(border=True):
            detection_panel(s, view, photo, focused=True)
            if photo is not None:
                with st.expander("Whole photo"):
                    st.image(annotated_photo(photo, [view], focus=view.id), width="stretch")
    progress = review.reviewer_progress(s)
    if progress:
        with st.expander("Progress per reviewer", expanded=False):
            st.dataframe([{"reviewer": p.reviewer, "decided": p.decided, "approved": p.approved,
                           "none of these": p.rejected_all, "wrong object": p.wrong_object, "undone": p.undone}
                          for p in progress], hide_index=True)


def page_history(s: Settings, reviewer: review.Reviewer) -> None:
    st.header("History & export")
    scope = st.radio("Show", ["My decisions", "Everyone"], horizontal=True, key="h_scope")
    st.button("Undo my last decision", key="undo_last", on_click=on_undo, shortcut="U",
              help="Puts the detection of your latest decision back in the queue.")
    records = review.history(s, reviewer if scope == "My decisions" else None, limit=500)
    if records:
        st.dataframe([{"when": f"{r.created_at:%Y-%m-%d %H:%M:%S}", "reviewer": r.reviewer,
                       "decision": review.VERDICT_LABELS[r.verdict], "sku": r.sku, "detection": r.detection_id,
                       "photo": r.query_id, "re-ranker": r.reranker_version, "note": r.note,
                       "undone": f"{r.undone_at:%Y-%m-%d %H:%M}" if r.undone_at else ""} for r in records],
                     hide_index=True)
    else:
        st.info("No decisions yet.")
    st.subheader("Export approved pairs")
    pairs = len(review.approved_pairs(s))
    st.caption(f"{pairs} approved photo-box → product pair(s) (undone decisions excluded).")
    c1, c2 = st.columns(2)
    c1.download_button("Download CSV", review.export_approved(s, "csv"), file_name="approved_pairs.csv",
                       mime="text/csv", key="export_csv", on_click="ignore")
    c2.download_button("Download JSONL", review.export_approved(s, "jsonl"), file_name="approved_pairs.jsonl",
                       mime="application/x-ndjson", key="export_jsonl", on_click="ignore")


def page_reranker(s: Settings, reviewer: review.Reviewer) -> None:
    st.header("Re-ranker")
    counts = review.labelled_pair_count(s)
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("labelled objects", counts["objects"])
    c2.metric("approved", counts["approved"])
    c3.metric("none of these", counts["rejected_all"])
    c4.metric("labelled pairs", counts["pairs"])
    st.caption("Live approve / none-of-these decisions are the training data (wrong-object and undone decisions are "
               "not). Training holds out 30 % of the photos and reports recall@1 there before anything is activated, "
               "then repeats on other splits to show how stable the lift is.")
    fraction = st.slider("Held-out share of photos", 0.1, 0.5, 0.3, 0.05, key="r_fraction")
    if st.button("Train re-ranker", key="train", type="primary"):
        with st.spinner("Training on the review decisions…"):
            try:
                st.session_state["training"] = service.train_reranker(s, source="decisions", activate="never",
                                                                      test_fraction=fraction, progress=False)
            except ValueError as exc:
                st.session_state.pop("training", None)
                st.error(f"Not trained: {plain(exc)}")
    info = st.session_state.get("training")
    if info:
        held = info["held_out"]
        st.subheader(f"Trained {info['version']}")
        m1, m2, m3, m4 = st.columns(4)
        m1.metric("held-out objects", held["groups"])
        m2.metric("recall@1, cosine only", f"{held['cosine_recall@1']:.3f}")
        m3.metric("recall@1, re-ranked", f"{held['reranked_recall@1']:.3f}", delta=f"{held['lift_recall@1']:+.3f}")
        m4.metric("recall@5, re-ranked", f"{held['reranked_recall@5']:.3f}",
                  delta=f"{held['reranked_recall@5'] - held['cosine_recall@5']:+.3f}")
        check = info["split_check"]
        st.caption(f"trained on {info['train_groups']} objects ({info['train_pairs']} pairs). The same training on "
                   f"{check['splits']} different splits of the photos: recall@1 lift mean {check['lift_recall@1_mean']:+.3f}, "
                   f"worst {check['lift_recall@1_min']:+.3f}; better than cosine on {check['better']}, equal on "
                   f"{check['equal']}, worse on {check['worse']} (one split alone is noisy).")
        if check["lift_recall@1_mean"] >= 0:
            st.success("On held-out photos it ranks at least as well as cosine alone.")
        else:
            st.warning("On held-out photos it ranks worse than cosine alone: activating it is not recommended.")
        st.button(f"Activate {info['version']}", key="activate", on_click=on_activate, args=(info["version"],))
    versions = service.list_rerankers(s)
    if versions:
        st.subheader("Stored versions")
        st.dataframe(versions, hide_index=True)


# --- main --------------------------------------------------------------------------------------

def main() -> None:
    st.set_page_config(page_title="matcher review", page_icon="🛋️", layout="wide")
    s = settings()
    st.sidebar.title("matcher review")
    reviewer = sign_in(s)
    if reviewer is None:
        st.title("Review matches")
        st.info("Sign in on the left with your reviewer account (an admin creates it with "
                "`matcher reviewers add NAME`), or with single sign-on where it is configured.")
        return
    st.sidebar.write(f"Signed in as **{plain(reviewer.name)}**")
    if reviewer.method == "streamlit":
        st.sidebar.button("Sign out", key="sign_out", on_click=st.logout)
    else:
        st.sidebar.button("Sign out", key="sign_out", on_click=on_sign_out)
    page = st.sidebar.radio("Page", PAGES, key="page")
    mine = next((p for p in review.reviewer_progress(s) if p.reviewer == reviewer.name), None)
    st.sidebar.metric("your live decisions", mine.decided if mine else 0)
    st.sidebar.caption(f"pending in the queue: {review.queue_size(s)}")
    show_flash()
    {"Upload & match": page_upload, "Queue": page_queue, "History & export": page_history,
     "Re-ranker": page_reranker}[page](s, reviewer)


main()
