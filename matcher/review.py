"""The review service: what the Streamlit review app (``ui/app.py``) calls.

Reviewers sign in, work through pending detections (from ``matcher match`` runs
and from uploads), approve one candidate, reject them all ("none of these") or
mark the detection as the wrong object, adjust a box and re-run that detection,
undo their own last decision, and export approved pairs.  Their live
approve/reject decisions are the re-ranker's training data
(``matcher.service.train_reranker(source="decisions")``).

No Streamlit here and no SQL (that lives in ``matcher.db.repository``).

Concurrency: every detection carries a ``version``.  A screen remembers the
version it showed; a decision or a box adjustment only applies while the
detection is still pending at that version (one conditional UPDATE), so two
reviewers deciding the same detection at once never overwrite each other: the
second gets a ``ConflictError`` naming who decided first.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import secrets
import threading
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import numpy as np
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerifyMismatchError
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .codec import decode_png, encode_png
from .db import repository as repo
from .db.engine import database_url, get_engine
from .db.migrate import upgrade
from .imageio import ImageLoadError, decode_image, load_image
from .mask_edit import Hint
from .settings import Settings
from .types import Box

log = logging.getLogger(__name__)
auth_log = logging.getLogger("matcher.review.auth")  # sign-ins, for the operator's log

Verdict = Literal["approve", "reject_all", "wrong_object"]
VERDICTS: tuple[str, ...] = ("approve", "reject_all", "wrong_object")
VERDICT_LABELS = {"approve": "approved", "reject_all": "none of these", "wrong_object": "wrong object"}

# Score bands over a detection's best candidate score (both the formula and the trained model give 0..1).
SCORE_BANDS: dict[str, tuple[float | None, float | None]] = {
    "high": (0.75, None), "medium": (0.5, 0.75), "low": (None, 0.5),
}
QUALITY_FLAGS: tuple[str, ...] = ("mask_fail", "leakage", "touches_border", "multi_component")

# Uploads: what the photo must decode as (sniffed from the bytes, never from the file name).
UPLOAD_FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}
UPLOAD_SUFFIXES = ("jpg", "jpeg", "png", "webp")  # for the file picker; the bytes decide
_NAME_RE = re.compile(r"^[\w][\w .@+'-]{0,63}$")


class ReviewError(ValueError):
    """A review action could not be carried out; the message says why."""


class AuthError(ReviewError):
    pass


class UploadError(ReviewError):
    """An uploaded photo refused; ``kind`` is empty | too_large | not_image | undecodable."""

    def __init__(self, message: str, kind: str = "undecodable") -> None:
        super().__init__(message)
        self.kind = kind


class ConflictError(ReviewError):
    """Someone else changed the detection since it was shown; nothing was written."""

    def __init__(self, message: str, *, detection_id: int, decided_by: str | None = None,
                 verdict: str | None = None, status: str | None = None) -> None:
        super().__init__(message)
        self.detection_id = detection_id
        self.decided_by = decided_by
        self.verdict = verdict
        self.status = status


# --- values -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Reviewer:
    name: str
    method: str = "account"  # "account" (name + password, ``matcher reviewers``) | "streamlit" (built-in OIDC auth)


@dataclass(frozen=True)
class CandidateView:
    product_id: int
    rank: int
    sku: str
    title: str
    category: str | None
    score: float
    features: dict[str, float]
    explanation: str
    image: str | None  # local catalog image path or URL; None if the file is gone


@dataclass(frozen=True)
class DecisionRecord:
    id: int
    detection_id: int
    reviewer: str
    verdict: str
    product_id: int | None
    sku: str | None
    title: str | None
    note: str | None
    reranker_version: str | None
    created_at: datetime
    undone_at: datetime | None = None
    query_id: int | None = None
    image_path: str | None = None
    box: tuple[float, float, float, float] | None = None  # x, y, w, h

    @property
    def live(self) -> bool:
        return self.undone_at is None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["created_at"] = self.created_at.isoformat(timespec="seconds")
        out["undone_at"] = self.undone_at.isoformat(timespec="seconds") if self.undone_at else None
        return out


@dataclass(frozen=True)
class DetectionView:
    """One detection as a reviewer sees it."""

    id: int
    query_id: int
    image_path: str
    image_size: tuple[int, int]  # width, height
    box: Box
    score: float
    label: str
    category: str | None
    source: str
    query_source: str
    flags: tuple[str, ...]
    fail_reason: str | None
    cutout_path: str | None
    mask_path: str | None
    status: str  # pending | decided | superseded
    version: int
    created_at: datetime
    reranker_version: str | None
    candidates: list[CandidateView] = field(default_factory=list)
    decision: DecisionRecord | None = None  # the live decision, when decided

    @property
    def pending(self) -> bool:
        return self.status == "pending"

    @property
    def quality_flags(self) -> tuple[str, ...]:
        return self.flags + (("mask_fail",) if self.fail_reason and "mask_fail" not in self.flags else ())


@dataclass(frozen=True)
class QueueItem:
    detection_id: int
    query_id: int
    version: int
    image_path: str
    source: str
    category: str | None  # the detection's category, else its best candidate's
    label: str
    box: tuple[float, float, float, float]  # x, y, w, h
    top_sku: str | None
    top_score: float | None
    flags: tuple[str, ...]
    fail_reason: str | None
    created_at: datetime


@dataclass(frozen=True)
class ReviewerProgress:
    reviewer: str
    approved: int = 0
    rejected_all: int = 0
    wrong_object: int = 0
    undone: int = 0

    @property
    def decided(self) -> int:
        return self.approved + self.rejected_all + self.wrong_object


# --- database handle ------------------------------------------------------------------------------

_MIGRATED: set[str] = set()
_MIGRATE_LOCK = threading.Lock()


def _engine(settings: Settings) -> Engine:
    """The engine, with the schema migrated once per process and database."""
    engine = get_engine(settings)
    url = database_url(settings)
    if url not in _MIGRATED:
        with _MIGRATE_LOCK:
            if url not in _MIGRATED:
                upgrade(engine)
                _MIGRATED.add(url)
    return engine


def _session(settings: Settings) -> Session:
    return Session(_engine(settings), expire_on_commit=False)


# --- sign-in ----------------------------------------------------------------------------------------

MIN_PASSWORD_LENGTH = 10
_HASHER = PasswordHasher()  # argon2id with the library's current recommended parameters
# Verified when the name has no account, so an unknown name costs the same time as a wrong password.
_DUMMY_HASH = _HASHER.hash(secrets.token_hex(16))


def _clean_name(name: str) -> str:
    clean = " ".join((name or "").split())
    if not _NAME_RE.match(clean):
        raise AuthError("enter your name: 1-64 letters, digits, spaces or . @ + ' - _")
    return clean


def authenticate(settings: Settings, name: str, password: str) -> Reviewer:
    """Sign in with the reviewer's own account.  Every attempt is logged; after
    ``review_max_failed_sign_ins`` failures within ``review_lockout_minutes`` the name is
    locked for the rest of that window, right password or not."""
    clean = _clean_name(name)
    window = timedelta(minutes=settings.review_lockout_minutes)
    # The attempt is committed before any error is raised: a failure must count even though it fails.
    with _session(settings) as session, session.begin():
        failures = repo.recent_failed_sign_ins(session, clean, utcnow() - window)
        locked = failures >= settings.review_max_failed_sign_ins
        account = None if locked else repo.reviewer_account(session, clean, for_update=True)
        reason = "locked" if locked else _password_problem(account, password or "")
        repo.record_sign_in(session, clean, reason is None, reason or "")
        if reason is None and _HASHER.check_needs_rehash(account.password_hash):
            repo.update_reviewer_account(session, account.id, password_hash=_HASHER.hash(password))
    if locked:
        auth_log.warning("sign-in refused for %r: locked after %d failed attempts", clean, failures)
        raise AuthError(f"too many failed sign-ins for this name: try again in "
                        f"{settings.review_lockout_minutes:g} minutes, or ask an admin")
    if reason is not None:
        auth_log.warning("failed sign-in for %r: %s", clean, reason)
        raise AuthError("wrong name or password")
    auth_log.info("reviewer %r signed in", account.name)
    return Reviewer(name=account.name, method="account")


def _password_problem(account, password: str) -> str | None:
    """Why this password does not sign in to this account (None: it does)."""
    try:
        _HASHER.verify(account.password_hash if account is not None else _DUMMY_HASH, password)
    except (VerifyMismatchError, InvalidHashError):
        return "no such account" if account is None else "wrong password"
    if account is None:  # the dummy hash's password is random and thrown away: unreachable in practice
        return "no such account"
    return None if account.active else "account disabled"


def _check_password(password: str) -> None:
    if len(password or "") < MIN_PASSWORD_LENGTH:
        raise AuthError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")


def add_reviewer(settings: Settings, name: str, password: str) -> str:
    """Create an account (admin command ``matcher reviewers add``); returns the stored name."""
    clean = _clean_name(name)
    _check_password(password)
    try:
        with _session(settings) as session, session.begin():
            repo.add_reviewer_account(session, clean, _HASHER.hash(password))
    except IntegrityError as exc:  # the unique index on lower(name), also against a concurrent add
        raise AuthError(f"an account named {clean!r} exists already (names ignore case)") from exc
    return clean


def set_reviewer_password(settings: Settings, name: str, password: str) -> None:
    _check_password(password)
    _update_account(settings, name, password_hash=_HASHER.hash(password))


def set_reviewer_active(settings: Settings, name: str, active: bool) -> None:
    """Disable (or re-enable) an account: a disabled reviewer cannot sign in; their decisions stay."""
    _update_account(settings, name, active=active)


def _update_account(settings: Settings, name: str, **values: Any) -> None:
    with _session(settings) as session, session.begin():
        account = repo.reviewer_account(session, _clean_name(name), for_update=True)
        if account is None:
            raise AuthError(f"no account named {name!r}")
        repo.update_reviewer_account(session, account.id, **values)


def list_reviewers(settings: Settings) -> list[dict[str, Any]]:
    with _session(settings) as session:
        return [{"name": a.name, "active": a.active, "created_at": a.created_at, "changed_at": a.changed_at}
                for a in repo.reviewer_accounts(session)]


def reviewer_from_identity(identity: str | None) -> Reviewer:
    """A reviewer signed in by Streamlit's built-in auth (OIDC): their e-mail or name."""
    clean = " ".join((identity or "").split())[:128]
    if not clean:
        raise AuthError("the identity provider gave no e-mail or name")
    return Reviewer(name=clean, method="streamlit")


