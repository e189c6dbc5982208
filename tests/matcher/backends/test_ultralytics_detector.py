"""Ultralytics detectors built from their yaml (random weights), run with the network switched off."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from matcher.backends.ultralytics_detector import UltralyticsDetector, ensure_ultralytics_offline, import_ultralytics
from tests.tiny_models import tiny_rtdetr, tiny_yoloworld  # sets HF_HUB_OFFLINE and a temporary YOLO_CONFIG_DIR

ensure_ultralytics_offline()  # before the first ultralytics import: it probes DNS at import unless YOLO_OFFLINE=1

torch = pytest.importorskip("torch")
pytest.importorskip("ultralytics")
import_ultralytics()  # undoes the PIL.Image.open patch the plain import above applied for the whole test session

from matcher import registry, weights  # noqa: E402
from matcher.backends.protocols import Detector  # noqa: E402
from matcher.types import Detection  # noqa: E402
from tests.hostile import Planted  # noqa: E402


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch):
    """Any connection or DNS lookup fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def rtdetr_model():
    return tiny_rtdetr()


def _image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)


def _check(dets: list[Detection], detector_id: str, h: int = 240, w: int = 320) -> None:
    assert dets, "conf=0 should keep the top boxes of a random model"
    assert all(isinstance(d, Detection) for d in dets)
    assert [d.score for d in dets] == sorted((d.score for d in dets), reverse=True)
    for d in dets:
        assert d.source == detector_id and isinstance(d.label, str)
        assert 0 <= d.box.x0 < d.box.x1 <= w and 0 <= d.box.y0 < d.box.y1 <= h


def test_offline_flags_and_no_global_side_effects():
    from PIL import Image

    import_ultralytics()
    import ultralytics.utils as uu
    import ultralytics.utils.checks as checks

    assert os.environ["YOLO_OFFLINE"] == "1" and os.environ["YOLO_AUTOINSTALL"] == "false"
    assert uu.ONLINE is False and checks.ONLINE is False and checks.AUTOINSTALL is False
    # Ultralytics' PIL.Image.open wrapper (pip-installs pi-heif on unknown files) has been undone.
    assert Image.open.__module__ == "PIL.Image"


def test_rtdetr_from_yaml_runs_offline(rtdetr_model):
    names = rtdetr_model.names
    table = {str(names[i]): f"category-{i}" for i in range(0, len(names), 2)}  # every other class mapped
    det = UltralyticsDetector(rtdetr_model, kind="rtdetr", weights_name="rtdetr-l-random", category_map=table,
                              conf=0.0, imgsz=320, max_det=8, device="cpu")
    assert isinstance(det, Detector) and det.detector_id == "rtdetr:rtdetr-l-random"
    dets = det.detect(_image())
    _check(dets, det.detector_id)
    assert len(dets) <= 8
    for d in dets:
        assert d.category == table.get(d.label)

    det.keep_unmapped = False
    assert all(d.label in table for d in det.detect(_image()))


def test_rtdetr_loads_pt_through_weights_manager(tmp_path: Path, rtdetr_model):
    """The real path: weights/ultralytics/rtdetr-l.pt resolved by matcher.weights and loaded by RTDETR(path)."""
    settings = SimpleNamespace(resolved_weights_dir=tmp_path / "weights", device="cpu",
                               detector_conf=0.0, detector_imgsz=320)
    with pytest.raises(weights.MissingWeightsError) as info:
        registry.create("detector", "rtdetr", settings)
    msg = str(info.value)
    assert "rtdetr-l.pt" in msg and str(tmp_path / "weights" / "ultralytics") in msg
    assert "matcher models fetch rtdetr-l" in msg

    dest = weights.MANIFEST["rtdetr-l"].path_in(settings.resolved_weights_dir)
    dest.parent.mkdir(parents=True)
    rtdetr_model.save(dest)
    with pytest.raises(weights.UntrustedWeightsError):  # unpinned in the manifest, and nobody vouched for it
        registry.create("detector", "rtdetr", settings)
    settings.trusted_weights = [weights.hash_file(dest)]  # the operator vouches for this exact file
    det = registry.create("detector", "rtdetr", settings)
    assert det.detector_id == "rtdetr:rtdetr-l"
    _check(det.detect(_image()), det.detector_id)


def test_missing_pt_path_is_an_error_not_a_download(tmp_path: Path):
    with pytest.raises(weights.MissingWeightsError):
        UltralyticsDetector.from_weights("rtdetr", tmp_path / "rtdetr-l.pt")
    settings = SimpleNamespace(resolved_weights_dir=tmp_path, device="cpu")
    with pytest.raises(weights.MissingWeightsError, match="yolov8s-worldv2.pt"):
        registry.create("detector", "yoloworld", settings)


def test_yoloworld_prompts_from_text_encoder():
    calls: list[list[str]] = []

    def encoder(prompts):
        calls.append(list(prompts))
        rng = np.random.default_rng(len(prompts))
        return rng.normal(size=(len(prompts), 512)).astype(np.float32)

    det = UltralyticsDetector(tiny_yoloworld(), kind="yoloworld", weights_name="yolov8n-worldv2-random",
                              conf=0.0, imgsz=320, max_det=6, device="cpu", text_encoder=encoder)
    prompts = ["sofa", "armchair", "floor lamp"]
    det.set_classes(prompts, ["Living room", "Living room", None])
    assert calls == [prompts]
    dets = det.detect(_image())
    _check(dets, "yoloworld:yolov8n-worldv2-random")
    for d in dets:
        assert d.label in prompts
        assert d.category == {"sofa": "Living room", "armchair": "Living room", "floor lamp": None}[d.label]

    with pytest.raises(ValueError):
        det.set_classes(["a", "b"], ["x"])
    bad = UltralyticsDetector(tiny_yoloworld(), kind="yoloworld", weights_name="w", device="cpu",
                              text_encoder=lambda p: np.zeros((len(p), 32), np.float32))
    with pytest.raises(ValueError, match="512"):
        bad.set_classes(["sofa"])


def test_set_classes_rejected_for_closed_set(rtdetr_model):
    det = UltralyticsDetector(rtdetr_model, kind="rtdetr", weights_name="x", device="cpu")
    with pytest.raises(TypeError):
        det.set_classes(["sofa"])


def test_a_pickled_checkpoint_nobody_vouched_for_is_not_loaded(tmp_path):
    import pickle

    from matcher.settings import Settings

    marker = tmp_path / "pwned"
    crafted = tmp_path / "weights" / "ultralytics" / "rtdetr-l.pt"  # where the manifest file would be
    crafted.parent.mkdir(parents=True)
    crafted.write_bytes(pickle.dumps({"model": Planted(marker)}))
    settings = Settings(data_dir=tmp_path, device="cpu")
    with pytest.raises(weights.UntrustedWeightsError, match="MATCHER_TRUSTED_WEIGHTS"):
        UltralyticsDetector.from_settings(settings, "rtdetr")  # the manifest pins no checksum for it
    elsewhere = tmp_path / "mine.pt"
    elsewhere.write_bytes(crafted.read_bytes())
    with pytest.raises(weights.UntrustedWeightsError, match="pickled checkpoint"):
        UltralyticsDetector.from_settings(settings.model_copy(update={"detector_checkpoint": elsewhere}), "rtdetr")
    with pytest.raises(weights.UntrustedWeightsError):
        UltralyticsDetector.from_weights("rtdetr", elsewhere)
    assert not marker.exists()
