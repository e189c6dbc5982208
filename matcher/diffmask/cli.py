"""``matcher diffmask BEFORE AFTER --out MASK.png``: the change mask as a command.

Registered in ``matcher/cli.py`` with ``app.command("diffmask")(diffmask_command)``.
Every foreseeable failure (unreadable or corrupt image, bad option value, face
protection unavailable, unwritable output) ends with a one-line ``error: ...``
on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from PIL import Image

from ..imageio import ImageLoadError, load_image
from .core import DEFAULT_MIN_REGION, apply_change, compute_change_mask
from .protect import FaceDetectorUnavailable, parse_box

__all__ = ["diffmask_command", "parse_fraction", "parse_auto_number"]

_LOSSY = {".jpg", ".jpeg", ".webp"}


class _UsageError(ValueError):
    pass


def parse_fraction(text: str) -> float:
    """``"0.5%"`` -> 0.005, ``"0.005"`` -> 0.005."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100.0 if raw.endswith("%") else float(raw)
    except ValueError as exc:
        raise _UsageError(f"--min-region {text!r} is not a fraction like 0.5% or 0.005") from exc
    if not 0.0 <= value < 1.0:
        raise _UsageError(f"--min-region {text!r} must be between 0% and 100%")
    return value


def parse_auto_number(option: str, text: str, *, integer: bool = False) -> float | int | None:
    """``"auto"`` -> None, otherwise a non-negative number."""
    raw = text.strip().lower()
    if raw == "auto":
        return None
    try:
        value = float(raw[:-2] if integer and raw.endswith("px") else raw)
    except ValueError as exc:
        raise _UsageError(f"{option} {text!r} must be 'auto' or a number") from exc
    if not np.isfinite(value) or value < 0:
        raise _UsageError(f"{option} {text!r} must be a non-negative number")
    return int(round(value)) if integer else value


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=2)


def diffmask_command(
    before: Annotated[Path, typer.Argument(help="The original image (its pixels are kept outside the change).")],
    after: Annotated[Path, typer.Argument(help="The edited image; resized to BEFORE's size if it differs.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the mask (8-bit PNG: the soft alpha, 0 = keep original).")],
    composite: Annotated[Optional[Path], typer.Option("--composite", help="Also write original*(1-m) + edited*m here (PNG keeps it bit-exact).")] = None,
    protect: Annotated[Optional[str], typer.Option("--protect", help="'faces': never take face areas from AFTER (needs OpenCV's Haar cascade).")] = None,
    keep_out: Annotated[Optional[list[str]], typer.Option("--keep-out", help="x,y,w,h box in BEFORE pixels kept from the original; repeatable.")] = None,
    min_region: Annotated[str, typer.Option("--min-region", help="Drop changed regions smaller than this share of the frame (0.5% or 0.005).")] = f"{DEFAULT_MIN_REGION:.1%}",
    feather: Annotated[str, typer.Option("--feather", help="'auto' or a feather radius in pixels (0 for a hard mask).")] = "auto",
    threshold: Annotated[str, typer.Option("--threshold", help="'auto' or a ΔE94 threshold value.")] = "auto",
    preview: Annotated[bool, typer.Option("--preview", help="Fast path: masks and composite at long side 1024.")] = False,
    hard: Annotated[bool, typer.Option("--hard", help="Write the hard 0/255 change mask instead of the soft alpha.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")] = False,
) -> None:
    """Find what really changed between BEFORE and AFTER; keep everything else pixel-exact."""
    try:
        fraction = parse_fraction(min_region)
        feather_px = parse_auto_number("--feather", feather, integer=True)
        thr = parse_auto_number("--threshold", threshold)
        if thr is not None and thr <= 0:
            raise _UsageError("--threshold must be positive")
        boxes = [parse_box(text) for text in (keep_out or [])]
        protect_faces = False
        if protect is not None:
            wanted = {p.strip().lower() for p in protect.split(",") if p.strip()}
            unknown = wanted - {"faces", "none"}
            if unknown:
                raise _UsageError(f"--protect {protect!r}: only 'faces' is supported")
            protect_faces = "faces" in wanted
        if out.suffix.lower() in _LOSSY:
            raise _UsageError(f"--out {out}: a mask must be written losslessly (use .png)")
        before_img = load_image(before)
        after_img = load_image(after)
        change = compute_change_mask(before_img.rgb, after_img.rgb, threshold=thr, min_region=fraction,
                                     feather=feather_px, keep_out=boxes, protect_faces=protect_faces, preview=preview)
    except (_UsageError, ImageLoadError, FaceDetectorUnavailable, ValueError) as exc:
        raise _fail(str(exc)) from None

    mask_pixels = (change.mask.astype(np.uint8) * 255) if hard else change.alpha
    try:
        Image.fromarray(mask_pixels).save(out)
        if composite is not None:
            blended = apply_change(before_img.rgb, after_img.rgb, change)
            Image.fromarray(blended).save(composite, **({"quality": 95} if composite.suffix.lower() in _LOSSY else {}))
    except (OSError, ValueError, KeyError) as exc:
        raise _fail(f"cannot write output: {exc}") from None

    summary = {"before": str(before), "after": str(after), "mask": str(out),
               "mask_kind": "hard" if hard else "soft", "composite": str(composite) if composite else None,
               **change.summary()}
    if json_output:
        typer.echo(json.dumps(summary, indent=2))
    else:
        typer.echo(f"{out}: {change.changed_fraction:.2%} changed in {len(change.regions)} region(s), "
                   f"threshold {change.threshold:.2f} ({change.threshold_method}), feather {change.feather_radius}px, "
                   f"{change.timings.get('total', 0.0):.2f}s")
    if composite is not None and composite.suffix.lower() in _LOSSY:
        typer.echo(f"warning: {composite} is lossy; the unchanged pixels are only bit-exact in a PNG", err=True)