# --- reading --------------------------------------------------------------------------------------

def _band(score_band: str | tuple[float | None, float | None] | None) -> dict[str, Any]:
    if score_band is None:
        return {}
    if score_band == "none":
        return {"no_candidates": True}
    if isinstance(score_band, str):
        if score_band not in SCORE_BANDS:
            raise ReviewError(f"unknown score band {score_band!r}: use one of {', '.join(SCORE_BANDS)} or none")
        low, high = SCORE_BANDS[score_band]
    else:
        low, high = score_band
    return {"min_score": low, "max_score": high}


def _queue_filters(category: str | None, score_band, flag: str | None) -> dict[str, Any]:
    if flag is not None and flag not in QUALITY_FLAGS:
        raise ReviewError(f"unknown quality flag {flag!r}: use one of {', '.join(QUALITY_FLAGS)}")
    return {"category": category, "flag": flag, **_band(score_band)}


def queue(settings: Settings, *, category: str | None = None,
          score_band: str | tuple[float | None, float | None] | None = None, flag: str | None = None,
          limit: int = 50, offset: int = 0) -> list[QueueItem]:
    """Pending detections, oldest first, one page of ``limit`` after ``offset``.

    ``score_band``: "high" / "medium" / "low" / "none" or (low, high).
    """
    filters = _queue_filters(category, score_band, flag)
    with _session(settings) as session:
        rows = repo.review_queue(session, limit=limit, offset=offset, **filters)
    return [QueueItem(detection_id=int(d.id), query_id=int(d.query_id), version=int(d.version), image_path=image_path,
                      source=f"{query_source}/{d.source}", category=shown_category, label=d.label,
                      box=_xywh(d.box), top_sku=top_sku, top_score=None if top_score is None else float(top_score),
                      flags=tuple(d.flags or ()), fail_reason=d.fail_reason, created_at=d.created_at)
            for d, image_path, query_source, top_score, top_sku, shown_category in rows]


