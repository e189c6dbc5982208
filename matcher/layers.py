"""A photo taken apart: one RGBA layer per object over a filled background (``matcher layers``).

Pure image work on values the query path already produces (matted cutouts placed in the photo):

- :func:`build_layer_set` orders the objects back to front (the object whose box reaches lower in
  the photo stands nearer the camera in a room photo, so it goes on top) and fills the holes the
  objects leave in the background (OpenCV inpainting);
- :func:`write_pngs`, :func:`write_psd` and :func:`write_manifest` write them out;
- :func:`composite` and :func:`composite_error` check that the layers rebuild the photo.

Layers are cropped to their object's box (plus the matte's margin) with the offset recorded, as an
editor stores them, rather than full-size PNGs that are mostly transparent.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .types import Box

INPAINT_METHODS = ("telea", "ns")
LOW_MASK_SCORE = 0.5  # below this a layer is written with a warning
INPAINT_DILATE_PX = 3  # the matte's soft edge and any halo are filled too


@dataclass(frozen=True)
class LayerObject:
    """One object of the photo, as the query path left it."""

    label: str
    box: Box
    rgba: np.ndarray  # uint8 (h, w, 4): halo-free foreground colours and matted alpha, cropped
    offset: tuple[int, int]  # (x, y) of the crop's top-left corner in the photo
    mask_score: float
    segmenter: str
    flags: tuple[str, ...] = ()
    sku: str | None = None
    match_score: float | None = None


@dataclass(frozen=True)
class Layer:
    name: str  # "armchair_001"
    file: str  # "png/armchair_001.png"
    z: int  # 1 = rearmost object; the background is 0
    obj: LayerObject

    @property
    def warning(self) -> str | None:
        reasons = [f"mask score {self.obj.mask_score:.2f}"] if self.obj.mask_score < LOW_MASK_SCORE else []
        reasons += [f for f in self.obj.flags if f in ("mask_fail", "leakage", "touches_border", "multi_component")]
        return f"{self.name}: low-confidence mask ({', '.join(reasons)})" if reasons else None


@dataclass
class LayerSet:
    photo: np.ndarray  # uint8 (H, W, 3)
    background: np.ndarray  # uint8 (H, W, 3), objects removed and filled
    layers: list[Layer] = field(default_factory=list)  # back to front
    inpaint_method: str = "telea"

    @property
    def height(self) -> int:
        return int(self.photo.shape[0])

    @property
    def width(self) -> int:
        return int(self.photo.shape[1])

    def warnings(self) -> list[str]:
        return [w for w in (layer.warning for layer in self.layers) if w]


def _safe_stem(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")[:40] or "object"


def back_to_front(objects: Sequence[LayerObject]) -> list[LayerObject]:
    """Rearmost first: a box whose bottom edge is higher in the photo stands further away."""
    return sorted(objects, key=lambda o: (o.box.y1, o.box.area))


def full_alpha(obj: LayerObject, height: int, width: int) -> np.ndarray:
    """The object's alpha in photo coordinates, float32 in [0, 1]."""
    alpha = np.zeros((height, width), np.float32)
    x, y = obj.offset
    h, w = obj.rgba.shape[:2]
    alpha[y:y + h, x:x + w] = obj.rgba[..., 3] / 255.0
    return alpha


def fill_background(photo: np.ndarray, hole: np.ndarray, method: str = "telea", radius: int = 5) -> np.ndarray:
    """The photo with ``hole`` (bool) filled by OpenCV inpainting, grown a little to take the halo too."""
    import cv2

    if method not in INPAINT_METHODS:
        raise ValueError(f"unknown inpainting method {method!r}; use one of: {', '.join(INPAINT_METHODS)}")
    if not hole.any():
        return photo.copy()
    kernel = np.ones((2 * INPAINT_DILATE_PX + 1,) * 2, np.uint8)
    grown = cv2.dilate(hole.astype(np.uint8) * 255, kernel)
    flag = cv2.INPAINT_TELEA if method == "telea" else cv2.INPAINT_NS
    bgr = cv2.cvtColor(photo, cv2.COLOR_RGB2BGR)
    return cv2.cvtColor(cv2.inpaint(bgr, grown, radius, flag), cv2.COLOR_BGR2RGB)


