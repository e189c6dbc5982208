"""Colour maths: CIELAB conversion, CIEDE2000 (Sharma et al. 2005 test data), dominant colours, palettes."""

from __future__ import annotations

import numpy as np
import pytest

from matcher.colors import ciede2000, dominant_colors, lab_to_rgb, palette_distance, rgb_to_lab
from matcher.types import LabColor

# Pairs from G. Sharma, W. Wu, E. N. Dalal, "The CIEDE2000 color-difference
# formula: implementation notes, supplementary test data, and mathematical
# observations", Color Res. Appl. 30(1), 2005, Table 1 (pair number, Lab 1, Lab 2, ΔE00).
SHARMA_PAIRS = [
    (1, (50.0000, 2.6772, -79.7751), (50.0000, 0.0000, -82.7485), 2.0425),
    (2, (50.0000, 3.1571, -77.2803), (50.0000, 0.0000, -82.7485), 2.8615),
    (3, (50.0000, 2.8361, -74.0200), (50.0000, 0.0000, -82.7485), 3.4412),
    (4, (50.0000, -1.3802, -84.2814), (50.0000, 0.0000, -82.7485), 1.0000),
    (7, (50.0000, 0.0000, 0.0000), (50.0000, -1.0000, 2.0000), 2.3669),
    (9, (50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0009), 7.1792),
    (11, (50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0011), 7.2195),
    (13, (50.0000, -0.0010, 2.4900), (50.0000, 0.0009, -2.4900), 4.8045),
    (15, (50.0000, -0.0010, 2.4900), (50.0000, 0.0011, -2.4900), 4.7461),
    (16, (50.0000, 2.5000, 0.0000), (50.0000, 0.0000, -2.5000), 4.3065),
    (17, (50.0000, 2.5000, 0.0000), (73.0000, 25.0000, -18.0000), 27.1492),
    (18, (50.0000, 2.5000, 0.0000), (61.0000, -5.0000, 29.0000), 22.8977),
    (19, (50.0000, 2.5000, 0.0000), (56.0000, -27.0000, -3.0000), 31.9030),
    (20, (50.0000, 2.5000, 0.0000), (58.0000, 24.0000, 15.0000), 19.4535),
    (21, (50.0000, 2.5000, 0.0000), (50.0000, 3.1736, 0.5854), 1.0000),
    (25, (60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
    (26, (63.0109, -31.0961, -5.8663), (62.8187, -29.7946, -4.0864), 1.2630),
    (27, (61.2901, 3.7196, -5.3901), (61.4292, 2.2480, -4.9620), 1.8731),
    (28, (35.0831, -44.1164, 3.7933), (35.0232, -40.0716, 1.5901), 1.8645),
    (29, (22.7233, 20.0904, -46.6940), (23.0331, 14.9730, -42.5619), 2.0373),
    (30, (36.4612, 47.8580, 18.3852), (36.2715, 50.5065, 21.2231), 1.4146),
    (31, (90.8027, -2.0831, 1.4410), (91.1528, -1.6435, 0.0447), 1.4441),
    (32, (90.9257, -0.5406, -0.9208), (88.6381, -0.8985, -0.7239), 1.5381),
    (33, (6.7747, -0.2908, -2.4247), (5.8714, -0.0985, -2.2286), 0.6377),
    (34, (2.0776, 0.0795, -1.1350), (0.9033, -0.0636, -0.5514), 0.9082),
]


@pytest.mark.parametrize("pair,lab1,lab2,expected", SHARMA_PAIRS, ids=[f"pair{p[0]}" for p in SHARMA_PAIRS])
def test_ciede2000_matches_sharma_table(pair, lab1, lab2, expected):
    d = ciede2000(lab1, lab2)
    assert isinstance(d, float)
    assert d == pytest.approx(expected, abs=1e-4)
    assert ciede2000(lab2, lab1) == pytest.approx(expected, abs=1e-4)  # symmetric


def test_ciede2000_vectorised():
    lab1 = np.array([p[1] for p in SHARMA_PAIRS])
    lab2 = np.array([p[2] for p in SHARMA_PAIRS])
    out = ciede2000(lab1, lab2)
    assert isinstance(out, np.ndarray) and out.shape == (len(SHARMA_PAIRS),)
    np.testing.assert_allclose(out, [p[3] for p in SHARMA_PAIRS], atol=1e-4)


def test_rgb_to_lab_reference_colours():
    # sRGB D65 reference values (e.g. Lindbloom's calculator).
    colours = np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128]], np.uint8)
    expected = np.array([
        [100.0, 0.0, 0.0], [0.0, 0.0, 0.0], [53.24, 80.09, 67.20],
        [87.73, -86.18, 83.18], [32.30, 79.19, -107.86], [53.59, 0.0, 0.0],
    ])
    lab = rgb_to_lab(colours)
    assert lab.shape == (6, 3) and lab.dtype == np.float32
    np.testing.assert_allclose(lab, expected, atol=0.15)
    # Float input in [0, 1] means the same colours; images keep their shape.
    np.testing.assert_allclose(rgb_to_lab(colours.astype(np.float32) / 255.0), lab, atol=1e-3)
    image = np.tile(colours[None], (4, 1, 1))
    assert rgb_to_lab(image).shape == (4, 6, 3)
    np.testing.assert_allclose(lab_to_rgb(lab) * 255.0, colours, atol=0.6)


