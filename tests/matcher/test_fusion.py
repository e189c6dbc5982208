"""Box fusion on hand-made boxes: known merges and known keeps."""

from matcher.fusion import FusionConfig, fuse_detections
from matcher.types import Box, Detection

W, H = 1000, 800


def det(x0, y0, x1, y1, score, category="Living room", source="a"):
    return Detection(Box(x0, y0, x1, y1), score, category or "thing", category, source)


def test_overlapping_boxes_from_two_detectors_merge_into_their_weighted_mean():
    fused = fuse_detections({
        "rtdetr": [det(100, 100, 300, 300, 0.9, source="rtdetr")],
        "yoloworld": [det(110, 110, 310, 310, 0.6, source="yoloworld")],
    }, W, H)
    assert len(fused) == 1
    box = fused[0].box
    # Score-weighted mean of the two: 100*0.9/1.5 + 110*0.6/1.5 = 104.
    assert abs(box.x0 - 104) < 1.0 and abs(box.x1 - 304) < 1.0
    assert fused[0].source == "rtdetr+yoloworld"
    # Averaged over both detectors that voted.
    assert abs(fused[0].score - 0.75) < 0.02


def test_a_box_seen_by_one_detector_only_is_kept_but_down_weighted():
    fused = fuse_detections({
        "rtdetr": [det(100, 100, 300, 300, 0.9, source="rtdetr"), det(600, 400, 800, 700, 0.8, source="rtdetr")],
        "yoloworld": [det(105, 100, 300, 305, 0.9, source="yoloworld")],
    }, W, H)
    assert len(fused) == 2
    lonely = next(d for d in fused if d.box.x0 > 500)
    assert lonely.source == "rtdetr" and lonely.score < 0.8


def test_neighbouring_objects_and_different_categories_are_not_merged():
    fused = fuse_detections({"rtdetr": [
        det(100, 100, 300, 300, 0.9),
        det(320, 100, 520, 300, 0.85),  # a second chair next to the first: no overlap
        det(105, 105, 305, 305, 0.8, category="Office"),  # same place, other category
    ]}, W, H)
    assert len(fused) == 3


def test_duplicates_within_one_detector_collapse():
    fused = fuse_detections({"rtdetr": [det(100, 100, 300, 300, 0.9), det(102, 101, 301, 299, 0.88)]}, W, H)
    assert len(fused) == 1


def test_tiny_and_weak_boxes_are_dropped_and_top_k_per_label_is_kept():
    config = FusionConfig(min_score=0.3, min_area_fraction=0.001, top_k_per_label=2)
    boxes = [det(10 + 150 * i, 10, 130 + 150 * i, 200, 0.9 - 0.1 * i) for i in range(5)]
    tiny = det(900, 700, 910, 710, 0.99)  # 100 px^2 < 0.1% of 800k
    weak = det(10, 400, 200, 600, 0.1)
    fused = fuse_detections({"a": boxes + [tiny, weak]}, W, H, config)
    assert [round(d.score, 2) for d in fused] == [0.9, 0.8]


def test_nothing_in_nothing_out():
    assert fuse_detections({"a": [], "b": []}, W, H) == []
