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

# Each module lists its public names once, in its own ``__all__``; the package re-exports them.
from . import core, feather, naive, protect
from .core import *  # noqa: F403
from .feather import *  # noqa: F403
from .naive import *  # noqa: F403
from .protect import *  # noqa: F403

__all__ = [*core.__all__, *feather.__all__, *naive.__all__, *protect.__all__]
