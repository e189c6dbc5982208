"""Visual search and product matching for home furnishing.

Stages pass typed values (see ``matcher.types``); model backends sit behind the
protocols in ``matcher.backends`` and are created through ``matcher.registry``.
"""

__version__ = "0.1.0"
