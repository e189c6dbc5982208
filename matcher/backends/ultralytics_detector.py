"""Ultralytics detectors: RT-DETR (closed set, COCO) and YOLO-World (open vocabulary).

Weights are always local files resolved through :mod:`matcher.weights`
(``rtdetr-l``, ``yolov8s-worldv2``, or ``MATCHER_DETECTOR_CHECKPOINT``); a bare
model name is never passed to Ultralytics because it would download it.

Offline.  Before Ultralytics is imported :func:`ensure_ultralytics_offline` sets
``YOLO_OFFLINE=1`` (Ultralytics' ``ONLINE`` flag is then ``False``, which gates
its telemetry events, Sentry reports, pip-update checks and GitHub asset
lookups, and skips its DNS probe at import) and ``YOLO_AUTOINSTALL=false`` (no
``pip install`` of missing requirements).  If Ultralytics was already imported
by someone else, the already computed ``ONLINE`` / ``AUTOINSTALL`` module flags
are switched off in place.  Importing Ultralytics also replaces ``PIL.Image.open``
process-wide (see :func:`_undo_global_patches`); that is undone.  The user's
Ultralytics settings file is not
modified (``settings.update(sync=False)`` would persist to it); with
``ONLINE`` false the ``sync`` setting has no effect.

Labels and categories.  ``Detection.label`` is the model's class name (COCO
names for RT-DETR, the prompt for YOLO-World); ``Detection.category`` is
``category_map.get(label)``, a class -> catalog-category table supplied by the
caller (``None`` when unmapped or no table).  With ``keep_unmapped=False`` only
labels present in the table are returned.

YOLO-World prompts.  Ultralytics' own ``set_classes`` loads OpenAI CLIP through
the ``clip`` package (auto-installed from GitHub and downloaded on first use).
Instead :meth:`UltralyticsDetector.set_classes` takes the prompt embeddings
from a ``text_encoder`` callable; :meth:`UltralyticsDetector.from_settings`
uses OpenAI CLIP ViT-B/32 loaded by open_clip from the verified
``open_clip:ViT-B-32-quickgelu:openai`` file, the same encoder YOLO-World v2 was
trained with (embeddings L2-normalised, as Ultralytics does).  It is loaded on
first use only.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .. import weights
from ..device import resolve_device
from ..registry import register
from ..types import Box, Detection
from .openclip_embedder import as_rgb_uint8

log = logging.getLogger(__name__)

KINDS = ("rtdetr", "yoloworld")
DEFAULT_WEIGHTS = {"rtdetr": "rtdetr-l", "yoloworld": "yolov8s-worldv2"}
YOLOWORLD_TEXT_WEIGHTS = "open_clip:ViT-B-32-quickgelu:openai"

TextEncoder = Callable[[Sequence[str]], np.ndarray]


def ensure_ultralytics_offline() -> None:
    """Make Ultralytics never download, auto-install or phone home (see the module docstring)."""
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "false"
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "ultralytics" or name.startswith("ultralytics.")):
            continue
        for flag in ("ONLINE", "AUTOINSTALL"):
            if getattr(module, flag, None) is True:
                setattr(module, flag, False)
    _undo_global_patches()


def _undo_global_patches() -> None:
    """Undo what importing Ultralytics does to the rest of the process.

    ``ultralytics.utils.patches`` replaces ``PIL.Image.open`` with a wrapper that, on an unidentified image,
    tries to ``pip install pi-heif`` and raises ``ModuleNotFoundError`` instead of PIL's
    ``UnidentifiedImageError`` - that would change how our safe image loader reports garbage files.  We only
    hand Ultralytics decoded arrays, so the original ``Image.open`` is put back.
    """
    patches = sys.modules.get("ultralytics.utils.patches")
    if patches is None:
        return
    from PIL import Image

    original = getattr(patches, "_image_open", None)
    if original is not None and Image.open is getattr(patches, "image_open", None):
        Image.open = original


def import_ultralytics():
    """Import Ultralytics offline and without its process-wide side effects; returns the module."""
    omp_before = os.environ.get("OMP_NUM_THREADS")
    ensure_ultralytics_offline()
    import ultralytics
    from ultralytics import RTDETR, YOLOWorld  # noqa: F401  (imports the model code, and with it the patches)

    if omp_before is None and os.environ.get("OMP_NUM_THREADS") == "1":
        del os.environ["OMP_NUM_THREADS"]  # set by ultralytics at import "for training"; not ours to change
    ensure_ultralytics_offline()  # flags computed at import, and the PIL patch applied at import
    return ultralytics


def _model_class(kind: str):
    ultralytics = import_ultralytics()
    if kind == "rtdetr":
        return ultralytics.RTDETR
    if kind == "yoloworld":
        return ultralytics.YOLOWorld
    raise ValueError(f"unknown detector kind {kind!r}; use one of {KINDS}")


class UltralyticsDetector:
    """Boxes from an Ultralytics RT-DETR or YOLO-World model."""

    def __init__(
        self,
        model: Any,
        *,
        kind: str,
        weights_name: str,
        category_map: Mapping[str, str | None] | None = None,
        keep_unmapped: bool = True,
        conf: float = 0.25,
        iou: float = 0.7,
        imgsz: int = 640,
        max_det: int = 100,
        device: str = "auto",
        id_suffix: str = "",
        text_encoder: TextEncoder | None = None,
        text_encoder_factory: Callable[[], TextEncoder] | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown detector kind {kind!r}; use one of {KINDS}")
        self.model = model
        self.kind = kind
        self.detector_id = f"{kind}:{weights_name}{id_suffix}"
        self.category_map: dict[str, str | None] = dict(category_map or {})
        self.keep_unmapped = keep_unmapped
        self.conf, self.iou, self.imgsz, self.max_det = float(conf), float(iou), int(imgsz), int(max_det)
        self.device = resolve_device(device)
        self._text_encoder = text_encoder
        self._text_encoder_factory = text_encoder_factory  # built on first set_classes (loads CLIP weights)

    # --- construction ---------------------------------------------------------------------------------------------

    @classmethod
    def from_weights(cls, kind: str, path: str | Path, *, weights_name: str | None = None,
                     trusted_sha256: Sequence[str] = (), **kwargs: Any) -> "UltralyticsDetector":
        """Load a local ``.pt`` file (or an Ultralytics model ``.yaml`` for a randomly initialised model).

        Ultralytics unpickles ``.pt`` files, which can run code, so a ``.pt`` loads only when its sha256 is
        one of ``trusted_sha256`` (the manifest's pin and the operator's ``MATCHER_TRUSTED_WEIGHTS``)."""
        path = Path(path)
        if path.suffix == ".pt" and not path.is_file():
            raise weights.MissingWeightsError(None, path, reason=f"detector weights file not found: {path}")
        if path.suffix != ".yaml":
            weights.require_trusted(path, trusted_sha256)
        model = _model_class(kind)(str(path))
        return cls(model, kind=kind, weights_name=weights_name or path.stem, **kwargs)

    @classmethod
    def from_settings(
        cls,
        settings: Any,
        kind: str,
        *,
        category_map: Mapping[str, str | None] | None = None,
        keep_unmapped: bool = True,
    ) -> "UltralyticsDetector":
        name = getattr(settings, f"{kind}_weights", None) or DEFAULT_WEIGHTS[kind]
        resolved = weights.resolve_weights(name, settings, override=getattr(settings, "detector_checkpoint", None))
        kwargs: dict[str, Any] = dict(
            category_map=category_map,
            keep_unmapped=keep_unmapped,
            conf=getattr(settings, "detector_conf", 0.25),
            imgsz=getattr(settings, "detector_imgsz", 640),
            device=settings.device,
            id_suffix=resolved.id_suffix,
        )
        if kind == "yoloworld":
            kwargs["text_encoder_factory"] = _lazy_clip_text_encoder(settings)
        pinned = weights.MANIFEST[name].sha256 if name in weights.MANIFEST else None
        trusted = [d for d in (pinned, *getattr(settings, "trusted_weights", ())) if d]
        return cls.from_weights(kind, resolved.path, weights_name=name, trusted_sha256=trusted, **kwargs)

    # --- open vocabulary ------------------------------------------------------------------------------------------

    def set_classes(self, prompts: Sequence[str], categories: Sequence[str | None] | None = None) -> None:
        """YOLO-World only: detect ``prompts`` (e.g. catalog categories or product names).

        ``categories`` (parallel to ``prompts``) adds ``prompt -> catalog category`` entries to the map.
        """
        import torch

        if self.kind != "yoloworld":
            raise TypeError(f"{self.detector_id} has a fixed class list; set_classes is for YOLO-World")
        prompts = [str(p) for p in prompts]
        if not prompts:
            raise ValueError("set_classes needs at least one prompt")
        if len(set(prompts)) != len(prompts):
            raise ValueError("prompts must be unique")
        if categories is not None:
            if len(categories) != len(prompts):
                raise ValueError("categories must be parallel to prompts")
            self.category_map.update(zip(prompts, categories))
        feats = np.asarray(self._encoder()(prompts), dtype=np.float32)
        world = self.model.model
        expected = int(world.txt_feats.shape[-1])
        if feats.ndim != 2 or feats.shape != (len(prompts), expected):
            raise ValueError(f"text encoder returned {feats.shape}; YOLO-World needs ({len(prompts)}, {expected})")
        feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
        device = next(world.parameters()).device
        # What WorldModel.set_classes + YOLOWorld.set_classes do, with our embeddings instead of the clip package.
        world.txt_feats = torch.from_numpy(feats).reshape(1, len(prompts), expected).to(device)
        world.model[-1].nc = len(prompts)
        world.names = list(prompts)
        self.model.predictor = None

    def _encoder(self) -> TextEncoder:
        if self._text_encoder is None and self._text_encoder_factory is not None:
            self._text_encoder = self._text_encoder_factory()
        if self._text_encoder is None:
            raise RuntimeError(
                "YOLO-World needs a text encoder for its prompts; build the detector with from_settings() "
                f"(uses {YOLOWORLD_TEXT_WEIGHTS}) or pass text_encoder="
            )
        return self._text_encoder

    # --- inference ------------------------------------------------------------------------------------------------

    def detect(self, image: np.ndarray) -> list[Detection]:
        """RGB uint8 image -> detections above ``conf``, highest score first."""
        img = as_rgb_uint8(image)
        h, w = img.shape[:2]
        bgr = np.ascontiguousarray(img[..., ::-1])  # Ultralytics treats numpy input as OpenCV BGR
        results = self.model.predict(
            source=bgr, conf=self.conf, iou=self.iou, imgsz=self.imgsz, max_det=self.max_det,
            device=self.device, verbose=False, save=False,
        )
        out: list[Detection] = []
        for result in results:
            names = result.names
            boxes = result.boxes
            if boxes is None or len(boxes) == 0:
                continue
            xyxy = boxes.xyxy.detach().cpu().numpy().astype(np.float64)
            scores = boxes.conf.detach().cpu().numpy().astype(np.float64)
            classes = boxes.cls.detach().cpu().numpy().astype(np.int64)
            for (x0, y0, x1, y1), score, cls in zip(xyxy, scores, classes):
                label = str(names[int(cls)]) if names is not None else str(int(cls))
                if not self.keep_unmapped and label not in self.category_map:
                    continue
                box = Box(float(x0), float(y0), float(x1), float(y1)).clip(w, h)
                if box.area <= 0:
                    continue
                out.append(Detection(box, float(score), label, self.category_map.get(label), self.detector_id))
        out.sort(key=lambda d: -d.score)
        return out


def _lazy_clip_text_encoder(settings: Any) -> Callable[[], TextEncoder]:
    """A factory for the YOLO-World prompt encoder; the CLIP weights are resolved and loaded on first use."""

    def build() -> TextEncoder:
        from .openclip_embedder import OpenClipEmbedder

        _, model_name, tag = YOLOWORLD_TEXT_WEIGHTS.split(":", 2)
        embedder = OpenClipEmbedder(model_name, tag, device=settings.device, weights_dir=weights.weights_dir_of(settings))
        return embedder.embed_text

    return build


@register("detector", "rtdetr")
def create_rtdetr_detector(settings: Any) -> UltralyticsDetector:
    return UltralyticsDetector.from_settings(settings, "rtdetr")


@register("detector", "yoloworld")
def create_yoloworld_detector(settings: Any) -> UltralyticsDetector:
    return UltralyticsDetector.from_settings(settings, "yoloworld")