def queue_size(settings: Settings, *, category: str | None = None, score_band=None, flag: str | None = None) -> int:
    with _session(settings) as session:
        return repo.review_queue_count(session, **_queue_filters(category, score_band, flag))


def categories(settings: Settings) -> list[str]:
    with _session(settings) as session:
        return repo.review_categories(session)


def _xywh(box: Sequence[float]) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return (x0, y0, x1 - x0, y1 - y0)


def _image_ref(uri: str) -> str | None:
    if uri.startswith(("http://", "https://")):
        return uri
    return uri if Path(uri).is_file() else None


def _record(decision, sku=None, title=None, detection=None, image_path=None) -> DecisionRecord:
    return DecisionRecord(
        id=int(decision.id), detection_id=int(decision.detection_id), reviewer=decision.reviewer,
        verdict=decision.verdict, product_id=decision.product_id, sku=sku, title=title, note=decision.note,
        reranker_version=decision.reranker_version, created_at=decision.created_at, undone_at=decision.undone_at,
        query_id=int(detection.query_id) if detection is not None else None, image_path=image_path,
        box=_xywh(detection.box) if detection is not None else None)


def _views(session: Session, rows: Iterable[tuple[Any, Any]]) -> list[DetectionView]:
    rows = list(rows)
    ids = [int(d.id) for d, _q in rows]
    candidates: dict[int, list[CandidateView]] = {i: [] for i in ids}
    for cand, product in repo.review_candidates(session, ids):
        candidates[int(cand.detection_id)].append(CandidateView(
            product_id=int(product.id), rank=int(cand.rank), sku=product.sku, title=product.title,
            category=product.category, score=float(cand.score), features={k: float(v) for k, v in cand.features.items()},
            explanation=cand.explanation, image=_image_ref(product.image_uri)))
    views = []
    for d, q in rows:
        decision = None
        if d.status == "decided":
            live = repo.latest_decision(session, int(d.id), live_only=True)
            if live is not None:
                product = repo.review_row(session, "product", live.product_id) if live.product_id else None
                decision = _record(live, product.sku if product else None, product.title if product else None, d,
                                   q.image_path)
        views.append(DetectionView(
            id=int(d.id), query_id=int(d.query_id), image_path=q.image_path, image_size=(int(q.width), int(q.height)),
            box=Box(*(float(v) for v in d.box)), score=float(d.score), label=d.label, category=d.category,
            source=d.source, query_source=q.source, flags=tuple(d.flags or ()), fail_reason=d.fail_reason,
            cutout_path=d.cutout_path, mask_path=d.mask_path, status=d.status, version=int(d.version),
            created_at=d.created_at, reranker_version=q.reranker_version, candidates=candidates[int(d.id)],
            decision=decision))
    return views


