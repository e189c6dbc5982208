"""Reading a product catalog: JSONL, CSV or a folder of images.

Each usable row becomes a ``CatalogRow``; each unusable one a ``CatalogError``
with its line number, so one bad row never stops the rest.

Relative image paths are resolved against the catalog file's folder, then its
parent folders (the bench layout keeps ``catalog/products.jsonl`` next to paths
written from the data set root, e.g. ``catalog/images/x.jpg``).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Iterator

from matcher.types import CatalogError, CatalogRow

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
TITLE_KEYS = ("title", "name")
IMAGE_KEYS = ("image", "image_path", "image_url", "url", "path")
PARENT_LEVELS = 2


def read_catalog(path: str | Path) -> tuple[list[CatalogRow], list[CatalogError]]:
    path = Path(path)
    if path.is_dir():
        return _read_folder(path)
    if not path.is_file():
        raise FileNotFoundError(f"catalog not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        records = _jsonl_records(path)
    elif suffix in (".csv", ".tsv"):
        records = _csv_records(path, delimiter="\t" if suffix == ".tsv" else None)
    else:
        raise ValueError(f"unsupported catalog format {suffix!r}: use .jsonl, .csv or a folder of images")
    return _rows_from_records(records, path.parent)


def _jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as exc:  # reported, never stored as replacement characters
                yield line_no, f"not valid UTF-8 (byte {exc.start + 1} of the line)"
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield line_no, f"invalid JSON ({exc.msg} at column {exc.colno})"
                continue
            yield line_no, record if isinstance(record, dict) else "row is not a JSON object"


def _sniff_delimiter(header: str) -> str:
    """``,`` unless the header line is clearly split by ``;`` or tabs (spreadsheet exports in many locales)."""
    counts = {d: header.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=counts.get)
    return best if counts[best] > counts[","] else ","


def _csv_records(path: Path, delimiter: str | None) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """``delimiter=None``: sniffed from the header line. The file is read and decoded once."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"catalog {path} is not UTF-8 (byte {exc.start + 1}): re-export it as UTF-8") from exc
    delimiter = delimiter or _sniff_delimiter(text.partition("\n")[0])
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    for record in reader:
        if None in record:  # more cells than header columns
            yield reader.line_num, f"row has {len(record) - 1 + len(record[None])} cells, header has {len(reader.fieldnames or [])}"
            continue
        yield reader.line_num, {k.strip(): v for k, v in record.items() if k is not None and v not in (None, "")}


def _rows_from_records(records: Iterator[tuple[int, dict[str, Any] | str]], base: Path) -> tuple[list[CatalogRow], list[CatalogError]]:
    rows: list[CatalogRow] = []
    errors: list[CatalogError] = []
    seen: dict[str, int] = {}
    for line_no, record in records:
        if isinstance(record, str):
            errors.append(CatalogError(line_no, None, "catalog", record))
            continue
        row_or_error = _row_from_record(line_no, record, base)
        if isinstance(row_or_error, CatalogError):
            errors.append(row_or_error)
        elif row_or_error.sku in seen:
            errors.append(CatalogError(line_no, row_or_error.sku, "catalog", f"duplicate sku (first on line {seen[row_or_error.sku]})"))
        else:
            seen[row_or_error.sku] = line_no
            rows.append(row_or_error)
    return rows, errors


def _first(record: dict[str, Any], keys: tuple[str, ...]) -> Any:
    return next((record[k] for k in keys if record.get(k) not in (None, "")), None)


def _nul_field(value: Any, name: str = "") -> str | None:
    """The name of the first key or text holding a NUL character (Postgres text cannot store one)."""
    if isinstance(value, str):
        return name if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = (str(key) if "\x00" in str(key) else None) or _nul_field(item, str(key))
            if found is not None:
                return found
    if isinstance(value, list):
        return next((found for item in value if (found := _nul_field(item, name)) is not None), None)
    return None


def _row_from_record(line_no: int, record: dict[str, Any], base: Path) -> CatalogRow | CatalogError:
    sku = record.get("sku")
    if not isinstance(sku, (str, int)) or str(sku).strip() == "":
        return CatalogError(line_no, None, "catalog", "missing sku")
    sku = str(sku).strip()
    if (field := _nul_field(record)) is not None:  # that row's failure, never the run's
        return CatalogError(line_no, None if "\x00" in sku else sku, "catalog",
                            f"field {field.replace(chr(0), '?')!r} contains a NUL character")
    image = _first(record, IMAGE_KEYS)
    if not isinstance(image, str) or not image.strip():
        return CatalogError(line_no, sku, "catalog", f"missing image (one of {', '.join(IMAGE_KEYS)})")
    title = _first(record, TITLE_KEYS)
    category = record.get("category")
    attributes = {k: v for k, v in record.items() if k not in ("sku", "category", *TITLE_KEYS, *IMAGE_KEYS)}
    return CatalogRow(
        sku=sku,
        title=str(title) if title is not None else sku,
        category=str(category) if category not in (None, "") else None,
        image=resolve_image(image.strip(), base),
        attributes=attributes,
        line=line_no,
    )


def resolve_image(image: str, base: Path) -> str:
    """URLs and absolute paths as given; relative paths against ``base`` and its parents."""
    if image.startswith(("http://", "https://")) or Path(image).is_absolute():
        return image
    candidates = [base, *list(base.parents)[:PARENT_LEVELS]]
    for folder in candidates:
        if (folder / image).exists():
            return str(folder / image)
    return str(base / image)  # does not exist: the loader reports it for this row


def _read_folder(folder: Path) -> tuple[list[CatalogRow], list[CatalogError]]:
    rows = []
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    for index, file in enumerate(files, start=1):
        sku = file.relative_to(folder).with_suffix("").as_posix()
        rows.append(CatalogRow(sku=sku, title=file.stem, category=None, image=str(file), attributes={}, line=index))
    return rows, []
