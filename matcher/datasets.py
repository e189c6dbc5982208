"""``matcher dataset export``: reviewed masks as a versioned segmentation data set in the bench format.

Every object whose mask a reviewer corrected or verified becomes one COCO instance (RLE mask, box,
label, sku when a product was approved) on its photo, with where it came from: the source photo,
the annotation method (``corrected`` / ``verified``), the reviewer, the mask's version and quality
flags. Photos are split by image id into train/val/test with every label kept in each part where
the photos allow it (seed 42, the split ``matcher seg train`` uses), so ``matcher seg train OUT``
trains on review work directly.

A version is written once: the export goes to a temporary folder beside ``out`` and is renamed into
place when complete, and an existing ``out`` is never overwritten.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from .codec import decode_png, encode_png
from .cutout import mask_bbox
from .db import repository as repo
from .db.engine import get_engine
from .db.migrate import upgrade
from .imageio import ImageLoadError, load_image
from .settings import Settings

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
FORMAT = "matcher-reviewed-masks/1"


class DatasetExportError(ValueError):
    pass


@dataclass
class ExportReport:
    out_dir: Path
    name: str
    version: str
    images: int = 0
    annotations: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    methods: dict[str, int] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # photos left out, with the reason

    def to_dict(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "name": self.name, "version": self.version, "images": self.images,
                "annotations": self.annotations, "splits": self.splits, "methods": self.methods, "labels": self.labels,
                "skipped": self.skipped}


def export_reviewed_masks(settings: Settings, out_dir: str | Path, *, name: str, version: str,
                          seed: int = 42) -> ExportReport:
    for what, value in (("name", name), ("version", version)):
        if not NAME_RE.match(value or ""):
            raise DatasetExportError(f"--{what} {value!r}: use letters, digits, '.', '_' or '-' (at most 64)")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetExportError(f"{out} already exists: a data set version is never overwritten; choose a new --out")
    engine = get_engine(settings)
    upgrade(engine)
    report = ExportReport(out_dir=out, name=name, version=version)
    with Session(engine) as session:
        rows = repo.reviewed_masks(session)
        if not rows:
            raise DatasetExportError("no reviewed masks yet: correct or verify masks in the review app first")
        detection_ids = [int(d.id) for _c, d, _q in rows]
        approved = repo.approved_products(session, detection_ids)
        top_titles = repo.top_candidate_titles(session, detection_ids)
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
        try:
            coco, products = _write_photos_and_annotations(staging, rows, approved, top_titles, settings, report)
            if not coco["annotations"]:
                raise DatasetExportError("no reviewed mask could be exported: " + "; ".join(report.skipped))
            _assign_splits(coco, seed, report)
            _write_files(staging, coco, products, name, version, seed, report)
            if out.exists():
                out.rmdir()  # the empty folder the caller made
            staging.rename(out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return report


def _label(correction, detection, product, top_title: str | None) -> tuple[str | None, str]:
    """The object's label and where it came from: the approved product, the reviewer's category, the detector's
    label, else the best candidate's title (not verified, so marked as such)."""
    from .segmentation.labels import known_labels, label_for_product

    if product is not None:
        label = label_for_product(product.title, _tags(product))
        if label:
            return label, "approved product"
    for text in (correction.label, detection.category, detection.label):
        if text and text.lower() in known_labels():
            return text.lower(), "detection"
    if top_title:
        label = label_for_product(top_title)
        if label:
            return label, "best candidate"
    return None, "none"


def _tags(product) -> list[str]:
    tags = (product.attributes or {}).get("tags") or []
    return list(tags) if isinstance(tags, (list, tuple)) else [str(tags)]