def detection_view(settings: Settings, detection_id: int) -> DetectionView:
    with _session(settings) as session:
        rows = repo.review_detections(session, [int(detection_id)], include_superseded=True)
        if not rows:
            raise ReviewError(f"no detection {detection_id}")
        return _views(session, rows)[0]


def query_detections(settings: Settings, query_id: int) -> list[DetectionView]:
    """The current (not superseded) detections of one photo."""
    with _session(settings) as session:
        return _views(session, repo.review_detections(session, query_id=int(query_id)))


def load_photo(path: str | Path, settings: Settings) -> np.ndarray:
    """The query photo as RGB, for display (raises ``ImageLoadError`` with the reason)."""
    return load_image(path, max_pixels=settings.max_image_pixels, max_bytes=settings.max_image_bytes).rgb


def load_mask(path: str | Path | None) -> np.ndarray | None:
    """A stored photo-sized detection mask as bool, or None when missing/unreadable."""
    if not path or not Path(path).is_file():
        return None
    try:
        return decode_png(Path(path).read_bytes()) > 0
    except ValueError:
        return None


def load_cutout(path: str | Path | None) -> np.ndarray | None:
    """The stored RGBA cutout of a detection as uint8 (a 16-bit PNG is scaled down), or None when unreadable."""
    if not path or not Path(path).is_file():
        return None
    try:
        array = decode_png(Path(path).read_bytes())
    except (ValueError, OSError):
        return None
    if array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)
    return array if array.dtype == np.uint8 else None


def load_catalog_image(path: str | Path | None, long_side: int = 512) -> np.ndarray | None:
    """A catalog photo for display (RGB, at most ``long_side`` px), or None when missing, replaced by a
    non-image or corrupt: the reviewer sees "image unavailable" and can still decide."""
    if not path:
        return None
    try:
        rgb = load_image(path).rgb
    except ImageLoadError as exc:
        log.warning("catalog image %s unavailable: %s", path, exc)
        return None
    scale = long_side / max(rgb.shape[:2])
    if scale < 1:
        import cv2

        rgb = cv2.resize(rgb, (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale))),
                         interpolation=cv2.INTER_AREA)
    return rgb


# --- deciding -------------------------------------------------------------------------------------

def _conflict(session: Session, detection_id: int, action: str) -> ConflictError:
    row = repo.review_row(session, "detection", detection_id)
    if row is None:
        return ConflictError(f"detection {detection_id} no longer exists", detection_id=detection_id)
    last = repo.latest_decision(session, detection_id, live_only=True)
    if row.status == "decided" and last is not None:
        when = last.created_at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        return ConflictError(
            f"detection {detection_id} was already decided by {last.reviewer} ({VERDICT_LABELS.get(last.verdict, last.verdict)}) "
            f"at {when}; your {action} was not saved", detection_id=detection_id, decided_by=last.reviewer,
            verdict=last.verdict, status=row.status)
    if row.status == "superseded":
        return ConflictError(f"detection {detection_id} was replaced by an adjusted box or a corrected mask; your "
                             f"{action} was not saved",
                             detection_id=detection_id, status=row.status)
    return ConflictError(f"detection {detection_id} changed since you loaded it (a decision was undone); "
                         f"reload and {action} again", detection_id=detection_id, status=row.status)


