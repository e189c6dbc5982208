"""One registry for every model backend, in the style of open_clip's factory.

Backends register a factory under a short name; callers ask for a kind and a
name.  Importing a backend module is what registers it, so heavy libraries
(torch, ultralytics) are only imported when their backend is requested.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from .settings import Settings

Factory = Callable[[Settings], Any]
_FACTORIES: dict[tuple[str, str], Factory] = {}

# Where each built-in backend lives; imported on first use.
_BUILTIN_MODULES: dict[tuple[str, str], str] = {
    ("embedder", "classical"): "matcher.backends.classical_embedder",
    ("embedder", "open_clip"): "matcher.backends.openclip_embedder",
    ("segmenter", "classical"): "matcher.backends.classical_segmenter",
    ("segmenter", "sam"): "matcher.backends.sam_segmenter",
    ("detector", "rtdetr"): "matcher.backends.ultralytics_detector",
    ("detector", "yoloworld"): "matcher.backends.ultralytics_detector",
}

# What "--backend classical|deep" means for each kind.
BACKEND_PRESETS: dict[str, dict[str, str]] = {
    "classical": {"embedder": "classical", "segmenter": "classical"},
    "deep": {"embedder": "open_clip", "segmenter": "sam"},
}


class UnknownBackendError(KeyError):
    pass


def register(kind: str, name: str) -> Callable[[Factory], Factory]:
    def decorator(factory: Factory) -> Factory:
        _FACTORIES[(kind, name)] = factory
        return factory

    return decorator


def create(kind: str, name: str, settings: Settings) -> Any:
    key = (kind, name)
    if key not in _FACTORIES and key in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[key])
    if key not in _FACTORIES:
        known = sorted(n for k, n in set(_FACTORIES) | set(_BUILTIN_MODULES) if k == kind)
        raise UnknownBackendError(f"no {kind} backend named {name!r}; known: {', '.join(known)}")
    return _FACTORIES[key](settings)


def available(kind: str) -> list[str]:
    return sorted(n for k, n in set(_FACTORIES) | set(_BUILTIN_MODULES) if k == kind)


def create_embedder(settings: Settings, name: str | None = None):
    return create("embedder", name or BACKEND_PRESETS[settings.backend]["embedder"], settings)


def create_segmenter(settings: Settings, name: str | None = None):
    return create("segmenter", name or BACKEND_PRESETS[settings.backend]["segmenter"], settings)
