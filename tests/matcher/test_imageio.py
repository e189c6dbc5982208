"""Safe decoding of awkward real image files written with Pillow."""

import io

import numpy as np
import pytest
from PIL import Image

from matcher.imageio import ImageLoadError, decode_image, load_image


def _save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _gradient(width=64, height=32) -> np.ndarray:
    x = np.linspace(0, 255, width, dtype=np.uint8)
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[..., 0] = x
    rgb[..., 1] = 255 - x
    rgb[: height // 2, :, 2] = 200
    return rgb


def test_exif_orientation_is_applied():
    rgb = _gradient(64, 32)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    data = _save(Image.fromarray(rgb), "JPEG", quality=95, exif=exif.tobytes())
    loaded = decode_image(data)
    assert loaded.rgb.shape == (64, 32, 3)  # width and height swapped
    assert loaded.exif_transposed


def test_cmyk_jpeg_becomes_rgb():
    data = _save(Image.fromarray(_gradient()).convert("CMYK"), "JPEG", quality=95)
    loaded = decode_image(data)
    assert loaded.original_mode == "CMYK"
    assert loaded.rgb.dtype == np.uint8 and loaded.rgb.shape == (32, 64, 3)
    # The red ramp survives the round trip within JPEG tolerance.
    assert abs(int(loaded.rgb[5, 60, 0]) - 240) < 25


def test_sixteen_bit_png_is_scaled_to_eight_bits():
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (32, 1))
    data = _save(Image.fromarray(ramp), "PNG")
    loaded = decode_image(data)
    assert loaded.rgb.dtype == np.uint8
    assert loaded.rgb[0, 0, 0] == 0 and loaded.rgb[0, -1, 0] == 255


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (32, 32), color) for color in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50)
    loaded = decode_image(buffer.getvalue())
    assert loaded.rgb[16, 16, 0] > 200 and loaded.rgb[16, 16, 2] < 50


def test_transparent_png_is_composited_on_white():
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[8:24, 8:24] = (200, 10, 10, 255)
    loaded = decode_image(_save(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert loaded.had_alpha
    assert tuple(loaded.rgb[0, 0]) == (255, 255, 255)
    assert tuple(loaded.rgb[16, 16]) == (200, 10, 10)


def test_truncated_jpeg_is_refused():
    data = _save(Image.fromarray(_gradient(256, 256)), "JPEG", quality=90)
    with pytest.raises(ImageLoadError, match="truncated|corrupt"):
        decode_image(data[: len(data) // 2], source="half.jpg")


def test_garbage_bytes_are_refused():
    with pytest.raises(ImageLoadError, match="not a recognised image"):
        decode_image(b"this is not an image at all" * 10, source="junk.jpg")


def test_decompression_bomb_is_refused_before_decoding():
    data = _save(Image.new("L", (5000, 5000)), "PNG")
    with pytest.raises(ImageLoadError, match="pixel limit"):
        decode_image(data, source="bomb.png", max_pixels=1_000_000)


def test_missing_and_oversized_files(tmp_path):
    with pytest.raises(ImageLoadError, match="file not found"):
        load_image(tmp_path / "nope.jpg")
    big = tmp_path / "big.png"
    big.write_bytes(_save(Image.fromarray(_gradient()), "PNG"))
    with pytest.raises(ImageLoadError, match="byte limit"):
        load_image(big, max_bytes=100)