def decide(settings: Settings, detection_id: int, reviewer: Reviewer | str, verdict: str, product_id: int | None = None,
           note: str | None = None, *, expected_version: int) -> DecisionRecord:
    """Record a decision if the detection is still pending at ``expected_version``; else ``ConflictError``."""
    name = _name(reviewer)
    if not name.strip():
        raise AuthError("a decision needs a signed-in reviewer")
    if verdict not in VERDICTS:
        raise ReviewError(f"unknown verdict {verdict!r}: use one of {', '.join(VERDICTS)}")
    if verdict == "approve" and product_id is None:
        raise ReviewError("approving needs the candidate's product")
    if verdict != "approve":
        product_id = None
    note = (note or "").strip()[:2000] or None
    with _session(settings) as session, session.begin():
        rows = repo.review_detections(session, [int(detection_id)], include_superseded=True)
        if not rows:
            raise ReviewError(f"no detection {detection_id}")
        detection, query = rows[0]
        product = None
        if product_id is not None:
            candidate_ids = {int(c.product_id) for c, _p in repo.review_candidates(session, [int(detection_id)])}
            if int(product_id) not in candidate_ids:
                raise ReviewError(f"product {product_id} is not a candidate of detection {detection_id}")
            product = repo.review_row(session, "product", product_id)
        if repo.claim_detection(session, int(detection_id), int(expected_version), "decided") != 1:
            raise _conflict(session, int(detection_id), "decision")
        row = repo.insert_decision(session, detection_id=int(detection_id), reviewer=name, verdict=verdict,
                                   product_id=product_id, note=note, reranker_version=query.reranker_version)
        session.refresh(row)
        return _record(row, product.sku if product else None, product.title if product else None, detection,
                       query.image_path)


def undo_last(settings: Settings, reviewer: Reviewer | str) -> DecisionRecord:
    """Undo the reviewer's own latest live decision: the detection goes back to the queue."""
    name = _name(reviewer)
    with _session(settings) as session, session.begin():
        decision = repo.last_live_decision_of(session, name, for_update=True)
        if decision is None:
            raise ReviewError(f"{name} has no decision to undo")
        if repo.reopen_detection(session, int(decision.detection_id)) != 1:
            raise ConflictError(f"detection {decision.detection_id} is no longer decided; nothing to undo",
                                detection_id=int(decision.detection_id))
        repo.mark_decision_undone(session, int(decision.id))
        session.flush()
        session.refresh(decision)
        rows = repo.review_detections(session, [int(decision.detection_id)], include_superseded=True)
        detection, query = rows[0]
        product = repo.review_row(session, "product", decision.product_id) if decision.product_id else None
        return _record(decision, product.sku if product else None, product.title if product else None, detection,
                       query.image_path)


def history(settings: Settings, reviewer: Reviewer | str | None = None, *, limit: int | None = 200,
            live_only: bool = False) -> list[DecisionRecord]:
    """Decisions, newest first, with who, when and which re-ranker ranked the candidates."""
    name = _name(reviewer) if reviewer is not None else None  # None: everyone's
    with _session(settings) as session:
        rows = repo.decision_history(session, reviewer=name, live_only=live_only, limit=limit)
    return [_record(d, sku, title, det, image_path) for d, sku, title, _category, det, image_path in rows]


EXPORT_FIELDS = ("detection_id", "query_id", "image_path", "box_x", "box_y", "box_w", "box_h", "sku", "title",
                 "category", "reviewer", "decided_at", "reranker_version", "note")


def approved_pairs(settings: Settings) -> list[dict[str, Any]]:
    """Live approvals as (photo + box) -> product pairs, oldest first."""
    with _session(settings) as session:
        rows = repo.decision_history(session, verdict="approve", live_only=True, limit=None)
    pairs = []
    for d, sku, title, category, det, image_path in reversed(rows):
        x, y, w, h = _xywh(det.box)
        pairs.append({"detection_id": int(det.id), "query_id": int(det.query_id), "image_path": image_path,
                      "box_x": round(x, 1), "box_y": round(y, 1), "box_w": round(w, 1), "box_h": round(h, 1),
                      "sku": sku, "title": title, "category": category, "reviewer": d.reviewer,
                      "decided_at": d.created_at.isoformat(timespec="seconds"), "reranker_version": d.reranker_version,
                      "note": d.note})
    return pairs


def _csv_cell(value: Any) -> Any:
    # Spreadsheet formula injection: a text cell must not start a formula.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def export_approved(settings: Settings, fmt: str = "csv") -> str:
    """Approved pairs as CSV (header + one row each) or JSON Lines."""
    pairs = approved_pairs(settings)
    if fmt == "jsonl":
        return "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs)
    if fmt != "csv":
        raise ReviewError(f"unknown export format {fmt!r}: use csv or jsonl")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=EXPORT_FIELDS, lineterminator="\n")
    writer.writeheader()
    for p in pairs:
        writer.writerow({k: _csv_cell(v) for k, v in p.items()})
    return buffer.getvalue()


