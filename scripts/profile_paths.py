"""Where the time goes: cProfile of the query path or of catalog preparation, top entries by own time.

    MATCHER_DATA_DIR=DIR .venv/bin/python scripts/profile_paths.py query ../shared/bench/furniture-dev --n 30
    .venv/bin/python scripts/profile_paths.py index ../shared/bench/furniture-dev --n 40

``query``: ``QueryEngine.match`` with the annotated boxes of the first N scenes the shipped learned segmenter
never saw (DIR holds the indexed catalog, as for scripts/bench_query.py), nothing stored.  ``index``: the
worker side of indexing (load, segment, matte, palette) for the first N catalog rows, in this process.
Settings come from the environment as usual, so the path before a change is one variable away (e.g.
MATCHER_QUERY_SEGMENTER=classical MATCHER_QUERY_WORKERS=1 MATCHER_FAST_MATTING=false).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def profile_query(dataset: Path, n: int) -> tuple[cProfile.Profile, float]:
    from bench_query import seg_training_scenes

    from matcher.query import QueryEngine
    from matcher.settings import Settings
    from matcher.types import Box

    coco = json.loads((dataset / "scenes" / "instances.json").read_text())
    boxes: dict[int, list[Box]] = {}
    for ann in coco["annotations"]:
        boxes.setdefault(ann["image_id"], []).append(Box.from_xywh(*ann["bbox"]))
    skip = seg_training_scenes(dataset)
    images = [i for i in coco["images"] if i["id"] in boxes and i["id"] not in skip][:n]
    engine = QueryEngine(Settings())
    engine.match(dataset / images[0]["file_name"], boxes=boxes[images[0]["id"]], store=False)  # warm-up
    profiler, started = cProfile.Profile(), time.perf_counter()
    with profiler:
        for image in images:
            engine.match(dataset / image["file_name"], boxes=boxes[image["id"]], store=False)
    return profiler, (time.perf_counter() - started) / len(images)


def profile_index(dataset: Path, n: int) -> tuple[cProfile.Profile, float]:
    from matcher import registry
    from matcher.indexing.catalog import read_catalog
    from matcher.indexing.item import WorkItem, prepare_item, set_worker
    from matcher.settings import Settings

    settings = Settings()
    set_worker(settings, registry.create_segmenter(settings))
    rows = read_catalog(dataset / "catalog" / "products.jsonl")[0][: n + 1]
    prepare_item(WorkItem(rows[0], "new"))  # warm-up: imports, numba compilation
    profiler, started = cProfile.Profile(), time.perf_counter()
    with profiler:
        for row in rows[1:]:
            prepare_item(WorkItem(row, "new"))
    return profiler, (time.perf_counter() - started) / max(1, len(rows) - 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", choices=("query", "index"))
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    profiler, per_item = (profile_query if args.path == "query" else profile_index)(args.dataset, args.n)
    print(f"{args.path}: {per_item:.3f} s per {'photo' if args.path == 'query' else 'catalog row'} under the profiler\n")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
