"""Compact byte encodings for masks, mattes and cutouts stored in the database."""

from __future__ import annotations

import cv2
import numpy as np


PNG_COMPRESSION = 3


def encode_png(array: np.ndarray) -> bytes:
    """bool/uint8 greyscale, RGB or RGBA array -> PNG bytes (RGB order in, as everywhere)."""
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = cv2.cvtColor(array, cv2.COLOR_RGBA2BGRA)
    # zlib level 3: measured on catalog cutouts, 2.3x faster to write than level 6 for 14% more bytes.
    ok, buffer = cv2.imencode(".png", np.ascontiguousarray(array), [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not ok:
        raise ValueError("PNG encoding failed")
    return buffer.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ValueError("not a PNG")
    if array.ndim == 3 and array.shape[2] == 3:
        return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    if array.ndim == 3 and array.shape[2] == 4:
        return cv2.cvtColor(array, cv2.COLOR_BGRA2RGBA)
    return array


def alpha_to_uint8(alpha: np.ndarray) -> np.ndarray:
    """Quantise a ``[0, 1]`` alpha to ``0..255``; an exact 0 stays 0, an exact 1 becomes 255."""
    return np.clip(np.asarray(alpha, dtype=np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