def reviewer_progress(settings: Settings, since: datetime | None = None) -> list[ReviewerProgress]:
    """Per reviewer: live approvals, rejections, wrong objects, and undone decisions."""
    with _session(settings) as session:
        rows = repo.reviewer_counts(session, since)
    tallies: dict[str, dict[str, int]] = {}
    for name, verdict, live, undone in rows:
        tally = tallies.setdefault(name, {"approved": 0, "rejected_all": 0, "wrong_object": 0, "undone": 0})
        key = {"approve": "approved", "reject_all": "rejected_all", "wrong_object": "wrong_object"}[verdict]
        tally[key] += live
        tally["undone"] += undone
    return [ReviewerProgress(reviewer=name, **t) for name, t in sorted(tallies.items())]


def labelled_pair_count(settings: Settings) -> dict[str, int]:
    """Training data for the re-ranker: objects with a live approve / reject_all and their candidate pairs."""
    with _session(settings) as session:
        counts = repo.labelled_counts(session)
    counts["objects"] = counts["approved"] + counts["rejected_all"]
    return counts


def activate_reranker(settings: Settings, version: str) -> None:
    """Make a stored re-ranker version the one new queries use."""
    with _session(settings) as session, session.begin():
        try:
            repo.activate_reranker(session, version)
        except KeyError as exc:
            raise ReviewError(str(exc)) from exc


# --- uploads and re-matching -----------------------------------------------------------------------

def uploads_dir(settings: Settings) -> Path:
    return (settings.data_dir / "uploads").resolve()


def save_upload(settings: Settings, filename: str, data: bytes) -> Path:
    """Check an uploaded photo and store it under ``data_dir/uploads`` with a random server-side name.

    The user's file name is only used in messages: never as a path.  The bytes must
    decode (fully, safely) as a JPEG, PNG or WebP photo within the size limits.
    """
    shown = display_name(filename)
    limit = int(settings.max_upload_bytes)
    if not data:
        raise UploadError(f"{shown}: the file is empty", "empty")
    if len(data) > limit:
        raise UploadError(f"{shown}: {len(data) / 1e6:.1f} MB is over the {limit / 1e6:.1f} MB upload limit", "too_large")
    from PIL import Image

    try:
        fmt = _sniff_format(data)
    except Image.DecompressionBombError as exc:  # PIL refuses to even open it: far too many pixels for a photo
        raise UploadError(f"{shown}: refused, too many pixels for a photo (a decompression bomb?)", "too_large") from exc
    if fmt not in UPLOAD_FORMATS:
        raise UploadError(f"{shown}: not a JPEG, PNG or WebP photo" + (f" (it is {fmt})" if fmt else ""), "not_image")
    try:
        decode_image(data, source=shown, max_pixels=settings.max_image_pixels)
    except ImageLoadError as exc:
        raise UploadError(str(exc)) from exc
    folder = uploads_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    target = (folder / (secrets.token_hex(16) + UPLOAD_FORMATS[fmt])).resolve()
    if target.parent != folder:  # cannot happen with a hex name; kept as the invariant
        raise UploadError(f"{shown}: refused")
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o640)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return target


def prune_uploads(settings: Settings, older_than: timedelta, *, dry_run: bool = False) -> list[Path]:
    """Delete uploaded photos older than ``older_than`` that no pending review needs; returns what was (or would be) removed.

    A photo stays while any detection on it is pending or it was matched recently;
    decisions, candidates and cutouts stay in the database either way (the app
    then shows "photo not available").  Uploads that were never matched count by
    their file time.
    """
    folder = uploads_dir(settings)
    if not folder.is_dir():
        return []
    cutoff = utcnow() - older_than
    with _session(settings) as session:
        in_use = {Path(p).resolve() for p in repo.upload_photos_in_use(session, cutoff)}
    stale = [path for path in sorted(folder.iterdir())
             if path.is_file() and not path.is_symlink() and path.resolve() not in in_use
             and datetime.fromtimestamp(path.stat().st_mtime, timezone.utc) < cutoff]
    if not dry_run:
        for path in stale:
            path.unlink(missing_ok=True)
    return stale


def display_name(filename: str | None) -> str:
    base = re.split(r"[\\/]", filename or "")[-1]
    clean = "".join(ch for ch in base if ch.isprintable())[:80]
    return clean or "upload"


def _sniff_format(data: bytes) -> str | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.format
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None


def parse_boxes(text: str) -> list[Box]:
    """``x,y,w,h`` per line (blank lines ignored) -> boxes; errors name the line."""
    from .query import parse_box

    boxes = []
    for number, line in enumerate((text or "").splitlines(), start=1):
        if line.strip():
            try:
                boxes.append(parse_box(line.strip()))
            except ValueError as exc:
                raise ReviewError(f"line {number}: {exc}") from exc
    return boxes


