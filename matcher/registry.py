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
    ("embedder", "effnet"): "matcher.backends.effnet_embedder",
    ("segmenter", "classical"): "matcher.backends.classical_segmenter",
    ("segmenter", "sam"): "matcher.backends.sam_segmenter",
    ("segmenter", "learned"): "matcher.backends.learned_segmenter",
    ("detector", "rtdetr"): "matcher.backends.ultralytics_detector",
    ("detector", "yoloworld"): "matcher.backends.ultralytics_detector",
}

# What "--backend effnet|classical|deep" means for each kind.  "segmenter" cuts out catalog shots (and names
# the embedding space); "query_segmenter" cuts objects out of room photos.  In the default preset they differ:
# on catalog shots the classical segmenter wins (dev catalog IoU 0.959 vs 0.895); in rooms the learned one wins
# (box IoU on products unseen in training 0.928 vs 0.678, scripts/bench_seg_unseen.py) and is faster (issue 15).
BACKEND_PRESETS: dict[str, dict[str, str]] = {
    "effnet": {"embedder": "effnet", "segmenter": "classical", "query_segmenter": "learned"},  # the default
    "classical": {"embedder": "classical", "segmenter": "classical", "query_segmenter": "classical"},
    "deep": {"embedder": "open_clip", "segmenter": "sam", "query_segmenter": "sam"},
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
    """``--model`` -> settings for that embedder: ``classical``, ``open_clip:MODEL:TAG``, or ``effnet[:VARIANT[:deep]]``
    (``:deep`` = without the colour part)."""
    kind = model.split(":", 1)[0]
    if kind == "classical":
        return settings.model_copy(update={"embedder": "classical"})
    if kind == "effnet" and model.count(":") <= 2:
        variant, *flavour = model.split(":")[1:] or [settings.effnet_variant]
        if variant not in ("lite0", "lite1", "lite2") or flavour not in ([], ["deep"]):
            raise UnknownBackendError(f"unknown EfficientNet-Lite model {model!r}: use effnet:lite0|lite1|lite2[:deep]")
        update = {"embedder": "effnet", "effnet_variant": variant}
        if flavour:
            update["effnet_colour_weight"] = 0.0  # the deep part alone
        return settings.model_copy(update=update)
    raise UnknownBackendError(f"unknown model id {model!r}: use 'classical', 'effnet:lite0|lite1|lite2' or "
                              "'open_clip:MODEL:PRETRAINED'")


def segmenter_name(settings: Settings) -> str:
    """The segmenter backend: ``settings.segmenter`` (``MATCHER_SEGMENTER``) if set, else the --backend preset's."""
    return settings.segmenter or BACKEND_PRESETS[settings.backend]["segmenter"]


def create_segmenter(settings: Settings, name: str | None = None):
    return create("segmenter", name or segmenter_name(settings), settings)


def query_segmenter_name(settings: Settings, embedder_kind: str, catalog_kind: str) -> str:
    """The room-photo segmenter for a space: ``settings.query_segmenter`` (``MATCHER_QUERY_SEGMENTER``), else an
    explicit ``settings.segmenter`` (one segmenter for both sides), else that of the preset the space was built
    with, else the catalog's own."""
    explicit = settings.query_segmenter or settings.segmenter
    if explicit:
        return explicit
    for preset in BACKEND_PRESETS.values():
        if (preset["embedder"], preset["segmenter"]) == (embedder_kind, catalog_kind):
            return preset["query_segmenter"]
    return catalog_kind


def query_segmenter(settings: Settings, embedder_id: str, catalog_segmenter):
    """The segmenter for room photos: the catalog's own when it is the same backend, else a new one."""
    catalog_kind = catalog_segmenter.segmenter_id.split(":", 1)[0]
    name = query_segmenter_name(settings, embedder_id.split(":", 1)[0], catalog_kind)
    return catalog_segmenter if name == catalog_kind else create("segmenter", name, settings)


def create_query_segmenter(settings: Settings):
    """The room-photo segmenter the settings' preset (or overrides) name, without an indexed catalog."""
    name = query_segmenter_name(settings, BACKEND_PRESETS[settings.backend]["embedder"], segmenter_name(settings))
    return create("segmenter", name, settings)


class SpaceMismatchError(RuntimeError):
    pass


def settings_for_space(embedder_id: str, segmenter_id: str, settings: Settings) -> tuple[str, str, Settings]:
    """Backend names and settings that reproduce the models an embedding space was built with.

    Ids look like ``open_clip:MODEL:TAG[@checksum]``, ``effnet:VARIANT:DESCRIPTOR@checksum``, ``classical:...``,
    ``sam:TYPE[@checksum]``.
    A checksum suffix means a custom checkpoint: it must be the one named in the settings.
    """
    embedder_kind = embedder_id.split(":", 1)[0]
    segmenter_kind = segmenter_id.split(":", 1)[0]
    update: dict[str, str] = {}
    if embedder_kind == "open_clip":
        _, model, tag = embedder_id.split("@", 1)[0].split(":", 2)
        update.update(clip_model=model, clip_pretrained=tag)
    if embedder_kind == "effnet":  # effnet:VARIANT:gemP-SIZE[+colourW]@checksum
        _, variant, descriptor = embedder_id.split("@", 1)[0].split(":", 2)
        update["effnet_variant"] = variant
        update["effnet_colour_weight"] = float(descriptor.split("+colour", 1)[1]) if "+colour" in descriptor else 0.0
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
            f"{embedder.model_id} + {segmenter.segmenter_id}; point MATCHER_CLIP_CHECKPOINT / MATCHER_EFFNET_WEIGHTS / "
            "MATCHER_SAM_CHECKPOINT / MATCHER_SEG_MODEL_DIR at the checkpoints that space was built with")