def _write_photos_and_annotations(root: Path, rows, approved, top_titles, settings: Settings, report: ExportReport):
    from .segmentation.data import encode_mask

    (root / "scenes" / "images").mkdir(parents=True)
    coco: dict[str, Any] = {"images": [], "annotations": [], "categories": []}
    products: dict[str, dict] = {}
    photos: dict[int, dict] = {}
    broken: set[int] = set()
    for correction, detection, query in rows:
        if query.id in broken:
            continue
        if query.id not in photos:
            try:
                photo = load_image(query.image_path, max_pixels=settings.max_image_pixels,
                                   max_bytes=settings.max_image_bytes)
            except ImageLoadError as exc:
                broken.add(query.id)
                report.skipped.append(f"query {query.id}: {exc}")
                continue
            if photo.sha256 != query.image_sha256:
                broken.add(query.id)
                report.skipped.append(f"query {query.id}: {query.image_path} changed since it was matched")
                continue
            file_name = f"scenes/images/query_{query.id:06d}.png"  # decoded pixels: the masks' own orientation
            (root / file_name).write_bytes(encode_png(photo.rgb))
            photos[query.id] = {"id": int(query.id), "file_name": file_name, "width": photo.width,
                                "height": photo.height, "source_photo": query.image_path,
                                "source_sha256": query.image_sha256}
        mask = decode_png(correction.mask_png) > 0
        image = photos[query.id]
        if mask.shape != (image["height"], image["width"]) or not mask.any():
            report.skipped.append(f"detection {detection.id}: stored mask does not fit its photo")
            continue
        product = approved.get(int(detection.id))
        label, label_source = _label(correction, detection, product, top_titles.get(int(detection.id)))
        coco["annotations"].append({
            "id": len(coco["annotations"]) + 1, "image_id": int(query.id), "iscrowd": 0,
            "bbox": [int(v) for v in mask_bbox(mask).xywh()], "area": int(mask.sum()), "segmentation": encode_mask(mask),
            "sku": product.sku if product is not None else None, "label": label, "label_source": label_source,
            "method": correction.method, "reviewer": correction.reviewer, "mask_version": int(correction.version),
            "reviewed_at": correction.created_at.isoformat(timespec="seconds"), "flags": list(correction.flags or ()),
            "segmenter": correction.segmenter_id, "mask_sha256": correction.mask_sha256,
            "detection_id": int(detection.id), "query_id": int(query.id)})
        if product is not None:
            products[product.sku] = {"sku": product.sku, "name": product.title, "category": product.category,
                                     "tags": _tags(product)}
    used = {a["image_id"] for a in coco["annotations"]}
    coco["images"] = [photos[i] for i in sorted(photos) if i in used]
    labels = sorted({a["label"] for a in coco["annotations"] if a["label"]})
    coco["categories"] = [{"id": i + 1, "name": label} for i, label in enumerate(labels)]
    category_id = {label: i + 1 for i, label in enumerate(labels)}
    for ann in coco["annotations"]:
        ann["category_id"] = category_id.get(ann["label"], 0)
    for image_id in set(photos) - used:
        (root / photos[image_id]["file_name"]).unlink()
    return coco, products


def _assign_splits(coco: dict[str, Any], seed: int, report: ExportReport) -> None:
    from .segmentation.data import split_image_ids

    labels_by_image: dict[int, set[str]] = {img["id"]: set() for img in coco["images"]}
    for ann in coco["annotations"]:
        if ann["label"]:
            labels_by_image[ann["image_id"]].add(ann["label"])
    split = split_image_ids(labels_by_image, seed=seed)
    part_of = {image_id: name for name, ids in split.items() for image_id in ids}
    for img in coco["images"]:
        img["split"] = part_of[img["id"]]
    report.splits = {name: len(ids) for name, ids in split.items()}


def _write_files(root: Path, coco: dict[str, Any], products: dict[str, dict], name: str, version: str, seed: int,
                 report: ExportReport) -> None:
    (root / "scenes" / "instances.json").write_text(json.dumps(coco) + "\n")
    (root / "catalog").mkdir()
    (root / "catalog" / "products.jsonl").write_text("".join(json.dumps(p) + "\n" for p in products.values()))
    splits = {part: [img["file_name"] for img in coco["images"] if img["split"] == part]
              for part in ("train", "val", "test")}
    (root / "splits.json").write_text(json.dumps(splits, indent=2) + "\n")
    report.images, report.annotations = len(coco["images"]), len(coco["annotations"])
    for ann in coco["annotations"]:
        report.methods[ann["method"]] = report.methods.get(ann["method"], 0) + 1
        key = ann["label"] or "(none)"
        report.labels[key] = report.labels.get(key, 0) + 1
    card = {"format": FORMAT, "name": name, "version": version, "created_at": datetime.now(timezone.utc).isoformat(
        timespec="seconds"), "split_seed": seed, **{k: v for k, v in report.to_dict().items() if k not in ("out_dir",)}}
    (root / "dataset.json").write_text(json.dumps(card, indent=2) + "\n")
