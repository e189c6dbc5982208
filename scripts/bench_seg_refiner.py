"""Would a learned outline refiner lift box mode?  A small full-resolution network (dilated 3x3 convolutions)
takes a box window's photo pixels, the learned model's probabilities and its GrabCut mask, and corrects the
probabilities' logits; it is trained on the model's own outputs for the training photos' instances (ground-truth
boxes, patches centred near the outlines), then scored on the validation and test split at threshold 0.5
against the model's locked settings.

    .venv/bin/python scripts/bench_seg_refiner.py ../shared/bench/furniture-dev [--model MODEL_DIR] [--steps 2000]

A benchmark, not a product stage: nothing is saved.  One run; seeded, but CPU kernels can still differ in the
last digits.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import matcher.segmentation.predict as predict  # noqa: E402
from bench_seg_boxes import masks_of, read_photos  # noqa: E402
from matcher.segmentation.data import PAD_RGB, crop_window, read_bench, split_bench  # noqa: E402
from matcher.segmentation.evaluate import iou_and_dice, scene_truth  # noqa: E402
from matcher.segmentation.model import SegModel, load_model_dir  # noqa: E402

PATCH = 64  # training patches (pixels), centred on a pixel near an outline 80 % of the time
BATCH = 32
CHANNELS = 16
DILATIONS = (1, 2, 4, 8, 1)  # receptive field 35 px
MAX_SIDE = 512  # windows larger than this are refined at this long side
GRABCUT_CHANNEL = 4  # of Window.inputs: RGB, probability, GrabCut mask


@dataclass
class Window:
    """One box prompt's window: network inputs and targets at photo resolution."""

    inputs: np.ndarray  # (H, W, 5): normalised RGB, probability and GrabCut mask in [-1, 1]
    probs: np.ndarray  # (H, W) the model's probabilities after competing boxes
    truth: np.ndarray  # (H, W) bool
    valid: np.ndarray  # (H, W) bool: not an unannotated product
    window: tuple[int, int, int, int]
    box: tuple[float, float, float, float]
    shape: tuple[int, int]
    locked_mask: np.ndarray  # full-size mask at the model's locked settings


