"""Indexing throughput of ``matcher index`` (products/s), this checkout against an older commit, in one run.

    .venv/bin/python scripts/bench_index.py ../shared/bench/furniture-dev/catalog/products.jsonl --workers 1 2
    .venv/bin/python scripts/bench_index.py CATALOG --workers 2 --baseline eb48bf8 --repeats 2

Every measurement is a fresh process on a brand-new embedded database that is started before the clock
runs (a nightly reindex finds its database up), so the figure is the index job alone: reading the
catalog, the worker pool's start, segmenting, matting, embedding and writing every product.  A second
run on the same data then measures the "nothing changed" path.  Besides products/s each row gives the
CPU seconds per product of this process (embedding, writing) and of its pool workers (segmenting,
matting, encoding).

``--baseline REV`` measures the code of commit REV too (a temporary git worktree put first on
PYTHONPATH; same virtual environment, same catalog), alternating with this checkout's code so that both
see the machine in the same state.  ``eb48bf8`` is the indexing path before issue 15.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(catalog: Path, workers: int, backend: str, limit: int | None) -> dict:
    """Index ``catalog`` into a new database with the ``matcher`` importable here; the figures as a dict."""
    import resource

    from matcher import service
    from matcher.db.engine import get_engine, stop_embedded
    from matcher.settings import Settings

    def cpu() -> tuple[float, float]:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime

    data_dir = Path(tempfile.mkdtemp(prefix="mbench", dir="/tmp"))
    settings = Settings(data_dir=data_dir, backend=backend, database_url=None)
    try:
        get_engine(settings)  # start the embedded database before the clock runs
        before = cpu()
        first = service.index_catalog(catalog, settings, limit=limit, workers=workers, progress=False)
        after = cpu()  # the pool's workers have exited: their CPU time is in RUSAGE_CHILDREN
        again = service.index_catalog(catalog, settings, limit=limit, workers=workers, progress=False)
    finally:
        stop_embedded(settings)
        shutil.rmtree(data_dir, ignore_errors=True)
    processed = max(1, first.processed)
    return {
        "workers": workers, "backend": backend, "items": first.processed, "seconds": round(first.seconds, 2),
        "products_per_s": round(first.processed / first.seconds, 2),
        "cpu_s_per_product_main": round((after[0] - before[0]) / processed, 3),
        "cpu_s_per_product_workers": round((after[1] - before[1]) / processed, 3),
        "rerun_seconds": round(again.seconds, 2), "rerun_processed": again.processed, "counts": first.counts,
    }


def measure_in_subprocess(tree: Path, args: argparse.Namespace, workers: int) -> dict:
    """:func:`measure` in a new interpreter that imports ``matcher`` from ``tree``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    command = [sys.executable, str(Path(__file__).resolve()), str(args.catalog), "--measure", "--workers", str(workers),
               "--backend", args.backend] + (["--limit", str(args.limit)] if args.limit else [])
    done = subprocess.run(command, env=env, cwd=tree, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"measuring {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def baseline_tree(rev: str) -> Path:
    tree = Path(tempfile.mkdtemp(prefix="bench-baseline-", dir="/tmp")) / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(tree), rev], check=True)
    return tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("catalog", type=Path)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--backend", default="effnet")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--baseline", metavar="REV", help="Also measure the code of this commit (see above).")
    parser.add_argument("--repeats", type=int, default=1, help="Measurements per configuration; the median is reported.")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # one measurement, JSON on stdout
    args = parser.parse_args()
    args.catalog = args.catalog.resolve()
    if args.measure:
        print(json.dumps(measure(args.catalog, args.workers[0], args.backend, args.limit)))
        return

    trees = {"this checkout": ROOT}
    if args.baseline:
        trees[f"baseline {args.baseline}"] = baseline_tree(args.baseline)
    try:
        rows = []
        for workers in args.workers:
            runs: dict[str, list[dict]] = {name: [] for name in trees}
            for _ in range(args.repeats):
                for name, tree in trees.items():  # alternating: both see the machine in the same state
                    runs[name].append(measure_in_subprocess(tree, args, workers))
            for name, measured in runs.items():
                row = dict(sorted(measured, key=lambda m: m["products_per_s"])[len(measured) // 2])  # the median run
                row.update(code=name, products_per_s_runs=[m["products_per_s"] for m in measured])
                rows.append(row)
                print(f"workers={workers} {name}: {row['items']} items, {row['products_per_s']} products/s "
                      f"(runs {row['products_per_s_runs']}); CPU s per product: main {row['cpu_s_per_product_main']}, "
                      f"workers {row['cpu_s_per_product_workers']}; nothing-changed re-run {row['rerun_seconds']} s",
                      flush=True)
    finally:
        for name, tree in trees.items():
            if tree != ROOT:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
                shutil.rmtree(tree.parent, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
