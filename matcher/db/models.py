"""ORM models.  The schema itself is owned by the Alembic migrations in
``migrations/``; these classes mirror it for the repository's queries.

Embeddings of different models never share a search: every vector belongs to
an ``EmbeddingSpace`` (embedder id + segmenter id + dimension), and each space
has its own partial HNSW index over ``vector::vector(dim)``.
"""

from __future__ import annotations

from datetime import datetime

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    BigInteger, Boolean, DateTime, Float, ForeignKey, Integer, LargeBinary, String, Text, UniqueConstraint, func,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


def _now_column() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class Product(Base):
    __tablename__ = "products"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    sku: Mapped[str] = mapped_column(Text, unique=True, nullable=False)
    title: Mapped[str] = mapped_column(Text, nullable=False, default="")
    category: Mapped[str | None] = mapped_column(Text)
    attributes: Mapped[dict] = mapped_column(JSONB, nullable=False, default=dict)
    image_uri: Mapped[str] = mapped_column(Text, nullable=False)
    image_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = _now_column()
    updated_at: Mapped[datetime] = _now_column()
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reference_png: Mapped[bytes | None] = mapped_column(LargeBinary)  # <= 256 px, for perceptual change checks


class Cutout(Base):
    __tablename__ = "cutouts"
    __table_args__ = (UniqueConstraint("product_id", "segmenter_id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id", ondelete="CASCADE"), nullable=False)
    segmenter_id: Mapped[str] = mapped_column(Text, nullable=False)
    image_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    width: Mapped[int] = mapped_column(Integer, nullable=False)
    height: Mapped[int] = mapped_column(Integer, nullable=False)
    bbox: Mapped[list | None] = mapped_column(JSONB)  # [x0, y0, x1, y1]
    mask_png: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    alpha_png: Mapped[bytes | None] = mapped_column(LargeBinary)
    rgba_png: Mapped[bytes | None] = mapped_column(LargeBinary)  # cropped cutout for display
    coverage: Mapped[float] = mapped_column(Float, nullable=False)
    leakage_score: Mapped[float] = mapped_column(Float, nullable=False)
    flags: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False, default=list)
    fail_reason: Mapped[str | None] = mapped_column(Text)
    dominant_colors: Mapped[list] = mapped_column(JSONB, nullable=False, default=list)  # [{"lab": [L,a,b], "weight": w}]
    created_at: Mapped[datetime] = _now_column()


class EmbeddingSpace(Base):
    __tablename__ = "embedding_spaces"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(Text, unique=True, nullable=False)
    embedder_id: Mapped[str] = mapped_column(Text, nullable=False)
    segmenter_id: Mapped[str] = mapped_column(Text, nullable=False)
    dim: Mapped[int] = mapped_column(Integer, nullable=False)
    status: Mapped[str] = mapped_column(Text, nullable=False, default="building")  # building | active | retired
    index_name: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now_column()
    activated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Embedding(Base):
    __tablename__ = "embeddings"
    __table_args__ = (UniqueConstraint("product_id", "space_id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id", ondelete="CASCADE"), nullable=False)
    space_id: Mapped[int] = mapped_column(ForeignKey("embedding_spaces.id", ondelete="CASCADE"), nullable=False)
    model_id: Mapped[str] = mapped_column(Text, nullable=False)
    dim: Mapped[int] = mapped_column(Integer, nullable=False)
    image_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    vector = mapped_column(Vector(), nullable=False)
    created_at: Mapped[datetime] = _now_column()


