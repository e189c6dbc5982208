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
    return create("embedder", name or settings.embedder or BACKEND_PRESETS[settings.backend]["embedder"], settings)


def settings_for_model(model: str, settings: Settings) -> Settings:
    """``--model``: ``classical`` or ``open_clip:MODEL:TAG`` -> settings that select that embedder."""
    kind = model.split(":", 1)[0]
    if kind == "classical":
        return settings.model_copy(update={"embedder": "classical"})
    if kind == "open_clip" and model.count(":") == 2:
        _, clip_model, tag = model.split(":")
        return settings.model_copy(update={"embedder": "open_clip", "clip_model": clip_model, "clip_pretrained": tag})
    raise UnknownBackendError(f"unknown model id {model!r}: use 'classical' or 'open_clip:MODEL:PRETRAINED'")


def create_segmenter(settings: Settings, name: str | None = None):
    return create("segmenter", name or BACKEND_PRESETS[settings.backend]["segmenter"], settings)


class SpaceMismatchError(RuntimeError):
    pass


def settings_for_space(embedder_id: str, segmenter_id: str, settings: Settings) -> tuple[str, str, Settings]:
    """Backend names and settings that reproduce the models an embedding space was built with.

    Ids look like ``open_clip:MODEL:TAG[@checksum]``, ``classical:...``, ``sam:TYPE[@checksum]``.
    A checksum suffix means a custom checkpoint: it must be the one named in the settings.
    """
    embedder_kind = embedder_id.split(":", 1)[0]
    segmenter_kind = segmenter_id.split(":", 1)[0]
    update: dict[str, str] = {}
    if embedder_kind == "open_clip":
        _, model, tag = embedder_id.split("@", 1)[0].split(":", 2)
        update.update(clip_model=model, clip_pretrained=tag)
    if segmenter_kind == "sam":
        update["sam_model"] = segmenter_id.split("@", 1)[0].split(":", 1)[1]
    return embedder_kind, segmenter_kind, settings.model_copy(update=update)


def backends_for_space(embedder_id: str, segmenter_id: str, settings: Settings):
    """(embedder, segmenter) whose ids equal the space's, or SpaceMismatchError saying what differs."""
    embedder_kind, segmenter_kind, space_settings = settings_for_space(embedder_id, segmenter_id, settings)
    embedder = create("embedder", embedder_kind, space_settings)
    segmenter = create("segmenter", segmenter_kind, space_settings)
    check_backends(embedder, segmenter, embedder_id, segmenter_id)
    return embedder, segmenter


def check_backends(embedder, segmenter, embedder_id: str, segmenter_id: str) -> None:
    if (embedder.model_id, segmenter.segmenter_id) != (embedder_id, segmenter_id):
        raise SpaceMismatchError(
            f"search uses the space of embedder {embedder_id} + segmenter {segmenter_id}, but the models at hand are "
            f"{embedder.model_id} + {segmenter.segmenter_id}; point MATCHER_CLIP_CHECKPOINT / MATCHER_SAM_CHECKPOINT "
            "at the checkpoints that space was built with")