def match_upload(settings: Settings, path: str | Path, engine, *, reviewer: Reviewer | str,
                 boxes: Sequence[Box] | None = None) -> int:
    """Run the query path on a saved upload and store it for review; returns the query id."""
    name = _name(reviewer)
    path = Path(path).resolve()
    if path.parent != uploads_dir(settings):
        raise UploadError("only photos saved by save_upload can be matched from the app")
    if not boxes and not engine.detectors:
        raise ReviewError("no detector is configured (MATCHER_REVIEW_DETECTORS): enter boxes as x,y,w,h, one per line")
    try:
        result = engine.match(path, boxes=list(boxes) if boxes else None, store=True, source=f"upload:{name}")
    except ImageLoadError as exc:
        raise UploadError(str(exc)) from exc
    except ValueError as exc:
        raise ReviewError(str(exc)) from exc
    return int(result.query_id)


def rerun_detection(settings: Settings, detection_id: int, box: Box, engine, *, expected_version: int,
                    reviewer: Reviewer | str | None = None) -> DetectionView:
    """Re-match one detection with an adjusted box: a new detection on the same photo replaces it.

    The old detection is marked superseded (optimistic lock as for decisions); the
    rest of the photo's detections are untouched."""
    view = _pending_view(settings, detection_id, expected_version, "box adjustment")
    photo = _photo_of(settings, view)
    try:
        result = engine.match(photo, boxes=[box], box_categories=[view.category], store=False)
    except ValueError as exc:
        raise ReviewError(str(exc)) from exc
    name = _name(reviewer) if reviewer else None
    return _replace_detection(settings, view, expected_version, result.objects[0], action="box adjustment",
                              label=f"adjusted by {name}" if name else "adjusted box", source="review-adjust")


def preview_mask(settings: Settings, detection_id: int, engine, *, add: Sequence[Hint] = (),
                 remove: Sequence[Hint] = ()) -> np.ndarray:
    """The detection's mask after the reviewer's hints (photo-sized bool), nothing stored."""
    view = detection_view(settings, detection_id)
    return _refined(settings, view, _photo_of(settings, view), engine, add, remove)


def correct_mask(settings: Settings, detection_id: int, engine, *, add: Sequence[Hint] = (), remove: Sequence[Hint] = (),
                 expected_version: int, reviewer: Reviewer | str) -> DetectionView:
    """Accept a reviewer's mask fix: the corrected mask is matted, re-matched and stored as a new version.

    A new detection carrying the corrected mask and its re-ranked candidates replaces the old one
    (as a box adjustment does), and the mask itself goes to ``mask_corrections`` with the reviewer,
    the time, the hints and its version, as training data for the segmenter."""
    from .cutout import mask_bbox
    from .query import QueryObject, cut_out
    from .types import Detection

    if not add and not remove:
        raise ReviewError("mark at least one region to add or remove")
    view = _pending_view(settings, detection_id, expected_version, "mask correction")
    photo = _photo_of(settings, view)
    mask = _refined(settings, view, photo, engine, add, remove)
    if not mask.any():
        raise ReviewError("the corrected mask is empty: remove fewer regions, or mark the detection as the wrong object")
    detection = Detection(box=mask_bbox(mask), score=view.score, label=view.label, category=view.category, source="review-mask")
    segmenter_id = f"review:{engine.segmenter.segmenter_id}"
    cutout = cut_out(photo, detection, mask, segmenter_id, settings)
    candidates = engine.identify([cutout], [detection], settings.stored_candidates, False, {})[0]
    obj = QueryObject(detection=detection, cutout=cutout, candidates=candidates, full_mask=mask)
    hints = {"add": [h.to_list() for h in add], "remove": [h.to_list() for h in remove]}

    def record(session: Session, new_id: int) -> None:
        _save_mask_version(session, view, mask, new_id, method="corrected", reviewer=reviewer, hints=hints,
                           segmenter_id=segmenter_id, flags=list(cutout.flags), corrected_detection_id=view.id)

    return _replace_detection(settings, view, expected_version, obj, action="mask correction",
                              label=f"mask fixed by {_name(reviewer)}", source="review-mask", also=record)


def verify_mask(settings: Settings, detection_id: int, reviewer: Reviewer | str) -> int:
    """Record that a detection's mask is right as it is (training data too); returns its version."""
    view = detection_view(settings, detection_id)
    mask = load_mask(view.mask_path)
    if mask is None or not mask.any():
        raise ReviewError(f"detection {detection_id} has no usable mask to verify")
    with _session(settings) as session, session.begin():
        return _save_mask_version(session, view, mask, view.id, method="verified", reviewer=reviewer, hints={},
                                  flags=list(view.flags))


