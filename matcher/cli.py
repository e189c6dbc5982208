"""The ``matcher`` command: a thin Typer layer over ``matcher.service``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import service
from .settings import Backend, Settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Visual search and product matching for home furnishing.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema and the embedded server.")
app.add_typer(db_app, name="db")
console = Console()


def _settings(**overrides) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug output.")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the schema (Alembic) and the pgvector extension."""
    info = service.db_upgrade(_settings())
    console.print(f"schema at revision {info['revision']}, pgvector {info['pgvector']} ({info['url']})")


@db_app.command("status")
def db_status() -> None:
    """Schema revision and row counts."""
    info = service.db_status(_settings())
    console.print(f"revision {info['revision']}, pgvector {info.get('pgvector', '?')}")
    for table, count in info["tables"].items():
        console.print(f"  {table:18s} {count}")


@db_app.command("stop")
def db_stop() -> None:
    """Stop the embedded Postgres server (it is otherwise left running for speed)."""
    console.print("stopped" if service.db_stop(_settings()) else "embedded server was not running")


@app.command("index")
def index(
    catalog: Annotated[Path, typer.Argument(help="products.jsonl / .csv, or a folder of images.")],
    backend: Annotated[Optional[Backend], typer.Option(help="classical (weight-free) or deep (SAM + open_clip).")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Index only the first N rows.")] = None,
    workers: Annotated[int, typer.Option(help="Processes for segmentation and matting.")] = 1,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Segment, matte, embed and store every product of a catalog; unchanged items are skipped."""
    settings = _settings(backend=backend)
    try:
        report = service.index_catalog(catalog, settings, limit=limit, workers=workers, progress=progress)
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    _print_index_report(report)


def _print_index_report(report) -> None:
    table = Table(title=f"index run {report.run_id}: {report.catalog}", show_header=False)
    table.add_row("backend", f"{report.backend} (space {report.space})")
    for key, value in report.counts.items():
        table.add_row(key, str(value))
    table.add_row("seconds", f"{report.seconds:.1f}")
    console.print(table)
    for failure in report.failures[:50]:
        console.print(f"[yellow]skipped[/yellow] line {failure.line} {failure.sku or '?'} [{failure.stage}] {failure.reason}")
    if len(report.failures) > 50:
        console.print(f"... and {len(report.failures) - 50} more (see index_failures for run {report.run_id})")


@app.command("runs")
def runs(limit: Annotated[int, typer.Option(help="How many runs to list.")] = 20) -> None:
    """Recent index runs with their counts."""
    table = Table("id", "kind", "status", "backend", "started", "seconds", "counts")
    for r in service.recent_runs(_settings(), limit):
        counts = ", ".join(f"{k}={v}" for k, v in r["counts"].items() if v)
        table.add_row(str(r["id"]), r["kind"], r["status"], r["backend"], r["started_at"],
                      f"{r['duration_s']:.1f}" if r["duration_s"] is not None else "-", counts)
    console.print(table)


@app.command("eval-masks")
def eval_masks(
    dataset: Annotated[Path, typer.Argument(help="Bench-format data set root (catalog/products.jsonl + alpha mattes).")],
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the full report here.")] = None,
    segmenter: Annotated[Optional[str], typer.Option(help="Segmenter backend (default: from --backend).")] = None,
    backend: Annotated[Optional[Backend], typer.Option()] = None,
    limit: Annotated[Optional[int], typer.Option()] = None,
) -> None:
    """Compare predicted catalog cutouts with ground-truth mattes: IoU, boundary F1, SAD, leakage."""
    report = service.eval_masks(dataset, _settings(backend=backend), segmenter_name=segmenter, limit=limit, json_out=json_out)
    overall = report["overall"]
    table = Table("scope", "n", "IoU", "boundary F1", "SAD matte", "SAD binary", "leakage", "mask_fail")
    for name, row in [("overall", overall), *sorted(report.get("per_category", {}).items())]:
        table.add_row(name, str(row["n"]), f"{row['mean_iou']:.4f}", f"{row['boundary_f1']:.4f}",
                      f"{row['alpha_sad']:.2f}", f"{row['binary_sad']:.2f}", f"{row['leakage_rate']:.2%}",
                      str(row["mask_fail"]))
    console.print(table)


def main() -> None:  # pragma: no cover - entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
