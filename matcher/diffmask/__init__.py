"""Change masks: what really changed between two images, with everything else kept pixel-exact.

Public API::

    from matcher.diffmask import compute_change_mask, apply_change, perceptually_equal

    change = compute_change_mask(before_rgb, after_rgb)          # ChangeMask
    out = apply_change(before_rgb, after_rgb, change)             # == before wherever change.alpha == 0
    verdict = perceptually_equal(old_rgb, new_rgb)                # PerceptualVerdict(equal=..., ...)

See ``matcher.diffmask.core`` for the pipeline, ``feather`` for the guided
filter and the integer composite, ``protect`` for faces and keep-out boxes,
``naive`` for the fixed-threshold baseline and ``cli`` for ``matcher diffmask``.
"""

from .core import (
    DEFAULT_MIN_REGION,
    DEFAULT_WORK_LONG_SIDE,
    THRESHOLD_FLOOR,
    ChangeMask,
    ColourShift,
    PerceptualVerdict,
    Region,
    align_sizes,
    apply_change,
    apply_colour_shift,
    auto_threshold,
    compute_change_mask,
    delta_e_map,
    estimate_colour_shift,
    extract_regions,
    perceptually_equal,
)
from .feather import alpha_to_uint8, auto_feather_radius, composite, fast_guided_filter, feather_mask, guided_filter
from .naive import naive_change_mask, naive_composite
from .protect import FaceDetectorUnavailable, detect_faces, face_detector_available, parse_box, protection_mask

__all__ = [
    "ChangeMask",
    "ColourShift",
    "PerceptualVerdict",
    "Region",
    "FaceDetectorUnavailable",
    "compute_change_mask",
    "apply_change",
    "perceptually_equal",
    "naive_change_mask",
    "naive_composite",
    "align_sizes",
    "estimate_colour_shift",
    "apply_colour_shift",
    "delta_e_map",
    "auto_threshold",
    "extract_regions",
    "guided_filter",
    "fast_guided_filter",
    "feather_mask",
    "auto_feather_radius",
    "alpha_to_uint8",
    "composite",
    "detect_faces",
    "face_detector_available",
    "parse_box",
    "protection_mask",
    "DEFAULT_MIN_REGION",
    "DEFAULT_WORK_LONG_SIDE",
    "THRESHOLD_FLOOR",
]
