"""Pick the torch device for a ``device`` setting.

``"auto"`` means CUDA when available, else Apple MPS when available, else CPU.
An explicit device that is not available is an error, never a silent switch to
another device (a run that was meant to use the GPU should say so loudly).
"""

from __future__ import annotations


def resolve_device(setting: str | None = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` / ``"mps"`` / ``"cpu"``; explicit names are checked and returned as given."""
    import torch

    value = (setting or "auto").strip().lower()
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps is not None and mps.is_available())
    if value == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if mps_ok:
            return "mps"
        return "cpu"
    if value == "cpu":
        return "cpu"
    if value.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {setting!r} requested but CUDA is not available (set MATCHER_DEVICE=auto or cpu)")
        if ":" in value:
            index = int(value.split(":", 1)[1])
            if index >= torch.cuda.device_count():
                raise RuntimeError(f"device {setting!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
        return value
    if value == "mps":
        if not mps_ok:
            raise RuntimeError(f"device {setting!r} requested but MPS is not available (set MATCHER_DEVICE=auto or cpu)")
        return "mps"
    raise ValueError(f"unknown device {setting!r}; use auto, cpu, cuda, cuda:N or mps")
