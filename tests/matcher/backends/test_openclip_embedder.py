"""OpenCLIP embedder with a tiny random model loaded from a local checkpoint (no network)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

from matcher import registry, weights  # noqa: E402
from matcher.backends.openclip_embedder import OpenClipEmbedder  # noqa: E402
from matcher.backends.protocols import Embedder  # noqa: E402
from tests.tiny_models import tiny_open_clip  # noqa: E402

TAG = "tiny_random"


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[str, Path]:
    return tiny_open_clip(tmp_path)


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(48 + 8 * i, 64, 3), dtype=np.uint8) for i in range(n)]


def _install(weights_dir: Path, name: str, checkpoint: Path) -> Path:
    """Put the checkpoint where the real ViT-B-32 weights would go: weights/open_clip/<model>/<tag>/."""
    spec = weights.get_spec(weights.open_clip_weights_name(name, TAG))
    dest = spec.path_in(weights_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(checkpoint.read_bytes())
    return dest


def test_loads_from_weights_dir_like_real_weights(tmp_path: Path, tiny):
    name, checkpoint = tiny
    dest = _install(tmp_path / "weights", name, checkpoint)
    settings = SimpleNamespace(clip_model=name, clip_pretrained=TAG, device="cpu", batch_size=3,
                               resolved_weights_dir=tmp_path / "weights")
    emb = registry.create("embedder", "open_clip", settings)
    assert isinstance(emb, Embedder)
    assert emb.checkpoint == dest and not emb.checkpoint_custom
    assert emb.model_id == f"open_clip:{name}:{TAG}"
    assert emb.dim == 32

    images = _images(5)
    vecs = emb.embed(images)
    assert vecs.shape == (5, 32) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb.embed(images), vecs, atol=1e-6)  # deterministic
    singles = np.concatenate([emb.embed([im]) for im in images])
    np.testing.assert_allclose(singles, vecs, atol=1e-5)  # batching does not change results
    assert emb.embed([]).shape == (0, 32)

    # Really loaded: the weights equal the checkpoint's, not a fresh random init.
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert torch.equal(emb.model.visual.conv1.weight, state["visual.conv1.weight"])


def test_custom_checkpoint_gets_distinct_id(tmp_path: Path):
    name, ckpt_a = tiny_open_clip(tmp_path, seed=0)
    _, ckpt_b = tiny_open_clip(tmp_path, seed=1)
    a = OpenClipEmbedder(name, TAG, device="cpu", checkpoint=ckpt_a)
    b = OpenClipEmbedder(name, TAG, device="cpu", checkpoint=ckpt_b)
    assert a.model_id.startswith(f"open_clip:{name}:{TAG}@") and b.model_id.startswith(f"open_clip:{name}:{TAG}@")
    assert a.model_id != b.model_id
    img = _images(1)
    assert not np.allclose(a.embed(img), b.embed(img))


def test_embed_text(tiny):
    name, checkpoint = tiny
    emb = OpenClipEmbedder(name, TAG, device="cpu", checkpoint=checkpoint)
    text = emb.embed_text(["a grey sofa", "an oak dining table", "a grey sofa"])
    assert text.shape == (3, emb.dim) and text.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(text[0], text[2], atol=1e-6)
    assert not np.allclose(text[0], text[1])


def test_missing_weights_are_reported_not_downloaded(tmp_path: Path, tiny):
    name, _ = tiny
    with pytest.raises(weights.MissingWeightsError) as info:
        OpenClipEmbedder(name, TAG, device="cpu", weights_dir=tmp_path / "empty")
    assert "open_clip_pytorch_model.bin" in str(info.value)
    assert str(tmp_path / "empty" / "open_clip" / name / TAG) in str(info.value)


def test_real_default_model_missing_names_fetch_command(tmp_path: Path):
    with pytest.raises(weights.MissingWeightsError) as info:
        OpenClipEmbedder("ViT-B-32", "laion2b_s34b_b79k", device="cpu", weights_dir=tmp_path)
    assert "matcher models fetch open_clip:ViT-B-32:laion2b_s34b_b79k" in str(info.value)


def test_rejects_non_rgb(tiny):
    name, checkpoint = tiny
    emb = OpenClipEmbedder(name, TAG, device="cpu", checkpoint=checkpoint)
    with pytest.raises(ValueError):
        emb.embed([np.zeros((8, 8), np.uint8)])
