"""Query-path speed, old settings against new in one run: per-stage and total p50/p95 per photo over bench
scenes with their annotated boxes, with the quality figures beside them (query-cutout mask IoU and boundary F1 against the
true instance masks, recall@1/5/10 of the right product).  `--configs classical new` compares the room
segmenters alone (classical against the shipped learned one) on the same catalog, photos and boxes;
`uncontested` is the learned one with a photo's overlapping boxes not competing for pixels.

    MATCHER_DATA_DIR=DIR .venv/bin/python scripts/bench_query.py ../shared/bench/furniture-dev --scenes 90 --exclude-seg-train

DIR must hold the data set's catalog indexed with the default backends (`matcher index DATASET/catalog/products.jsonl`,
or the index `matcher eval DATASET` leaves behind). Each photo is matched by both configurations, alternating
which goes first, nothing stored; the detector is not part of it (boxes are given), as in the issue's goal.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from matcher.evaluation.masks import boundary_f1  # noqa: E402
from matcher.query import QueryEngine  # noqa: E402
from matcher.segmentation.data import decode_mask  # noqa: E402
from matcher.settings import Settings  # noqa: E402
from matcher.types import Box  # noqa: E402

CONFIGS = {  # the starting point, then each change on top, ending with today's defaults
    "old": {"query_matting_max_side": 1024, "fast_matting": False, "query_segmenter": "classical", "query_workers": 1},
    "matting": {"query_segmenter": "classical", "query_workers": 1},  # fast matting at 512 px
    "new": {},  # and the learned segmenter (GrabCut-refined) in rooms, objects cut out on 2 threads
    "classical": {"query_segmenter": "classical"},  # today's defaults with the classical segmenter in rooms
    "uncontested": {"query_segmenter": "learned"},  # the learned one with a photo's boxes not competing for pixels
}
STAGES = ("trace", "polish", "embed", "search", "rerank")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--scenes", type=int, default=80)
    parser.add_argument("--json", type=Path, help="Write the figures here too.")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS),
                        help="Only these configurations (e.g. 'new' to compare two catalog indexes).")
    parser.add_argument("--exclude-seg-train", action="store_true",
                        help="Skip the scenes the shipped learned segmenter was trained on (when DATASET is its "
                             "training set: the quality figures then judge it on photos it never saw).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-query-") as scratch:  # removed however the run ends
        return run(args, Path(scratch))


def run(args: argparse.Namespace, scratch: Path) -> int:
    coco = json.loads((args.dataset / "scenes" / "instances.json").read_text())
    anns: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        anns.setdefault(ann["image_id"], []).append(ann)
    configs = {name: CONFIGS[name] for name in args.configs}
    if "uncontested" in configs:
        configs["uncontested"] = {**configs["uncontested"], "seg_model_dir": uncontested_model_dir(scratch)}
    engines = {name: QueryEngine(Settings(**overrides)) for name, overrides in configs.items()}
    times = {name: {stage: [] for stage in STAGES + ("total",)} for name in configs}
    quality = {name: {"iou": [], "bf1": [], "rank": []} for name in configs}
    skip = seg_training_scenes(args.dataset) if args.exclude_seg_train else set()
    images = [img for img in coco["images"] if anns.get(img["id"]) and img["id"] not in skip][: args.scenes]
    for index, image in enumerate(images):
        objects = anns[image["id"]]
        shift = index % len(configs)  # each configuration goes first as often as the others
        order = list(configs)[shift:] + list(configs)[:shift]
        for name in order:
            result = engines[name].match(args.dataset / image["file_name"], store=False,
                                         boxes=[Box.from_xywh(*a["bbox"]) for a in objects])
            for stage in STAGES:
                times[name][stage].append(result.timings.get(stage, 0.0))
            times[name]["total"].append(sum(result.timings.get(stage, 0.0) for stage in STAGES))
            for ann, obj in zip(objects, result.objects):
                truth = decode_mask(ann["segmentation"], image["height"], image["width"])
                alpha = obj.full_alpha(image["height"], image["width"])
                mask = alpha > 0.5 if alpha is not None else np.zeros_like(truth)
                quality[name]["iou"].append(float((mask & truth).sum() / max((mask | truth).sum(), 1)))
                quality[name]["bf1"].append(float(boundary_f1(mask, truth)))
                skus = [c.sku for c in obj.candidates]
                quality[name]["rank"].append(skus.index(ann["sku"]) + 1 if ann.get("sku") in skus else None)
    report = summarise(times, quality, len(images))
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def uncontested_model_dir(scratch: Path) -> Path:
    """The shipped learned model with ``box_contest`` off: its weights linked into a folder under ``scratch``."""
    from matcher.segmentation.model import CONFIG_FILE, DEFAULT_MODEL_DIR, WEIGHTS_FILE

    folder = scratch / "uncontested-model"
    folder.mkdir()
    config = json.loads((DEFAULT_MODEL_DIR / CONFIG_FILE).read_text())
    (folder / CONFIG_FILE).write_text(json.dumps({**config, "box_contest": False}, indent=2))
    (folder / WEIGHTS_FILE).symlink_to(DEFAULT_MODEL_DIR / WEIGHTS_FILE)
    return folder


def seg_training_scenes(dataset: Path) -> set[int]:
    """Image ids of the training split of the shipped learned segmenter (same split function and seed)."""
    from matcher.segmentation.data import read_bench, split_bench
    from matcher.segmentation.model import load_model_dir

    return set(split_bench(read_bench(dataset), seed=load_model_dir(None).config.training_seed)["train"])


def _recall(ranks: list, k: int) -> float:
    return sum(1 for r in ranks if r is not None and r <= k) / max(len(ranks), 1)


def summarise(times: dict, quality: dict, photos: int) -> dict:
    out = {"photos": photos, "stages": {}, "quality": {}}
    for name in times:
        out["stages"][name] = {stage: {"p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95))}
                               for stage, v in times[name].items()}
        q = quality[name]
        out["quality"][name] = {"objects": len(q["iou"]), "mean_mask_iou": float(np.mean(q["iou"])),
                                "mean_boundary_f1": float(np.mean(q["bf1"])),
                                **{f"recall@{k}": _recall(q["rank"], k) for k in (1, 5, 10)}}
    return out


def print_report(report: dict) -> None:
    stages = report["stages"]
    names = list(stages)
    ratios = "old" in stages and "new" in stages
    print(f"{report['photos']} photos, annotated boxes, seconds per photo\n")
    print("| stage | " + " | ".join(f"{n} p50 | {n} p95" for n in names) + (" | p50 old/new | p95 old/new |" if ratios else " |"))
    print("|---|" + "---|---|" * len(names) + ("---|---|" if ratios else ""))
    for stage in stages[names[0]]:
        cells = " | ".join(f"{stages[c][stage]['p50']:.3f} | {stages[c][stage]['p95']:.3f}" for c in names)
        if ratios:
            o, n = stages["old"][stage], stages["new"][stage]
            cells += f" | {o['p50'] / max(n['p50'], 1e-9):.2f} | {o['p95'] / max(n['p95'], 1e-9):.2f}"
        print(f"| {stage} | {cells} |")
    print("\n| config | objects | mean mask IoU | boundary F1 | recall@1 | recall@5 | recall@10 |")
    print("|---|---|---|---|---|---|---|")
    for name, q in report["quality"].items():
        print(f"| {name} | {q['objects']} | {q['mean_mask_iou']:.4f} | {q['mean_boundary_f1']:.4f} | "
              f"{q['recall@1']:.4f} | {q['recall@5']:.4f} | {q['recall@10']:.4f} |")


if __name__ == "__main__":
    raise SystemExit(main())
