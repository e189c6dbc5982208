"""Tiny, randomly initialised models built through the real libraries, for offline tests.

Each builder produces something that goes through the same loading code as the
real weights: an open_clip architecture registered with
``open_clip.add_model_config`` plus a state-dict checkpoint file, a
``segment_anything`` ``Sam`` with a two-block image encoder, and Ultralytics
models built from their yaml (random weights, nothing downloaded).
"""

from __future__ import annotations

import json
import os
import tempfile
from functools import partial
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Keep Ultralytics' settings.json out of the user's home directory during tests.
os.environ.setdefault("YOLO_CONFIG_DIR", os.path.join(tempfile.gettempdir(), "matcher-tests-ultralytics"))

TINY_CLIP_NAME = "matcher-tiny-clip-test"
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TINY_SAM_TYPE = "tiny_test"
TINY_SAM_IMG_SIZE = 256


def register_tiny_open_clip(config_dir: Path) -> str:
    """Register the tiny architecture with open_clip (idempotent) and return its model name."""
    import open_clip

    config_dir.mkdir(parents=True, exist_ok=True)
    path = config_dir / f"{TINY_CLIP_NAME}.json"
    path.write_text(json.dumps(TINY_CLIP_CONFIG))
    if TINY_CLIP_NAME not in open_clip.list_models():
        open_clip.add_model_config(path)
    return TINY_CLIP_NAME


def tiny_open_clip(tmp_path: Path, *, seed: int = 0) -> tuple[str, Path]:
    """(model name, checkpoint path): a random tiny CLIP saved as a plain state dict."""
    import open_clip
    import torch

    name = register_tiny_open_clip(tmp_path / "open_clip_configs")
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None)
    checkpoint = tmp_path / f"tiny_clip_{seed}.bin"
    torch.save(model.state_dict(), checkpoint)
    return name, checkpoint


def build_tiny_sam(checkpoint=None, *, img_size: int = TINY_SAM_IMG_SIZE):
    """A ``Sam`` wired like ``segment_anything.build_sam._build_sam`` with tiny numbers (same call signature)."""
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    prompt_dim = 32
    patch = 16
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=2, embed_dim=64, img_size=img_size, mlp_ratio=2, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=2, patch_size=patch, qkv_bias=True, use_rel_pos=True, global_attn_indexes=(1,),
            window_size=4, out_chans=prompt_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim, image_embedding_size=(img_size // patch, img_size // patch),
            input_image_size=(img_size, img_size), mask_in_chans=4,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=prompt_dim, mlp_dim=64, num_heads=2),
            transformer_dim=prompt_dim, iou_head_depth=2, iou_head_hidden_dim=32,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    sam.eval()
    if checkpoint is not None:
        sam.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return sam


def tiny_sam(tmp_path: Path, *, seed: int = 0) -> Path:
    """Checkpoint file (state dict) of a random tiny SAM; build it with :func:`build_tiny_sam`."""
    import torch

    torch.manual_seed(seed)
    sam = build_tiny_sam()
    path = tmp_path / f"tiny_sam_{seed}.pth"
    torch.save(sam.state_dict(), path)
    return path


def _offline_ultralytics():
    from matcher.backends.ultralytics_detector import import_ultralytics

    return import_ultralytics()


def tiny_rtdetr():
    """A randomly initialised RT-DETR-l built from the yaml shipped with Ultralytics (no download)."""
    return _offline_ultralytics().RTDETR("rtdetr-l.yaml")


def tiny_yoloworld():
    """A randomly initialised YOLO-World v2 nano built from its yaml (no download)."""
    return _offline_ultralytics().YOLOWorld("yolov8n-worldv2.yaml")


# The files of the Hugging Face repository CIDAS/clipseg-rd64-refined (weights.MANIFEST's companions).
CLIPSEG_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "tokenizer_config.json",
                 "special_tokens_map.json", "vocab.json", "merges.txt")


def _clip_tokenizer_files(folder: Path) -> None:
    """vocab.json and merges.txt of the real CLIP BPE, from the vocabulary open_clip ships in its wheel."""
    from open_clip.tokenizer import SimpleTokenizer

    bpe = SimpleTokenizer()
    special = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}  # open_clip's names -> HF's
    (folder / "vocab.json").write_text(json.dumps({special.get(k, k): v for k, v in bpe.encoder.items()}))
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))


def tiny_clipseg(folder: Path, *, seed: int = 0) -> Path:
    """A random CLIPSeg (two-layer CLIP towers, 64 px input) saved in the CIDAS repository's file layout."""
    import torch
    from transformers import (CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor, CLIPTokenizer,
                              ViTImageProcessor)

    folder.mkdir(parents=True, exist_ok=True)
    _clip_tokenizer_files(folder)
    config = CLIPSegConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "vocab_size": 49408, "max_position_embeddings": 77},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2,
                       "image_size": 64, "patch_size": 16},
        projection_dim=16, extract_layers=[0, 1, 2], reduce_dim=16, decoder_num_attention_heads=2,
        decoder_intermediate_size=32)
    torch.manual_seed(seed)
    CLIPSegForImageSegmentation(config).eval().save_pretrained(folder)
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    images = ViTImageProcessor(do_resize=True, size={"height": 64, "width": 64},
                               image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    CLIPSegProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    images.save_pretrained(folder)  # preprocessor_config.json, as in the CIDAS repository
    special = folder / "special_tokens_map.json"
    if not special.is_file():
        special.write_text(json.dumps({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                                       "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}))
    for extra in set(p.name for p in folder.iterdir()) - set(CLIPSEG_FILES):  # newer transformers write more
        (folder / extra).unlink()
    missing = [name for name in CLIPSEG_FILES if not (folder / name).is_file()]
    assert not missing, f"tiny CLIPSeg folder lacks {missing}"
    return folder