class Refiner(nn.Module):
    """Residual logit correction; it starts as the identity (zero output layer)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(5, CHANNELS, 3, padding=1)
        self.body = nn.ModuleList(nn.Conv2d(CHANNELS, CHANNELS, 3, padding=d, dilation=d) for d in DILATIONS)
        self.out = nn.Conv2d(CHANNELS, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x, probs):
        h = F.relu(self.stem(x))
        for conv in self.body:
            h = h + F.relu(conv(h))
        return torch.logit(probs.clamp(1e-3, 1 - 1e-3)) + self.out(h)


def windows_of(model: SegModel, bench, split, part: str) -> list[Window]:
    cfg = model.config
    out = []
    for photo in read_photos(model, bench, split, (part,)):
        shape = photo.image.shape[:2]
        _, valid = scene_truth(bench, photo.image_id, shape)
        # the probabilities the locked masks were cut from (after competing boxes, when the model has them on)
        prompts = predict.contest_overlaps(photo.prompts, photo.boxes, cfg.threshold_box) if cfg.box_contest \
            else photo.prompts
        for (window, probs), box, truth, locked in zip(prompts, photo.boxes, photo.truths, masks_of(photo, model)):
            rgb = predict.to_tensor([crop_window(photo.image, window, PAD_RGB)])[0].permute(1, 2, 0).numpy()
            grabcut = crop_window(locked.astype(np.float32), window, 0.0)
            inputs = np.concatenate([rgb, (probs * 2 - 1)[..., None], (grabcut * 2 - 1)[..., None]], axis=-1)
            out.append(Window(inputs.astype(np.float32), probs.astype(np.float32),
                              crop_window(truth.astype(np.uint8), window, 0) > 0,
                              crop_window(valid.astype(np.uint8), window, 0) > 0, window, box, shape, locked))
    return out


def patch_sampler(windows: list[Window], rng: np.random.Generator):
    """Random (inputs, probs, truth, valid) patches, mostly around the true or the locked outline."""
    def outline(mask: np.ndarray) -> np.ndarray:
        return cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((5, 5), np.uint8))

    near = [np.argwhere(outline(w.truth) | outline(w.inputs[..., GRABCUT_CHANNEL] > 0)) for w in windows]

    def one():
        k = int(rng.integers(len(windows)))
        w, points = windows[k], near[k]
        h, wd = w.probs.shape
        cy, cx = points[rng.integers(len(points))] if len(points) and rng.random() < 0.8 else \
            (rng.integers(h), rng.integers(wd))
        y0 = int(np.clip(cy - PATCH // 2, 0, max(0, h - PATCH)))
        x0 = int(np.clip(cx - PATCH // 2, 0, max(0, wd - PATCH)))
        rows, cols = slice(y0, y0 + PATCH), slice(x0, x0 + PATCH)
        parts = [w.inputs[rows, cols], w.probs[rows, cols], w.truth[rows, cols].astype(np.float32),
                 w.valid[rows, cols].astype(np.float32)]
        ph, pw = parts[1].shape  # windows smaller than a patch: padded, the padding not scored
        parts = [np.pad(a, ((0, PATCH - ph), (0, PATCH - pw)) + ((0, 0),) * (a.ndim - 2)) for a in parts]
        if rng.random() < 0.5:
            parts = [a[:, ::-1] for a in parts]
        return [np.ascontiguousarray(a) for a in parts]

    return one


def train(windows: list[Window], steps: int, seed: int) -> Refiner:
    torch.manual_seed(seed)
    sample = patch_sampler(windows, np.random.default_rng(seed))
    net = Refiner()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    for _ in range(steps):
        batch = [sample() for _ in range(BATCH)]
        x = torch.from_numpy(np.stack([b[0] for b in batch])).permute(0, 3, 1, 2)
        probs, truth, valid = (torch.from_numpy(np.stack([b[i] for b in batch]))[:, None] for i in (1, 2, 3))
        loss = F.binary_cross_entropy_with_logits(net(x, probs), truth, reduction="none")
        loss = (loss * valid).sum() / valid.sum().clamp(min=1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


def refined_probs(net: Refiner, w: Window) -> np.ndarray:
    h, wd = w.probs.shape
    scale = min(1.0, MAX_SIDE / max(h, wd))
    x, probs = w.inputs, w.probs
    if scale < 1.0:
        size = (max(1, round(wd * scale)), max(1, round(h * scale)))
        x = np.stack([cv2.resize(x[..., c], size, interpolation=cv2.INTER_AREA) for c in range(x.shape[-1])], -1)
        probs = cv2.resize(probs, size, interpolation=cv2.INTER_AREA)
    with torch.inference_mode():
        out = torch.sigmoid(net(torch.from_numpy(x).permute(2, 0, 1)[None], torch.from_numpy(probs)[None, None]))
    out = out[0, 0].numpy()
    return cv2.resize(out, (wd, h), interpolation=cv2.INTER_LINEAR) if scale < 1.0 else out


def score(net: Refiner, windows: list[Window]) -> tuple[float, float]:
    """(box IoU at the model's locked settings, box IoU of the refined probabilities at 0.5)."""
    locked, refined = [], []
    for w in windows:
        truth = predict.paste(w.window, w.truth, w.shape)
        mask, _ = predict.box_mask(w.window, refined_probs(net, w), w.box, w.shape, 0.5, False)
        locked.append(iou_and_dice(w.locked_mask, truth)[0])
        refined.append(iou_and_dice(mask, truth)[0])
    return float(np.mean(locked)), float(np.mean(refined))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--model", type=Path, help="Model directory (default: the shipped one).")
    parser.add_argument("--steps", type=int, default=2000, help="Training steps of 32 patches.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = load_model_dir(args.model)
    bench = read_bench(args.dataset)
    split = split_bench(bench, seed=model.config.training_seed)
    started = time.perf_counter()
    net = train(windows_of(model, bench, split, "train"), args.steps, args.seed)
    print(f"# {model.model_id}: refiner of {sum(p.numel() for p in net.parameters())} parameters trained in "
          f"{time.perf_counter() - started:.0f} s ({args.steps} steps, seed {args.seed})\n")
    print("| split | instances | box IoU, locked settings | box IoU, refined |\n|---|---|---|---|")
    for part in ("val", "test"):
        windows = windows_of(model, bench, split, part)
        locked, refined = score(net, windows)
        print(f"| {part} | {len(windows)} | {locked:.4f} | {refined:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
