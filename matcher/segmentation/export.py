"""``matcher seg export --onnx``: the network as ONNX, checked against torch with onnxruntime.

The exported graph takes a normalised float image batch ``(N, 3, H, W)`` (H, W multiples of 32)
and returns the logits ``(N, 1 + L, H, W)``; preprocessing, thresholds and labels stay in
config.json beside it.  Needs the optional packages ``onnx``, ``onnxscript`` and ``onnxruntime``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .model import SegModel

PARITY_TOLERANCE = 1e-3  # largest accepted |probability difference| between onnxruntime and torch


class ExportUnavailableError(RuntimeError):
    pass


def _require_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError as exc:
        raise ExportUnavailableError("ONNX export needs onnx, onnxscript and onnxruntime: "
                                     "pip install onnx onnxscript onnxruntime") from exc
    return onnxruntime


def export_onnx(model: SegModel, path: Path | str, opset: int = 18) -> dict[str, Any]:
    """Write ``path`` and return the parity check on a box-size and a photo-size input."""
    import torch

    ort = _require_onnx()
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"cannot write {path}: folder {path.parent} does not exist")
    net = model.net.float().eval().cpu()
    cfg = model.config
    example = torch.zeros(2, 3, cfg.box_size, cfg.box_size)
    # The TorchScript exporter: a few seconds, where the dynamo one took most of a minute for the same graph.
    torch.onnx.export(net, (example,), str(path), input_names=["image"], output_names=["logits"], opset_version=opset,
                      dynamo=False, dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                                  "logits": {0: "batch", 2: "height", 3: "width"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diffs = [parity(net, session, shape) for shape in ((2, 3, cfg.box_size, cfg.box_size), (1, 3, 96, 128))]
    worst = float(max(diffs))
    if worst > PARITY_TOLERANCE:
        raise ValueError(f"onnxruntime and torch disagree by {worst:.2e} in probability (> {PARITY_TOLERANCE})")
    return {"path": str(path), "max_abs_diff": worst, "opset": opset}


def parity(net, session, shape: tuple[int, ...], seed: int = 0) -> float:
    import torch

    x = torch.from_numpy(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))
    with torch.inference_mode():
        expected = torch.sigmoid(net(x)).numpy()
    got = 1.0 / (1.0 + np.exp(-session.run(None, {"image": x.numpy()})[0]))
    return float(np.abs(got - expected).max())