def build_layer_set(photo: np.ndarray, objects: Sequence[LayerObject], inpaint_method: str = "telea") -> LayerSet:
    height, width = photo.shape[:2]
    ordered = back_to_front(objects)
    hole = np.zeros((height, width), bool)
    for obj in ordered:
        hole |= full_alpha(obj, height, width) > 0
    layers, seen = [], {}
    for z, obj in enumerate(ordered, start=1):
        stem = _safe_stem(obj.label)
        seen[stem] = seen.get(stem, 0) + 1
        name = f"{stem}_{seen[stem]:03d}"
        layers.append(Layer(name=name, file=f"png/{name}.png", z=z, obj=obj))
    return LayerSet(photo=photo, background=fill_background(photo, hole, inpaint_method), layers=layers,
                    inpaint_method=inpaint_method)


def composite(layer_set: LayerSet) -> np.ndarray:
    """The layers over the background, back to front ("over" with straight alpha), float32 RGB 0..255."""
    out = layer_set.background.astype(np.float32)
    for layer in layer_set.layers:
        x, y = layer.obj.offset
        h, w = layer.obj.rgba.shape[:2]
        alpha = layer.obj.rgba[..., 3:4].astype(np.float32) / 255.0
        region = out[y:y + h, x:x + w]
        out[y:y + h, x:x + w] = layer.obj.rgba[..., :3] * alpha + region * (1.0 - alpha)
    return out


def composite_error(layer_set: LayerSet) -> float:
    """Mean absolute error (0..255, over RGB) between the rebuilt photo and the original where objects were."""
    where = np.zeros((layer_set.height, layer_set.width), bool)
    for layer in layer_set.layers:
        where |= full_alpha(layer.obj, layer_set.height, layer_set.width) > 0
    if not where.any():
        return 0.0
    diff = np.abs(composite(layer_set) - layer_set.photo.astype(np.float32))
    return float(diff[where].mean())


def layer_name(layer: Layer) -> str:
    """The PSD layer name: label and number, and the matched sku when there is one."""
    return f"{layer.name} {layer.obj.sku}" if layer.obj.sku else layer.name


# --- writers -------------------------------------------------------------------------------------

def write_pngs(layer_set: LayerSet, out_dir: Path) -> None:
    from PIL import Image

    (out_dir / "png").mkdir(parents=True, exist_ok=True)
    for layer in layer_set.layers:
        Image.fromarray(layer.obj.rgba, "RGBA").save(out_dir / layer.file)
    Image.fromarray(layer_set.background, "RGB").save(out_dir / "background.png")


def write_psd(layer_set: LayerSet, path: Path) -> None:
    """An 8-bit RGBA PSD, RLE-compressed: the background at the bottom, then the objects back to front."""
    from PIL import Image
    from psd_tools import PSDImage
    from psd_tools.api.layers import PixelLayer
    from psd_tools.constants import Compression

    psd = PSDImage.new("RGBA", (layer_set.width, layer_set.height), depth=8)
    background = Image.fromarray(layer_set.background, "RGB").convert("RGBA")
    psd.append(PixelLayer.frompil(background, psd, "background", 0, 0, Compression.RLE))
    for layer in layer_set.layers:
        x, y = layer.obj.offset
        image = Image.fromarray(layer.obj.rgba, "RGBA")
        psd.append(PixelLayer.frompil(image, psd, layer_name(layer), y, x, Compression.RLE))
    psd.save(str(path))


def manifest(layer_set: LayerSet, photo: str) -> dict:
    return {
        "photo": photo, "width": layer_set.width, "height": layer_set.height,
        "background": {"file": "background.png", "z": 0, "inpainting": f"opencv-{layer_set.inpaint_method}"},
        "layers": [{
            "file": layer.file, "name": layer_name(layer), "label": layer.obj.label,
            "box": [round(v, 1) for v in layer.obj.box.xywh()], "offset": list(layer.obj.offset),
            "size": [int(layer.obj.rgba.shape[1]), int(layer.obj.rgba.shape[0])], "z": layer.z,
            "mask_score": round(float(layer.obj.mask_score), 4), "segmenter": layer.obj.segmenter,
            "flags": list(layer.obj.flags), "sku": layer.obj.sku,
            "match_score": None if layer.obj.match_score is None else round(float(layer.obj.match_score), 4),
            "warning": layer.warning,
        } for layer in layer_set.layers],
    }


