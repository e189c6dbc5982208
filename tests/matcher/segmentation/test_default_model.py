"""The shipped default model (matcher/segmentation/default_model) on real dev-bench scenes."""

from __future__ import annotations

import json

import numpy as np
from pycocotools import mask as mask_utils

from matcher.imageio import load_image
from matcher.segmentation.model import DEFAULT_MODEL_DIR, find_model_dir, load_model_dir
from matcher.segmentation.predict import segment_boxes

SCENES = 8  # the first scenes of the dev bench: about 15 objects


def _objects(bench_dir):
    coco = json.loads((bench_dir / "scenes" / "instances.json").read_text())
    images = {i["id"]: i for i in coco["images"][:SCENES]}
    for image_id, image in images.items():
        anns = [a for a in coco["annotations"] if a["image_id"] == image_id]
        truth = [mask_utils.decode(mask_utils.frPyObjects(a["segmentation"], image["height"], image["width"])
                                   if isinstance(a["segmentation"], list) else a["segmentation"]) for a in anns]
        yield bench_dir / image["file_name"], anns, truth


def test_the_shipped_model_is_found_checked_and_cuts_out_bench_objects(bench_dir):
    assert find_model_dir(None) == DEFAULT_MODEL_DIR
    model = load_model_dir(DEFAULT_MODEL_DIR, device="cpu")  # verifies the weights' sha256 against config.json
    assert model.model_id.startswith("learned:")
    ious = []
    for photo, anns, truths in _objects(bench_dir):
        rgb = load_image(photo).rgb
        boxes = [(x, y, x + w, y + h) for x, y, w, h in (a["bbox"] for a in anns)]
        for result, truth in zip(segment_boxes(rgb, boxes, model), truths):
            predicted, truth = result.mask > 0, truth.reshape(rgb.shape[:2]) > 0
            ious.append((predicted & truth).sum() / max(1, (predicted | truth).sum()))
    assert len(ious) >= 10
    # A sanity check of the shipped weights, not a measurement: some of these scenes were training data
    # (measured on the test split: 0.865 with the locked GrabCut refinement, 0.847 without; the classical segmenter 0.756).
    assert float(np.mean(ious)) > 0.75, ious


def test_the_shipped_models_text_prompts_outlined_by_the_box_channel_beat_the_label_map(bench_dir):
    """On test-split photos (never trained or calibrated on), the locked text refinement raises the IoU of text
    prompts over the plain label map (measured on all 45 test photos: text mIoU 0.653 against 0.539)."""
    from matcher.segmentation.data import load_rgb, read_bench, split_bench
    from matcher.segmentation.evaluate import scene_truth
    from matcher.segmentation.predict import segment_prompt

    model = load_model_dir(DEFAULT_MODEL_DIR, device="cpu")
    assert model.config.refine_text == "boxes"
    bench = read_bench(bench_dir)
    ious: dict[str, list[float]] = {"boxes": [], "none": []}
    for image_id in split_bench(bench, seed=model.config.training_seed)["test"][:20]:
        scene = bench.scenes[image_id]
        image = load_rgb(scene.path)
        masks, valid = scene_truth(bench, image_id, image.shape[:2])
        for label in sorted(scene.labels & set(model.config.labels)):
            truth = np.logical_or.reduce([m for inst, m in zip(scene.instances, masks) if inst.label == label])
            for refine, values in ious.items():
                predicted = (segment_prompt(image, label, model, refine=refine).mask > 0) & valid
                values.append((predicted & truth).sum() / max(1, (predicted | truth).sum()))
    assert len(ious["none"]) >= 25
    refined, plain = float(np.mean(ious["boxes"])), float(np.mean(ious["none"]))
    assert refined > plain + 0.03 and refined > 0.5, (refined, plain)  # measured: 0.561 against 0.508 on 31 prompts
