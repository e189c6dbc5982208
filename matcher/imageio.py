"""Safe image loading: every odd input becomes 8-bit RGB or a clear ``ImageLoadError``.

Handles EXIF orientation, palette/CMYK/16-bit/greyscale/alpha modes, animated
files (first frame), truncated or corrupt files and decompression bombs.
"""

from __future__ import annotations

import hashlib
import io
import urllib.request
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .types import LoadedImage

# A truncated file must fail, not decode as grey padding.
ImageFile.LOAD_TRUNCATED_IMAGES = False

DEFAULT_MAX_PIXELS = 80_000_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


class ImageLoadError(ValueError):
    """An image could not be used; the message says which and why."""


def read_bytes(source: str | Path, max_bytes: int = DEFAULT_MAX_BYTES, timeout: float = 20.0) -> bytes:
    """Read a local file or an http(s) URL, refusing anything larger than ``max_bytes``."""
    text = str(source)
    try:
        if text.startswith(("http://", "https://")):
            with urllib.request.urlopen(text, timeout=timeout) as response:  # noqa: S310 (scheme checked)
                data = response.read(max_bytes + 1)
        else:
            path = Path(text)
            if not path.is_file():
                raise ImageLoadError(f"{text}: file not found")
            if path.stat().st_size > max_bytes:
                raise ImageLoadError(f"{text}: file is {path.stat().st_size} bytes, over the {max_bytes} byte limit")
            data = path.read_bytes()
    except ImageLoadError:
        raise
    except OSError as exc:
        raise ImageLoadError(f"{text}: cannot read ({exc})") from exc
    if len(data) > max_bytes:
        raise ImageLoadError(f"{text}: over the {max_bytes} byte limit")
    if not data:
        raise ImageLoadError(f"{text}: empty file")
    return data


def decode_image(data: bytes, source: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Decode bytes into an upright 8-bit RGB image."""
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageLoadError(f"{source}: {width}x{height} pixels is over the {max_pixels} pixel limit")
            image.seek(0)  # animated files: the first frame is the product shot
            image.load()
            original_mode = image.mode
            transposed = ImageOps.exif_transpose(image)
            exif_transposed = transposed is not image and transposed.size != image.size or _has_rotation(image)
            rgb, had_alpha = _to_rgb8(transposed)
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(f"{source}: decompression bomb refused ({exc})") from exc
    except (UnidentifiedImageError, ImportError) as exc:
        # ImportError: a wrapper around Image.open (Ultralytics' HEIF one) missing its decoder package.
        raise ImageLoadError(f"{source}: not a recognised image format") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"{source}: corrupt or truncated image ({exc})") from exc
    if rgb.shape[0] < 8 or rgb.shape[1] < 8:
        raise ImageLoadError(f"{source}: image is only {rgb.shape[1]}x{rgb.shape[0]} pixels")
    return LoadedImage(rgb=rgb, source=source, sha256=sha256, original_mode=original_mode,
                       exif_transposed=exif_transposed, had_alpha=had_alpha)


def load_image(source: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES) -> LoadedImage:
    return decode_image(read_bytes(source, max_bytes=max_bytes), source=str(source), max_pixels=max_pixels)


def _has_rotation(image: Image.Image) -> bool:
    try:
        return image.getexif().get(0x0112, 1) not in (1, None)
    except Exception:  # noqa: BLE001 - broken EXIF is not a reason to reject the pixels
        return False


def _to_rgb8(image: Image.Image) -> tuple[np.ndarray, bool]:
    """Normalise any PIL mode to uint8 RGB; transparent pixels go onto white."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
        grey = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.dstack([grey] * 3), False
    if mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
        alpha = rgba[..., 3:4] / 255.0
        rgb = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
        return np.clip(rgb + 0.5, 0, 255).astype(np.uint8), bool((alpha < 1).any())
    if mode != "RGB":
        image = image.convert("RGB")  # CMYK, L, 1, YCbCr, LAB, HSV
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array), False


def as_rgb8(image: np.ndarray) -> np.ndarray:
    """Any grey, RGB or RGBA array (uint8, or float in 0..1) as contiguous RGB uint8: what segmenters take."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.dstack([arr] * 3)
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        scale = 255.0 if arr.dtype.kind == "f" and arr.max(initial=0) <= 1.0 else 1.0
        arr = np.clip(arr.astype(np.float32) * scale + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)
