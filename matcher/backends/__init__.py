"""Model backends: small protocols here, implementations in sibling modules,
all created through ``matcher.registry``."""

from .protocols import Detector, Embedder, Segmenter

__all__ = ["Detector", "Embedder", "Segmenter"]