def _two_colour_cutout():
    h, w = 40, 100
    fg = np.zeros((h, w, 3), np.float32)
    fg[:, :70] = (0.8, 0.1, 0.1)  # red, 70 % of the opaque area
    fg[:, 70:] = (0.1, 0.2, 0.8)  # blue, 30 %
    alpha = np.ones((h, w), np.float32)
    # A green strip with zero alpha must not show up at all.
    fg = np.concatenate([fg, np.tile(np.float32([0.1, 0.9, 0.1]), (h, 50, 1))], axis=1)
    alpha = np.concatenate([alpha, np.zeros((h, 50), np.float32)], axis=1)
    return fg, alpha


def test_dominant_colors_weights_and_order():
    fg, alpha = _two_colour_cutout()
    palette = dominant_colors(fg, alpha, k=4)
    assert 1 <= len(palette) <= 4
    assert sum(c.weight for c in palette) == pytest.approx(1.0, abs=1e-6)
    weights = [c.weight for c in palette]
    assert weights == sorted(weights, reverse=True)
    red = rgb_to_lab(np.float32([0.8, 0.1, 0.1]))
    blue = rgb_to_lab(np.float32([0.1, 0.2, 0.8]))
    green = rgb_to_lab(np.float32([0.1, 0.9, 0.1]))
    assert ciede2000(palette[0].lab, red) < 1.0 and palette[0].weight == pytest.approx(0.7, abs=0.01)
    assert ciede2000(palette[1].lab, blue) < 1.0 and palette[1].weight == pytest.approx(0.3, abs=0.01)
    assert all(ciede2000(c.lab, green) > 20 for c in palette)


def test_dominant_colors_alpha_weighting_and_empty():
    fg, alpha = _two_colour_cutout()
    half = alpha.copy()
    half[:, :70] *= 0.25  # the red part only a quarter opaque: 0.25*70 vs 30
    palette = dominant_colors(fg, half, k=2)
    assert palette[0].weight == pytest.approx(30 / (30 + 17.5), abs=0.01)
    assert dominant_colors(fg, np.zeros_like(alpha)) == []
    # uint8 alpha is read as 0..255; deterministic for a seed.
    a8 = (alpha * 255).astype(np.uint8)
    assert dominant_colors(fg, a8, k=2) == dominant_colors(fg, a8, k=2)


def test_palette_distance_properties():
    red = LabColor(tuple(float(v) for v in rgb_to_lab(np.float32([0.8, 0.1, 0.1]))), 0.9)
    blue = LabColor(tuple(float(v) for v in rgb_to_lab(np.float32([0.1, 0.2, 0.8]))), 0.1)
    red_small = LabColor(red.lab, 0.1)
    blue_big = LabColor(blue.lab, 0.9)
    p1, p2 = [red, blue], [blue_big, red_small]
    assert palette_distance(p1, p1) == pytest.approx(0.0, abs=1e-9)
    # Same colours in other amounts: nearest matching ignores amounts, EMD does not.
    assert palette_distance(p1, p2) == pytest.approx(0.0, abs=1e-9)
    emd = palette_distance(p1, p2, method="emd")
    assert emd == pytest.approx(0.8 * ciede2000(red.lab, blue.lab), rel=1e-4)
    assert palette_distance(p1, p2, method="emd") == pytest.approx(palette_distance(p2, p1, method="emd"), rel=1e-6)
    only_red, only_blue = [LabColor(red.lab, 1.0)], [LabColor(blue.lab, 1.0)]
    assert palette_distance(only_red, only_blue) == pytest.approx(ciede2000(red.lab, blue.lab), rel=1e-6)
    assert palette_distance(only_red, p1) < palette_distance(only_red, only_blue)
    assert palette_distance([], []) == 0.0
    assert palette_distance(only_red, []) == float("inf")
    with pytest.raises(ValueError):
        palette_distance(p1, p2, method="nope")


def test_palette_distances_for_a_list_equal_one_by_one():
    from matcher.colors import palette_distances

    rng = np.random.default_rng(3)

    def palette(k):
        return [LabColor(tuple(rng.uniform([0, -60, -60], [100, 60, 60])), float(rng.uniform(0.1, 1))) for _ in range(k)]

    query = palette(4)
    others = [palette(3), None, palette(1), [], palette(6)]
    batched = palette_distances(query, others)
    assert batched[1] is None and batched[3] == float("inf")
    for got, other in zip(batched, others):
        if other:
            assert got == pytest.approx(palette_distance(query, other), rel=1e-12)
    assert palette_distances([], [palette(2), None]) == [float("inf"), None]


def test_distinct_colour_count_matches_row_wise_unique():
    """The palette caps k at the number of distinct colours (0.1 Lab precision); the integer-key count
    must equal numpy's row-wise unique, signs and rounding included."""
    from matcher.colors import _distinct_colours

    rng = np.random.default_rng(3)
    for n in (1, 7, 500):
        lab = np.stack([rng.uniform(0, 100, n), rng.uniform(-110, 110, n), rng.uniform(-110, 110, n)], axis=1)
        lab = np.round(lab, 0) + rng.choice([0.0, 0.04, -0.06, 0.16], size=(n, 3))  # near-duplicates, ties
        assert _distinct_colours(lab) == len(np.unique(np.round(lab, 1), axis=0))
    assert _distinct_colours(np.array([[50.0, 0.0, -0.0], [50.0, -0.0, 0.0], [50.0, 0.04, 0.0]])) == 1
