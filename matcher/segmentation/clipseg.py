"""Free-text prompted segmentation with CLIPSeg (transformers ``CLIPSegForImageSegmentation``).

The learned segmenter knows the labels it was trained on; CLIPSeg takes any phrase ("the green velvet
armchair") once its weights are on disk: the manifest's ``clipseg:CIDAS/clipseg-rd64-refined`` folder in
the weights directory (``matcher models fetch clipseg:CIDAS/clipseg-rd64-refined``), or a folder of one's
own in the transformers ``save_pretrained`` layout (``MATCHER_CLIPSEG_DIR``).  Nothing is downloaded here.

CLIPSeg predicts at its processor's size (352 px for the CIDAS weights); the probabilities are resized to
the photo before the threshold, as for the learned model.  The threshold is the one
``matcher seg calibrate DATASET --backend clipseg`` chose on the validation split (stored beside the
weights in ``matcher_calibration.json``, tied to their sha256), else :data:`DEFAULT_THRESHOLD`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..imageio import as_rgb8
from ..weights import MissingWeightsError, file_sha256, resolve_weights
from .data import Bench, load_rgb, read_bench, split_bench
from .evaluate import DEFAULT_THRESHOLDS, TextTally, label_coverage, scene_truth
from .labels import known_labels, load_prompts, normalise, strip_command_words
from .predict import PromptResult, regions_of, text_mask, to_255

CLIPSEG_WEIGHTS = "clipseg:CIDAS/clipseg-rd64-refined"
# Uncalibrated default: the value usually used with clipseg-rd64-refined's sigmoid output.
DEFAULT_THRESHOLD = 0.4
CALIBRATION_FILE = "matcher_calibration.json"
_REQUIRED = ("config.json", "model.safetensors")


class ClipSegUnavailableError(RuntimeError):
    """CLIPSeg cannot run: transformers missing, or a model folder it cannot load."""


@dataclass
class ClipSegModel:
    net: Any  # CLIPSegForImageSegmentation, in eval mode
    processor: Any  # CLIPSegProcessor: tokenizer + image resizing and normalisation
    path: Path
    model_id: str  # "clipseg:<first 12 of the weights' sha256>"
    sha256: str
    threshold: float
    calibrated: bool  # threshold from matcher_calibration.json (else DEFAULT_THRESHOLD)
    device: str = "cpu"


def locate_clipseg(settings) -> tuple[Path, str]:
    """(model folder, sha256 of its weights): ``MATCHER_CLIPSEG_DIR`` or the manifest folder.
    Raises :class:`MissingWeightsError` saying what is missing and how to get it."""
    if settings.clipseg_dir is not None:
        folder = Path(settings.clipseg_dir).expanduser()
        missing = [name for name in _REQUIRED if not (folder / name).is_file()]
        if missing:
            raise MissingWeightsError(None, folder / _REQUIRED[-1], reason=(
                f"MATCHER_CLIPSEG_DIR={folder} is not a CLIPSeg model folder: {', '.join(missing)} missing (save one "
                f"with transformers' save_pretrained, or unset it to use {CLIPSEG_WEIGHTS} from the weights folder)"))
        return folder, file_sha256(folder / "model.safetensors")
    resolved = resolve_weights(CLIPSEG_WEIGHTS, settings)
    return resolved.path.parent, resolved.sha256 or file_sha256(resolved.path)


def clipseg_available(settings) -> bool:
    """True when a CLIPSeg folder is on disk (it may still fail to load; :func:`load_clipseg` says why)."""
    try:
        locate_clipseg(settings)
    except MissingWeightsError:
        return False
    return True


def read_calibration(folder: Path, sha256: str) -> float | None:
    """The calibrated threshold stored for exactly these weights, else None."""
    path = folder / CALIBRATION_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("weights_sha256") != sha256:
        return None
    threshold = data.get("threshold")
    return float(threshold) if isinstance(threshold, (int, float)) and 0.0 < threshold < 1.0 else None


def load_clipseg(settings=None, device: str = "cpu") -> ClipSegModel:
    """Load CLIPSeg from its folder; :class:`MissingWeightsError` or :class:`ClipSegUnavailableError` otherwise."""
    from ..settings import Settings

    settings = settings or Settings()
    folder, sha256 = locate_clipseg(settings)
    try:
        import transformers  # noqa: F401 - an optional dependency: pip install 'matcher[clipseg]'
    except ImportError:
        raise ClipSegUnavailableError("the clipseg backend needs transformers: pip install 'matcher[clipseg]'") from None
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a command's stderr is for its one-line errors, not loading bars
    try:
        net = CLIPSegForImageSegmentation.from_pretrained(folder, use_safetensors=True).to(device).eval()
        processor = CLIPSegProcessor.from_pretrained(folder)
    except Exception as exc:  # transformers raises OSError, ValueError, safetensors errors... for a broken folder
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ClipSegUnavailableError(f"cannot load CLIPSeg from {folder}: {first_line}") from None
    calibrated = read_calibration(folder, sha256)
    return ClipSegModel(net, processor, folder, f"clipseg:{sha256[:12]}", sha256,
                        DEFAULT_THRESHOLD if calibrated is None else calibrated, calibrated is not None, device)


def prompt_phrase(text: str) -> str:
    """What CLIPSeg is asked for: 'Segment all the green armchairs!' -> 'green armchairs'."""
    phrase = strip_command_words(normalise(text), load_prompts().command_words)
    if not phrase:
        raise ValueError(f"prompt {text!r} names nothing to segment")
    return phrase


def clipseg_probabilities(model: ClipSegModel, image: np.ndarray, phrases: Sequence[str]) -> np.ndarray:
    """(P, H, W) float32 probabilities of each phrase at the photo's size (one batch)."""
    import torch

    image = np.require(as_rgb8(image), requirements=["C", "W"])  # torch.from_numpy wants a writable array
    h, w = image.shape[:2]
    inputs = model.processor(text=list(phrases), images=[image] * len(phrases), padding=True, return_tensors="pt")
    with torch.inference_mode():
        logits = model.net(**inputs.to(model.device)).logits
    probs = torch.sigmoid(logits.float().reshape(len(phrases), 1, *logits.shape[-2:]))
    full = torch.nn.functional.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
    return full[:, 0].cpu().numpy()


