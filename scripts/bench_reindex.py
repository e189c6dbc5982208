"""Nightly reindex on the dev catalog: full first run, a no-change run, then a run after
re-encoding 10% of the images (same pictures, new bytes) and really changing 5% (another
product's photo).  All runs in one invocation on a fresh embedded database, so the
ratios compare like with like.

    .venv/bin/python scripts/bench_reindex.py ../shared/bench/furniture-dev --workers 2
"""

from __future__ import annotations

import argparse
import io
import json
import random
import shutil
import tempfile
from pathlib import Path

from PIL import Image

from matcher import service
from matcher.db.engine import stop_embedded
from matcher.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--limit", type=int, help="Only the first N products (smoke runs).")
    parser.add_argument("--reencode", type=float, default=0.10)
    parser.add_argument("--change", type=float, default=0.05)
    parser.add_argument("--quality", type=int, default=75, help="JPEG quality of the re-encoded copies.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mrx", dir="/tmp"))
    catalog, rows = _copy_catalog(args.dataset, work / "catalog", args.limit)
    settings = Settings(data_dir=work / "data", database_url=None, backend="classical")
    results = {}
    try:
        results["first"] = _run(catalog, settings, args.workers)
        results["no_change"] = _run(catalog, settings, args.workers)
        reencoded, changed = _mutate(rows, work / "catalog", args)
        results["after_edits"] = _run(catalog, settings, args.workers)
    finally:
        stop_embedded(settings)
        shutil.rmtree(work, ignore_errors=True)

    first, idle, edited = results["first"], results["no_change"], results["after_edits"]
    summary = {
        "products": len(rows), "workers": args.workers, "runs": results,
        "no_change_time_ratio": round(idle["seconds"] / first["seconds"], 4),
        "reencoded": len(reencoded), "really_changed": len(changed),
        "after_edits_reprocessed": edited["counts"]["changed"],
        "after_edits_perceptually_equal": edited["counts"]["perceptually_equal"],
        "reprocessed_exactly_the_changed": edited["changed_skus"] == sorted(changed),
    }
    print(f"first run: {first['counts']['new']} new in {first['seconds']:.1f} s "
          f"({first['counts']['new'] / first['seconds']:.2f} products/s, {args.workers} workers)")
    print(f"no-change run: {idle['seconds']:.2f} s = {summary['no_change_time_ratio']:.1%} of the first; "
          f"segmented/embedded {idle['processed']}")
    print(f"after re-encoding {len(reencoded)} ({args.reencode:.0%}) at q{args.quality} and changing {len(changed)} ({args.change:.0%}): "
          f"re-processed {edited['counts']['changed']}, perceptually equal {edited['counts']['perceptually_equal']}, "
          f"unchanged {edited['counts']['unchanged']}, {edited['seconds']:.1f} s; "
          f"exactly the changed ones: {summary['reprocessed_exactly_the_changed']}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


def _copy_catalog(dataset: Path, folder: Path, limit: int | None) -> tuple[Path, list[dict]]:
    products = [json.loads(line) for line in (dataset / "catalog" / "products.jsonl").open() if line.strip()][:limit]
    (folder / "images").mkdir(parents=True)
    rows = []
    for p in products:
        name = Path(p["image"]).name
        shutil.copy(dataset / p["image"], folder / "images" / name)
        rows.append({"sku": p["sku"], "title": p["name"], "category": p["category"], "image": f"images/{name}"})
    catalog = folder / "products.jsonl"
    catalog.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return catalog, rows


def _mutate(rows: list[dict], folder: Path, args) -> tuple[list[str], list[str]]:
    rng = random.Random(args.seed)
    picked = rng.sample(range(len(rows)), round(len(rows) * (args.reencode + args.change)))
    n_reencode = round(len(rows) * args.reencode)
    reencode, change = picked[:n_reencode], picked[n_reencode:]
    for i in reencode:
        path = folder / rows[i]["image"]
        image = Image.open(path).convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=args.quality)
        path.write_bytes(buffer.getvalue())
    for i in change:  # another product's photo: a real change
        donor = rows[(i + len(rows) // 2) % len(rows)]
        shutil.copy(folder / donor["image"], folder / f"{rows[i]['image']}.new")
        (folder / f"{rows[i]['image']}.new").replace(folder / rows[i]["image"])
    return [rows[i]["sku"] for i in reencode], [rows[i]["sku"] for i in change]


def _run(catalog: Path, settings: Settings, workers: int) -> dict:
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from matcher.db.engine import get_engine
    from matcher.db.models import IndexEvent

    report = service.reindex_catalog(catalog, settings, workers=workers, progress=False)
    with Session(get_engine(settings)) as session:
        changed = sorted(session.scalars(select(IndexEvent.sku).where(IndexEvent.run_id == report.run_id,
                                                                      IndexEvent.kind == "changed")))
    return {"seconds": round(report.seconds, 3), "counts": report.counts, "processed": report.processed,
            "changed_skus": changed}


if __name__ == "__main__":
    main()
