"""Indexing throughput of ``matcher index`` (products/s), on a fresh embedded database.

    .venv/bin/python scripts/bench_index.py ../shared/bench/furniture-dev/catalog/products.jsonl --workers 1 2
    .venv/bin/python scripts/bench_index.py CATALOG --workers 2 --limit 60 --compare-legacy   # old matting vs new

Each worker count gets a brand-new database; a second run on the same data
measures the "nothing changed" path.  Figures are from one invocation, so the
ratios between them are comparable.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from matcher import service
from matcher.db.engine import stop_embedded
from matcher.settings import Settings


# The indexing path before issue 15's matting work (pool workers now keep one native thread each in both).
LEGACY = {"fast_matting": False}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("catalog", type=Path)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--backend", default="classical")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--compare-legacy", action="store_true",
                        help="Also run each worker count the way indexing ran before issue 15 (LEGACY).")
    args = parser.parse_args()

    results = []
    configs = [("new", {})] + ([("legacy", LEGACY)] if args.compare_legacy else [])
    for workers, (config, overrides) in [(w, c) for w in args.workers for c in configs]:
        data_dir = Path(tempfile.mkdtemp(prefix="mbench", dir="/tmp"))
        settings = Settings(data_dir=data_dir, backend=args.backend, database_url=None, **overrides)
        try:
            first = service.index_catalog(args.catalog, settings, limit=args.limit, workers=workers, progress=False)
            again = service.index_catalog(args.catalog, settings, limit=args.limit, workers=workers, progress=False)
        finally:
            stop_embedded(settings)
            shutil.rmtree(data_dir, ignore_errors=True)
        processed = first.processed
        row = {
            "workers": workers, "config": config, "backend": args.backend, "items": processed,
            "seconds": round(first.seconds, 2), "products_per_s": round(processed / first.seconds, 2),
            "rerun_seconds": round(again.seconds, 2), "rerun_processed": again.processed,
            "rerun_fraction_of_first": round(again.seconds / first.seconds, 4), "counts": first.counts,
        }
        results.append(row)
        print(f"workers={workers} config={config}: {processed} items in {first.seconds:.1f} s = {row['products_per_s']} products/s; "
              f"re-run {again.seconds:.2f} s ({row['rerun_fraction_of_first']:.1%} of the first), processed {again.processed}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