def write_manifest(layer_set: LayerSet, photo: str, path: Path) -> dict:
    data = manifest(layer_set, photo)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return data


def write_all(layer_set: LayerSet, photo: str, out_dir: Path) -> dict:
    """png/, background.png, layers.psd and manifest.json in ``out_dir``; returns the manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_pngs(layer_set, out_dir)
    write_psd(layer_set, out_dir / "layers.psd")
    return write_manifest(layer_set, photo, out_dir / "manifest.json")


# --- checks a user can trust ----------------------------------------------------------------------

def psd_problems(psd_path: Path, data: dict, out_dir: Path | None = None) -> list[str]:
    """What differs between the written PSD and the manifest (layer order, names, offsets, alpha); empty when none.

    The PSD is re-opened with psd-tools; each object layer's pixels are compared with its PNG.
    """
    from PIL import Image
    from psd_tools import PSDImage

    psd = PSDImage.open(psd_path)
    layers = list(psd)
    expected = ["background"] + [entry["name"] for entry in data["layers"]]
    found = [layer.name for layer in layers]
    if found != expected:
        return [f"layer names/order {found} differ from the manifest's {expected}"]
    problems = []
    if (psd.width, psd.height) != (data["width"], data["height"]):
        problems.append(f"document {psd.width}x{psd.height}, manifest {data['width']}x{data['height']}")
    for layer, entry in zip(layers[1:], data["layers"]):
        if layer.visible and (layer.left, layer.top) != tuple(entry["offset"]):
            problems.append(f"{entry['name']}: offset {(layer.left, layer.top)} != {tuple(entry['offset'])}")
        if out_dir is not None:
            png = np.asarray(Image.open(out_dir / entry["file"]).convert("RGBA"))
            pixels = np.asarray(layer.topil().convert("RGBA"))
            if pixels.shape != png.shape or not np.array_equal(pixels[..., 3], png[..., 3]):
                problems.append(f"{entry['name']}: alpha differs from {entry['file']}")
    return problems


class GimpUnavailableError(RuntimeError):
    pass


GIMP_COMMANDS = ("gimp-console-2.10", "gimp-console", "gimp")
GIMP_SCRIPT = """(let* ((image (car (gimp-file-load RUN-NONINTERACTIVE {psd} {psd})))
       (count (car (gimp-image-get-layers image)))
       (flat (car (gimp-image-flatten image))))
  (file-png-save-defaults RUN-NONINTERACTIVE image flat {png} {png})
  (gimp-message (string-append "matcher-layers=" (number->string count))))
(gimp-quit 0)
"""


def _scheme_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def gimp_render(psd_path: Path, png_out: Path, timeout: float = 300.0) -> int:
    """Open the PSD in GIMP's batch mode and save its flattened rendering; returns the layer count GIMP saw."""
    import shutil
    import subprocess
    import tempfile

    gimp = next((shutil.which(c) for c in GIMP_COMMANDS if shutil.which(c)), None)
    if gimp is None:
        raise GimpUnavailableError("GIMP is not installed (Debian: apt-get install gimp)")
    script = GIMP_SCRIPT.format(psd=_scheme_string(str(Path(psd_path).resolve())),
                                png=_scheme_string(str(Path(png_out).resolve())))
    with tempfile.TemporaryDirectory(prefix="matcher-gimp-") as home:  # GIMP writes its profile on first start
        env = {"PATH": "/usr/bin:/bin", "HOME": home, "GIMP2_DIRECTORY": str(Path(home) / "gimp")}
        done = subprocess.run([gimp, "-i", "-d", "-f", "--no-shm", "-c", "-b", "-"], input=script, text=True,
                              capture_output=True, timeout=timeout, env=env)
    found = re.search(r"matcher-layers=(\d+)", done.stdout + done.stderr)
    if found is None or not Path(png_out).is_file():
        raise RuntimeError(f"GIMP could not open {psd_path}: {(done.stderr or done.stdout).strip()[-500:]}")
    return int(found.group(1))
