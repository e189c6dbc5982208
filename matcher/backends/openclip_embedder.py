"""OpenCLIP image (and text) embeddings from a local, verified checkpoint.

The model is built with ``open_clip.create_model_and_transforms(name,
pretrained=<file path>)``: the file comes from :mod:`matcher.weights` (the
manifest file under the weights directory, or a user checkpoint from
``MATCHER_CLIP_CHECKPOINT``), so open_clip never resolves a pretrained *tag*
and never contacts the Hugging Face hub.  The tag's preprocessing (mean, std,
interpolation, resize mode) and QuickGELU flag are taken from open_clip's
pretrained table, which is a lookup, not a download.

Ids: ``open_clip:{model}:{tag}``; a user checkpoint appends ``@<sha256 prefix>``
so vectors from two different checkpoints are never mixed.  Any architecture
registered with ``open_clip.add_model_config`` works (the tests use a tiny one).
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import weights
from ..device import resolve_device
from ..registry import register

log = logging.getLogger(__name__)


def _is_torchscript(path: Path) -> bool:
    """True for TorchScript archives (OpenAI's original CLIP checkpoints), which need a different loader."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Validate an ``(H, W, 3)`` uint8 RGB image (the pipeline's image type)."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {arr.dtype}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError("empty image")
    return np.ascontiguousarray(arr)


class OpenClipEmbedder:
    """L2-normalised OpenCLIP embeddings of RGB uint8 images, and of text prompts."""

    def __init__(
        self,
        model_name: str = "ViT-B-32",
        pretrained: str = "laion2b_s34b_b79k",
        device: str = "auto",
        batch_size: int = 16,
        checkpoint: str | Path | None = None,
        *,
        weights_dir: str | Path | None = None,
    ) -> None:
        import open_clip
        import torch

        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        tag = pretrained
        if checkpoint is None and pretrained and Path(pretrained).expanduser().is_file():
            checkpoint, tag = pretrained, "custom"  # a file path given as "pretrained"
        if weights_dir is None and checkpoint is None:
            from ..settings import get_settings

            weights_dir = get_settings().resolved_weights_dir
        resolved = weights.resolve_weights(
            weights.open_clip_weights_name(model_name, tag), weights_dir or Path("."), override=checkpoint
        )

        pcfg = open_clip.get_pretrained_cfg(model_name, tag) or {}
        kwargs: dict[str, Any] = {}
        for key, arg in (("mean", "image_mean"), ("std", "image_std"), ("interpolation", "image_interpolation"),
                         ("resize_mode", "image_resize_mode")):
            if pcfg.get(key) is not None:
                kwargs[arg] = pcfg[key]
        if pcfg.get("quick_gelu") and not model_name.endswith("-quickgelu"):
            kwargs["force_quick_gelu"] = True

        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self.model_name = model_name
        self.pretrained = tag
        self.checkpoint = resolved.path
        self.checkpoint_custom = resolved.custom
        log.info("loading open_clip %s (%s) from %s on %s", model_name, tag, resolved.path, self.device)
        if _is_torchscript(resolved.path):
            # OpenAI's original checkpoints are TorchScript archives, which open_clip's weights_only loading
            # refuses; open_clip's dedicated loader rebuilds the (QuickGELU) architecture from their state dict.
            # Only reached for the checksum-verified manifest file or a checkpoint the user named explicitly.
            model = open_clip.load_openai_model(str(resolved.path), precision="fp32", device=self.device)
            preprocess = open_clip.image_transform(
                model.visual.image_size, is_train=False, mean=kwargs.get("image_mean"), std=kwargs.get("image_std"),
                interpolation=kwargs.get("image_interpolation"), resize_mode=kwargs.get("image_resize_mode"),
            )
        else:
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=str(resolved.path), device=self.device, **kwargs
            )
        model.eval()
        self._torch = torch
        self.model = model
        self.preprocess = preprocess
        self._tokenizer = None
        self.model_id = f"open_clip:{model_name}:{tag}{resolved.id_suffix}"
        with torch.inference_mode():
            size = self._input_size()
            probe = torch.zeros((1, 3, size[0], size[1]), device=self.device)
            self.dim = int(model.encode_image(probe).shape[-1])

    @classmethod
    def from_settings(cls, settings: Any) -> "OpenClipEmbedder":
        return cls(
            settings.clip_model,
            settings.clip_pretrained,
            device=settings.device,
            batch_size=settings.batch_size,
            checkpoint=getattr(settings, "clip_checkpoint", None),
            weights_dir=weights.weights_dir_of(settings),
        )

    def _input_size(self) -> tuple[int, int]:
        size = getattr(self.model.visual, "image_size", 224)
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """RGB uint8 images -> float32 ``(N, dim)``, rows L2-normalised."""
        from PIL import Image

        torch = self._torch
        images = list(images)
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                chunk = images[start : start + self.batch_size]
                batch = torch.stack([self.preprocess(Image.fromarray(as_rgb_uint8(im))) for im in chunk]).to(self.device)
                feats = self.model.encode_image(batch).float()
                feats = torch.nn.functional.normalize(feats, dim=-1)
                out.append(feats.cpu().numpy())
        return np.concatenate(out).astype(np.float32, copy=False)

    def embed_text(self, prompts: Sequence[str]) -> np.ndarray:
        """Text prompts -> float32 ``(N, dim)``, rows L2-normalised (same space as :meth:`embed`)."""
        import open_clip

        torch = self._torch
        prompts = [str(p) for p in prompts]
        if not prompts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._tokenizer is None:
            self._tokenizer = open_clip.get_tokenizer(self.model_name)
        out = []
        with torch.inference_mode():
            for start in range(0, len(prompts), max(self.batch_size, 64)):
                tokens = self._tokenizer(prompts[start : start + max(self.batch_size, 64)]).to(self.device)
                feats = torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)
                out.append(feats.cpu().numpy())
        return np.concatenate(out).astype(np.float32, copy=False)


@register("embedder", "open_clip")
def create_open_clip_embedder(settings: Any) -> OpenClipEmbedder:
    return OpenClipEmbedder.from_settings(settings)
