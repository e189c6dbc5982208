"""The weight-free classical embedder: normalised, deterministic, and sensitive to the right things."""

from __future__ import annotations


import cv2
import numpy as np
import pytest

from matcher import registry
from matcher.backends.classical_embedder import DIM, ClassicalEmbedder, foreground
from matcher.backends.protocols import Embedder
from matcher.settings import Settings

GREY = (128, 128, 128)


def cutout(shape: str = "sofa", colour=(170, 60, 40), dx: int = 0, dy: int = 0, scale: float = 1.0,
           size: int = 224, seed: int = 0) -> np.ndarray:
    """A composited cutout: a textured object on neutral grey."""
    img = np.full((size, size, 3), GREY, np.uint8)
    mask = np.zeros((size, size), np.uint8)
    cx, cy = size // 2 + dx, size // 2 + dy

    def s(v: float) -> int:
        return int(round(v * scale))

    if shape == "sofa":  # seat block, back rest and two arms
        cv2.rectangle(mask, (cx - s(80), cy - s(10)), (cx + s(80), cy + s(40)), 1, -1)
        cv2.rectangle(mask, (cx - s(80), cy - s(50)), (cx + s(80), cy - s(10)), 1, -1)
        cv2.rectangle(mask, (cx - s(95), cy - s(25)), (cx - s(80), cy + s(40)), 1, -1)
        cv2.rectangle(mask, (cx + s(80), cy - s(25)), (cx + s(95), cy + s(40)), 1, -1)
    elif shape == "lamp":  # tall and thin: shade, pole, base
        cv2.ellipse(mask, (cx, cy - s(70)), (s(35), s(22)), 0, 0, 360, 1, -1)
        cv2.rectangle(mask, (cx - s(4), cy - s(50)), (cx + s(4), cy + s(80)), 1, -1)
        cv2.rectangle(mask, (cx - s(25), cy + s(80)), (cx + s(25), cy + s(90)), 1, -1)
    else:
        raise ValueError(shape)
    rng = np.random.default_rng(seed)
    texture = rng.normal(0, 12, (size, size, 1))  # fabric-like luminance noise
    obj = np.clip(np.asarray(colour, np.float64) + texture, 0, 255).astype(np.uint8)
    img[mask.astype(bool)] = obj[mask.astype(bool)]
    return img


@pytest.fixture(scope="module")
def emb() -> ClassicalEmbedder:
    return ClassicalEmbedder()


def test_protocol_id_and_registry(emb: ClassicalEmbedder):
    assert isinstance(emb, Embedder)
    assert emb.model_id == "classical:lab-texture-shape-v1" and emb.dim == DIM == 512
    created = registry.create("embedder", "classical", Settings())
    assert created.model_id == emb.model_id


def test_unit_norm_shape_and_determinism(emb: ClassicalEmbedder):
    images = [cutout(), cutout("lamp"), cutout(colour=(40, 90, 170)), np.full((64, 64, 3), 128, np.uint8)]
    vecs = emb.embed(images)
    assert vecs.shape == (4, 512) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(emb.embed(images), vecs)
    assert np.array_equal(ClassicalEmbedder().embed([images[0]])[0], vecs[0])
    assert emb.embed([]).shape == (0, 512)


def test_recolour_is_farther_than_shift_and_scale(emb: ClassicalEmbedder):
    base, moved, recoloured = emb.embed([
        cutout(),
        cutout(dx=9, dy=-6, scale=0.9, seed=1),  # same product, framed slightly differently
        cutout(colour=(40, 90, 170)),  # same silhouette, different colour
    ])
    assert base @ moved > base @ recoloured + 0.1


def test_different_silhouette_is_farther(emb: ClassicalEmbedder):
    base, moved, lamp = emb.embed([cutout(), cutout(dx=-7, dy=5, scale=1.08, seed=2), cutout("lamp")])
    assert base @ moved > base @ lamp + 0.1


def test_foreground_estimate_against_grey():
    img = cutout()
    soft, hard = foreground(img, GREY)
    obj = (np.abs(img.astype(int) - 128).max(axis=2) > 0)
    assert hard[obj].mean() > 0.97 and not hard[:, :10].any()
    assert soft.dtype == np.float32 and 0.0 <= soft.min() and soft.max() <= 1.0