def segment_text(image: np.ndarray, text: str, model: ClipSegModel, threshold: float | None = None,
                 postprocess: bool = True) -> PromptResult:
    """Everything the free-text prompt names as one {0, 255} mask, with its connected regions and scores."""
    phrase = prompt_phrase(text)
    thr = model.threshold if threshold is None else float(threshold)
    probs = clipseg_probabilities(model, image, [phrase])[0]
    mask = text_mask(probs, thr, postprocess)
    return PromptResult(phrase, to_255(mask), thr, regions_of(mask, probs))


def label_phrases(labels: Sequence[str] | None = None) -> dict[str, str]:
    """The phrase CLIPSeg is given for each label when scored on a bench: the label's first phrase."""
    book = load_prompts()
    return {label: (book.phrases.get(label) or (label,))[0] for label in (labels or known_labels())}


def tally_clipseg(model: ClipSegModel, bench: Bench, image_ids: Sequence[int], thresholds: Sequence[float],
                  phrases: dict[str, str]) -> TextTally:
    """Every label's phrase on every photo, scored as ``matcher seg eval`` scores the learned model's labels."""
    tally = TextTally()
    labels = list(phrases)
    for image_id in image_ids:
        scene = bench.scenes[image_id]
        image = load_rgb(scene.path)
        masks, valid = scene_truth(bench, image_id, image.shape[:2])
        probs = clipseg_probabilities(model, image, [phrases[label] for label in labels])
        for label, p in zip(labels, probs):
            parts = [m for inst, m in zip(scene.instances, masks) if inst.label == label]
            gt = np.logical_or.reduce(parts) if parts else None
            for t in thresholds:
                tally.add(t, label, text_mask(p, t, True) & valid, gt)
    return tally


def evaluate_clipseg(model: ClipSegModel, dataset: Path | str, *, image_ids: Sequence[int] | None = None,
                     threshold: float | None = None, json_out: Path | None = None) -> dict[str, Any]:
    """``matcher seg eval --backend clipseg``: text prompts per label (zero-shot); no box mode."""
    bench = read_bench(dataset)
    ids = sorted(bench.scenes) if image_ids is None else list(image_ids)
    thr = model.threshold if threshold is None else threshold
    phrases = label_phrases()
    started = time.perf_counter()
    summary = tally_clipseg(model, bench, ids, (thr,), phrases).summary(thr)
    report = {"miou": summary["miou"], "dice": summary["dice"], "box_iou": None, "per_label": summary["per_label"],
              "text": summary, "thresholds": {"text": thr}, "calibrated": model.calibrated and threshold is None,
              "phrases": phrases, "images": len(ids), "seconds": round(time.perf_counter() - started, 2)}
    report.update(label_coverage(bench, ids, list(phrases)))
    report.update({"model": model.model_id, "model_dir": str(model.path), "dataset": str(Path(dataset))})
    if json_out is not None:
        Path(json_out).write_text(json.dumps(report, indent=2))
    return report


def calibrate_clipseg(model: ClipSegModel, dataset: Path | str, *, seed: int = 42,
                      thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> dict[str, Any]:
    """Choose the threshold with the best validation mIoU (the split ``matcher seg train`` uses) and store it
    beside the weights; the test split is not touched."""
    bench = read_bench(dataset)
    val = split_bench(bench, seed)["val"]
    tally = tally_clipseg(model, bench, val, thresholds, label_phrases())
    sweep = {t: tally.summary(t)["miou"] or 0.0 for t in thresholds}
    best = max(sweep, key=lambda t: (sweep[t], -abs(t - DEFAULT_THRESHOLD)))
    record = {"threshold": best, "weights_sha256": model.sha256, "dataset": str(Path(dataset)), "split_seed": seed,
              "val_images": len(val), "val_miou_by_threshold": {str(t): round(v, 4) for t, v in sweep.items()}}
    path = model.path / CALIBRATION_FILE
    try:
        path.write_text(json.dumps(record, indent=2))
    except OSError as exc:
        raise ValueError(f"cannot write the calibration to {path}: {exc}") from None
    model.threshold, model.calibrated = best, True
    return record
