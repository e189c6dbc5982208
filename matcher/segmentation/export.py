"""``matcher seg export --onnx``: the network as ONNX, checked against torch with onnxruntime.

The exported graph takes a normalised float image batch ``image`` ``(N, 3, H, W)`` (H, W multiples of
32), and for a ``box_context`` model also the other-boxes maps ``context`` ``(N, 1, H, W)``, and returns
the logits ``(N, 1 + L, H, W)``; preprocessing, thresholds and labels stay in
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
    channels = {"image": 3, "context": 1} if cfg.box_context else {"image": 3}  # the graph's inputs, in order
    names = list(channels)
    examples = tuple(torch.zeros(2, c, cfg.box_size, cfg.box_size) for c in channels.values())
    axes = {name: {0: "batch", 2: "height", 3: "width"} for name in names + ["logits"]}
    # The TorchScript exporter: a few seconds, where the dynamo one took most of a minute for the same graph.
    torch.onnx.export(net, examples, str(path), input_names=names, output_names=["logits"], opset_version=opset,
                      dynamo=False, dynamic_axes=axes)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diffs = [parity(net, session, shape) for shape in ((2, 3, cfg.box_size, cfg.box_size), (1, 3, 96, 128))]
    worst = float(max(diffs))
    if worst > PARITY_TOLERANCE:
        raise ValueError(f"onnxruntime and torch disagree by {worst:.2e} in probability (> {PARITY_TOLERANCE})")
    return {"path": str(path), "max_abs_diff": worst, "opset": opset}


def parity(net, session, shape: tuple[int, ...], seed: int = 0) -> float:
    """Largest |probability difference| on a random image batch (and a random other-boxes map when the graph
    takes one)."""
    import torch

    rng = np.random.default_rng(seed)
    inputs = {"image": rng.standard_normal(shape).astype(np.float32)}
    if len(session.get_inputs()) > 1:
        inputs["context"] = (rng.random((shape[0], 1, *shape[2:])) < 0.3).astype(np.float32)
    with torch.inference_mode():
        expected = torch.sigmoid(net(*(torch.from_numpy(v) for v in inputs.values()))).numpy()
    got = 1.0 / (1.0 + np.exp(-session.run(None, inputs)[0]))
    return float(np.abs(got - expected).max())