class IndexRun(Base):
    __tablename__ = "index_runs"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    kind: Mapped[str] = mapped_column(Text, nullable=False, default="index")
    catalog: Mapped[str] = mapped_column(Text, nullable=False)
    backend: Mapped[str] = mapped_column(Text, nullable=False)
    space_id: Mapped[int | None] = mapped_column(ForeignKey("embedding_spaces.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(Text, nullable=False, default="running")  # running | done | failed
    counts: Mapped[dict] = mapped_column(JSONB, nullable=False, default=dict)
    started_at: Mapped[datetime] = _now_column()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    duration_s: Mapped[float | None] = mapped_column(Float)


class IndexEvent(Base):
    __tablename__ = "index_events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("index_runs.id", ondelete="CASCADE"), nullable=False)
    sku: Mapped[str] = mapped_column(Text, nullable=False)
    kind: Mapped[str] = mapped_column(Text, nullable=False)
    detail: Mapped[dict] = mapped_column(JSONB, nullable=False, default=dict)
    created_at: Mapped[datetime] = _now_column()


class IndexFailure(Base):
    __tablename__ = "index_failures"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("index_runs.id", ondelete="CASCADE"), nullable=False)
    line: Mapped[int] = mapped_column(Integer, nullable=False)
    sku: Mapped[str | None] = mapped_column(Text)
    stage: Mapped[str] = mapped_column(Text, nullable=False)
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = _now_column()


class Reranker(Base):
    __tablename__ = "rerankers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[str] = mapped_column(Text, unique=True, nullable=False)
    kind: Mapped[str] = mapped_column(Text, nullable=False)
    feature_names: Mapped[list] = mapped_column(JSONB, nullable=False)
    model: Mapped[bytes | None] = mapped_column(LargeBinary)
    metrics: Mapped[dict] = mapped_column(JSONB, nullable=False, default=dict)
    active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[datetime] = _now_column()


class Query(Base):
    __tablename__ = "queries"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    image_path: Mapped[str] = mapped_column(Text, nullable=False)
    image_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    width: Mapped[int] = mapped_column(Integer, nullable=False)
    height: Mapped[int] = mapped_column(Integer, nullable=False)
    source: Mapped[str] = mapped_column(Text, nullable=False, default="cli")
    space_id: Mapped[int | None] = mapped_column(ForeignKey("embedding_spaces.id", ondelete="SET NULL"))
    reranker_version: Mapped[str | None] = mapped_column(Text)
    timings: Mapped[dict] = mapped_column(JSONB, nullable=False, default=dict)
    created_at: Mapped[datetime] = _now_column()


class DetectionRow(Base):
    __tablename__ = "detections"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    query_id: Mapped[int] = mapped_column(ForeignKey("queries.id", ondelete="CASCADE"), nullable=False)
    box: Mapped[list] = mapped_column(JSONB, nullable=False)
    score: Mapped[float] = mapped_column(Float, nullable=False)
    label: Mapped[str] = mapped_column(Text, nullable=False)
    category: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str] = mapped_column(Text, nullable=False)
    mask_png: Mapped[bytes | None] = mapped_column(LargeBinary)
    cutout_path: Mapped[str | None] = mapped_column(Text)
    mask_path: Mapped[str | None] = mapped_column(Text)
    flags: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False, default=list)
    fail_reason: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, nullable=False, default="pending")
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    created_at: Mapped[datetime] = _now_column()


class CandidateRow(Base):
    __tablename__ = "candidates"
    __table_args__ = (UniqueConstraint("detection_id", "product_id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    detection_id: Mapped[int] = mapped_column(ForeignKey("detections.id", ondelete="CASCADE"), nullable=False)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id", ondelete="CASCADE"), nullable=False)
    rank: Mapped[int] = mapped_column(Integer, nullable=False)
    score: Mapped[float] = mapped_column(Float, nullable=False)
    features: Mapped[dict] = mapped_column(JSONB, nullable=False)
    explanation: Mapped[str] = mapped_column(Text, nullable=False, default="")


class Decision(Base):
    __tablename__ = "decisions"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    detection_id: Mapped[int] = mapped_column(ForeignKey("detections.id", ondelete="CASCADE"), nullable=False)
    reviewer: Mapped[str] = mapped_column(Text, nullable=False)
    verdict: Mapped[str] = mapped_column(Text, nullable=False)
    product_id: Mapped[int | None] = mapped_column(ForeignKey("products.id", ondelete="SET NULL"))
    note: Mapped[str | None] = mapped_column(Text)
    reranker_version: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now_column()
    undone_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ReviewerAccount(Base):
    __tablename__ = "reviewer_accounts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    password_hash: Mapped[str] = mapped_column(Text, nullable=False)
    active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    created_at: Mapped[datetime] = _now_column()
    changed_at: Mapped[datetime] = _now_column()


class SignInAttempt(Base):
    __tablename__ = "sign_in_attempts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    succeeded: Mapped[bool] = mapped_column(Boolean, nullable=False)
    reason: Mapped[str] = mapped_column(Text, nullable=False, default="")
    created_at: Mapped[datetime] = _now_column()


class MaskCorrection(Base):
    __tablename__ = "mask_corrections"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    detection_id: Mapped[int] = mapped_column(ForeignKey("detections.id", ondelete="CASCADE"), nullable=False)
    corrected_detection_id: Mapped[int | None] = mapped_column(ForeignKey("detections.id", ondelete="SET NULL"))
    query_id: Mapped[int] = mapped_column(ForeignKey("queries.id", ondelete="CASCADE"), nullable=False)
    previous_id: Mapped[int | None] = mapped_column(ForeignKey("mask_corrections.id", ondelete="SET NULL"))
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    method: Mapped[str] = mapped_column(Text, nullable=False)
    reviewer: Mapped[str] = mapped_column(Text, nullable=False)
    label: Mapped[str | None] = mapped_column(Text)
    hints: Mapped[dict] = mapped_column(JSONB, nullable=False, default=dict)
    segmenter_id: Mapped[str] = mapped_column(Text, nullable=False)
    flags: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False, default=list)
    mask_png: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    mask_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = _now_column()
