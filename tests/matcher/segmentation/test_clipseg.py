"""CLIPSeg free-text prompts: a tiny random CLIPSeg in the CIDAS repository's file layout, found and loaded
the way the real weights are (the manifest folder in the weights directory, or MATCHER_CLIPSEG_DIR)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from matcher.segmentation.cli import seg_app, segment_command
from matcher.segmentation.clipseg import (CALIBRATION_FILE, CLIPSEG_WEIGHTS, ClipSegUnavailableError,
                                          clipseg_probabilities, load_clipseg, read_calibration, segment_text)
from matcher.segmentation.evaluate import DEFAULT_THRESHOLDS
from matcher.settings import Settings
from matcher.weights import MANIFEST, MissingWeightsError
from tests.tiny_models import tiny_clipseg

app = typer.Typer()
app.add_typer(seg_app, name="seg")
app.command("segment")(segment_command)
runner = CliRunner()
SUBDIR = MANIFEST[CLIPSEG_WEIGHTS].subdir


@pytest.fixture(scope="module")
def clipseg_weights(tmp_path_factory):
    """A weights directory holding the tiny CLIPSeg where the manifest puts CIDAS/clipseg-rd64-refined."""
    root = tmp_path_factory.mktemp("weights")
    tiny_clipseg(root / SUBDIR)
    return root


@pytest.fixture
def weights_dir(clipseg_weights, tmp_path, monkeypatch):
    """A private copy (calibration files are written beside the weights) set as MATCHER_WEIGHTS_DIR."""
    root = tmp_path / "weights"
    shutil.copytree(clipseg_weights, root)
    monkeypatch.setenv("MATCHER_WEIGHTS_DIR", str(root))
    return root


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.setattr("matcher.segmentation.model.DEFAULT_MODEL_DIR", tmp_path / "no-default-model")
    for name in ("MATCHER_SEG_MODEL_DIR", "MATCHER_CLIPSEG_DIR", "MATCHER_WEIGHTS_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MATCHER_CONFIG", "/nonexistent/matcher.toml")
    monkeypatch.setenv("MATCHER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MATCHER_DEVICE", "cpu")


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "room.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (45, 61, 3), dtype=np.uint8)).save(path)
    return path


def _segment(photo, out, *args):
    return runner.invoke(app, ["segment", str(photo), "--out", str(out), *args])


def test_free_text_prompt_writes_the_mask_the_library_computes(weights_dir, photo, tmp_path):
    model = load_clipseg(Settings())
    rgb = np.asarray(Image.open(photo).convert("RGB"))
    probs = clipseg_probabilities(model, rgb, ["green velvet armchair"])[0]
    assert probs.shape == (45, 61)
    threshold = float(np.round(np.median(probs), 4))  # about half the photo on, whatever the random weights say
    out = tmp_path / "mask.png"
    result = _segment(photo, out, "--prompt", "Segment the green velvet armchair!", "--backend", "clipseg",
                      "--threshold", str(threshold), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["label"] == "green velvet armchair" and summary["backend"] == "clipseg"
    assert summary["model"] == model.model_id and model.model_id.startswith("clipseg:")
    mask = np.asarray(Image.open(out))
    assert mask.shape == (45, 61) and set(np.unique(mask)) == {0, 255}
    expected = segment_text(rgb, "the green velvet armchair", model, threshold=threshold).mask
    assert np.array_equal(mask, expected)


def test_phrases_in_one_batch_score_as_they_do_alone(weights_dir, photo):
    model = load_clipseg(Settings())
    rgb = np.asarray(Image.open(photo).convert("RGB"))
    both = clipseg_probabilities(model, rgb, ["a tall floor lamp with a linen shade", "lamp"])
    alone = clipseg_probabilities(model, rgb, ["lamp"])
    assert np.abs(both[1] - alone[0]).max() < 1e-5
    assert np.abs(both[0] - both[1]).max() > 1e-4  # the phrase matters


def test_auto_gives_known_labels_to_the_learned_model_and_other_text_to_clipseg(weights_dir, tiny_model_dir, photo,
                                                                                 tmp_path):
    known = _segment(photo, tmp_path / "a.png", "--prompt", "chairs", "--model", str(tiny_model_dir), "--json")
    free = _segment(photo, tmp_path / "b.png", "--prompt", "the green velvet pouffe", "--model", str(tiny_model_dir),
                    "--json")
    assert known.exit_code == 0 and free.exit_code == 0, known.output + free.output
    assert json.loads(known.stdout)["model"].startswith("learned:")
    assert json.loads(free.stdout)["model"].startswith("clipseg:")


def test_without_clipseg_an_unknown_prompt_says_how_to_get_free_text(tiny_model_dir, photo, tmp_path):
    result = _segment(photo, tmp_path / "m.png", "--prompt", "the green velvet pouffe", "--model", str(tiny_model_dir))
    assert result.exit_code == 2 and "known labels are armchair, chair, table" in result.stderr
    assert f"matcher models fetch {CLIPSEG_WEIGHTS}" in result.stderr
    result = _segment(photo, tmp_path / "m.png", "--prompt", "pouffe", "--backend", "clipseg")
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert f"missing model weights {CLIPSEG_WEIGHTS!r}" in result.stderr and "Traceback" not in result.output


def test_clipseg_refuses_box_prompts_and_empty_prompts(weights_dir, photo, tmp_path):
    result = _segment(photo, tmp_path / "m.png", "--box", "1,1,20,20", "--backend", "clipseg")
    assert result.exit_code == 2 and "text prompts only" in result.stderr
    result = _segment(photo, tmp_path / "m.png", "--prompt", "segment the", "--backend", "clipseg")
    assert result.exit_code == 2 and "names nothing to segment" in result.stderr
    result = _segment(photo, tmp_path / "m.png", "--prompt", "lamp", "--backend", "sam")
    assert result.exit_code == 2 and "--backend must be one of auto, learned, clipseg" in result.stderr


def test_incomplete_or_corrupt_folder_is_a_clear_error(weights_dir, photo, tmp_path):
    folder = weights_dir / SUBDIR
    (folder / "vocab.json").unlink()
    with pytest.raises(MissingWeightsError, match="incomplete: vocab.json missing"):
        load_clipseg(Settings())
    shutil.copy(folder / "merges.txt", folder / "vocab.json")  # present but not JSON
    with pytest.raises(ClipSegUnavailableError, match="cannot load CLIPSeg from"):
        load_clipseg(Settings())
    result = _segment(photo, tmp_path / "m.png", "--prompt", "lamp", "--backend", "clipseg")
    assert result.exit_code == 2 and result.stderr.startswith("error: cannot load CLIPSeg from")
    assert "Traceback" not in result.output and not (tmp_path / "m.png").exists()


def test_own_folder_from_the_environment(clipseg_weights, photo, tmp_path, monkeypatch):
    own = tmp_path / "my-clipseg"
    shutil.copytree(clipseg_weights / SUBDIR, own)
    monkeypatch.setenv("MATCHER_CLIPSEG_DIR", str(own))
    model = load_clipseg(Settings())
    assert model.path == own and model.model_id == f"clipseg:{model.sha256[:12]}"
    (own / "model.safetensors").unlink()
    with pytest.raises(MissingWeightsError, match="MATCHER_CLIPSEG_DIR=.* model.safetensors missing"):
        load_clipseg(Settings())


def test_calibrate_on_validation_then_eval_reports_like_the_learned_model(weights_dir, tiny_bench, tmp_path):
    result = runner.invoke(app, ["seg", "calibrate", str(tiny_bench), "--backend", "clipseg"])
    assert result.exit_code == 0, result.output
    record = json.loads((weights_dir / SUBDIR / CALIBRATION_FILE).read_text())
    assert record["threshold"] in DEFAULT_THRESHOLDS and record["val_images"] >= 1
    best = max(record["val_miou_by_threshold"].values())
    assert record["val_miou_by_threshold"][str(record["threshold"])] == best
    model = load_clipseg(Settings())
    assert model.calibrated and model.threshold == record["threshold"]
    assert read_calibration(model.path, "0" * 64) is None  # another file's calibration is never used

    out = tmp_path / "eval.json"
    result = runner.invoke(app, ["seg", "eval", str(tiny_bench), "--backend", "clipseg", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["box_iou"] is None and report["calibrated"] and report["thresholds"]["text"] == model.threshold
    assert {"armchair", "chair", "table"} <= set(report["per_label"])
    assert 0.0 <= report["miou"] <= 1.0 and report["model"] == model.model_id
    assert report["unlabelled_instances"] > 0  # the speaker: no label, reported apart