def _save_mask_version(session: Session, view: DetectionView, mask: np.ndarray, detection_id: int, *, method: str,
                       reviewer: Reviewer | str, hints: dict, flags: list[str], segmenter_id: str | None = None,
                       corrected_detection_id: int | None = None) -> int:
    """Store a reviewed mask as the next version of ``view``'s object (1 for its first); returns the version.

    A verified mask keeps the segmenter of the version it confirms (``segmenter_id`` None)."""
    import hashlib

    previous = repo.latest_mask_correction(session, view.id)
    segmenter_id = segmenter_id or (previous.segmenter_id if previous else view.source)
    version = previous.version + 1 if previous else 1
    png = encode_png(mask)
    repo.save_mask_correction(
        session, detection_id=detection_id, corrected_detection_id=corrected_detection_id, query_id=view.query_id,
        previous_id=previous.id if previous else None, version=version, method=method, reviewer=_name(reviewer),
        label=view.category, hints=hints, segmenter_id=segmenter_id, flags=flags, mask_png=png,
        mask_sha256=hashlib.sha256(png).hexdigest())
    return version


def mask_history(settings: Settings, detection_id: int) -> list[dict[str, Any]]:
    """The reviewed versions of a detection's mask, newest first (following corrections back)."""
    out = []
    with _session(settings) as session:
        row = repo.latest_mask_correction(session, int(detection_id))
        while row is not None:
            out.append({"version": row.version, "method": row.method, "reviewer": row.reviewer,
                        "created_at": row.created_at, "hints": row.hints, "mask_sha256": row.mask_sha256})
            row = repo.review_mask_correction(session, row.previous_id) if row.previous_id else None
    return out


def _name(reviewer: Reviewer | str) -> str:
    return reviewer.name if isinstance(reviewer, Reviewer) else str(reviewer)


def _pending_view(settings: Settings, detection_id: int, expected_version: int, action: str) -> DetectionView:
    view = detection_view(settings, detection_id)
    if not view.pending or view.version != expected_version:
        with _session(settings) as session:
            raise _conflict(session, int(detection_id), action)
    return view


def _photo_of(settings: Settings, view: DetectionView):
    """The detection's photo, refused when the file changed since it was matched."""
    try:
        photo = load_image(view.image_path, max_pixels=settings.max_image_pixels, max_bytes=settings.max_image_bytes)
    except ImageLoadError as exc:
        raise ReviewError(f"cannot re-run detection {view.id}: {exc}") from exc
    if photo.sha256 != _query_sha(settings, view.query_id):
        raise ReviewError(f"cannot re-run detection {view.id}: the photo at {view.image_path} changed since it was matched")
    return photo


def _refined(settings: Settings, view: DetectionView, photo, engine, add, remove) -> np.ndarray:
    from .mask_edit import refine_mask

    current = load_mask(view.mask_path)
    if current is None or current.shape != (photo.height, photo.width):
        current = np.zeros((photo.height, photo.width), bool)
    return refine_mask(photo.rgb, current, view.box, add, remove, segmenter=engine.segmenter)


def _replace_detection(settings: Settings, view: DetectionView, expected_version: int, obj, *, action: str, label: str,
                       source: str, also=None) -> DetectionView:
    """Store ``obj`` (a re-run of ``view``'s object) as a new detection that supersedes ``view``, atomically."""
    folder = settings.artifacts_dir / "queries" / str(view.query_id)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"det{view.id}_{source}_{secrets.token_hex(4)}"
    cutout_path = mask_path = None
    if obj.cutout is not None and obj.cutout.ok:
        cutout_path = folder / f"{stem}_cutout.png"
        cutout_path.write_bytes(encode_png(obj.cutout.rgba()))
    if obj.full_mask is not None:
        mask_path = folder / f"{stem}_mask.png"
        mask_path.write_bytes(encode_png(obj.full_mask))
    try:
        with _session(settings) as session, session.begin():
            if repo.claim_detection(session, int(view.id), int(expected_version), "superseded") != 1:
                raise _conflict(session, int(view.id), action)
            det = obj.detection
            new_id = repo.save_detection(
                session, view.query_id, box=list(det.box.xyxy()), score=det.score, label=label, category=view.category,
                source=source, cutout_path=str(cutout_path) if cutout_path else None,
                mask_path=str(mask_path) if mask_path else None, flags=list(obj.cutout.flags) if obj.cutout else [],
                fail_reason=obj.cutout.fail_reason if obj.cutout else "no mask")
            repo.save_candidates(session, new_id, [
                {"product_id": c.product_id, "rank": rank + 1, "score": c.score, "features": c.features,
                 "explanation": c.explanation}
                for rank, c in enumerate(obj.candidates[: settings.stored_candidates])])
            if also is not None:
                also(session, new_id)
    except BaseException:
        for path in (cutout_path, mask_path):
            if path is not None:
                path.unlink(missing_ok=True)
        raise
    return detection_view(settings, new_id)


def _query_sha(settings: Settings, query_id: int) -> str:
    with _session(settings) as session:
        row = repo.review_row(session, "query", query_id)
        return row.image_sha256 if row is not None else ""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
