"""``matcher segment`` and ``matcher seg eval|export|train`` through a Typer app wired as matcher/cli.py will wire them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from matcher.segmentation.cli import seg_app, segment_command

app = typer.Typer()
app.add_typer(seg_app, name="seg")
app.command("segment")(segment_command)
runner = CliRunner()


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "room.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (45, 61, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(autouse=True)
def _no_configured_model(monkeypatch, tmp_path):
    monkeypatch.setattr("matcher.segmentation.model.DEFAULT_MODEL_DIR", tmp_path / "no-default-model")
    monkeypatch.delenv("MATCHER_SEG_MODEL_DIR", raising=False)
    monkeypatch.setenv("MATCHER_CONFIG", "/nonexistent/matcher.toml")


def test_segment_prompt_writes_a_full_size_binary_png(tiny_model_dir, photo, tmp_path):
    out = tmp_path / "mask.png"
    result = runner.invoke(app, ["segment", str(photo), "--prompt", "segment the armchair", "--out", str(out),
                                 "--model", str(tiny_model_dir), "--threshold", "0.0001", "--json"])
    assert result.exit_code == 0, result.output
    mask = np.asarray(Image.open(out))
    assert mask.shape == (45, 61) and set(np.unique(mask)) <= {0, 255} and mask.max() == 255
    summary = json.loads(result.stdout)
    assert summary["label"] == "armchair" and summary["regions"] and summary["model"].startswith("learned:")


def test_segment_boxes_are_repeatable(tiny_model_dir, photo, tmp_path):
    out = tmp_path / "mask.png"
    result = runner.invoke(app, ["segment", str(photo), "--box", "2,2,20,20", "--box", "30,10,25,30", "--out", str(out),
                                 "--model", str(tiny_model_dir), "--threshold", "0.0001"])
    assert result.exit_code == 0, result.output
    mask = np.asarray(Image.open(out))
    assert mask.shape == (45, 61) and mask[:, 58:].max() == 0 and mask[5, 5] == 255


def test_model_dir_from_the_environment(tiny_model_dir, photo, tmp_path, monkeypatch):
    monkeypatch.setenv("MATCHER_SEG_MODEL_DIR", str(tiny_model_dir))
    result = runner.invoke(app, ["segment", str(photo), "--prompt", "chairs", "--out", str(tmp_path / "m.png")])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("args, message", [
    (["--prompt", "segment the spaceship"], "known labels are armchair, chair, table"),
    (["--prompt", "the sofa"], "does not know"),
    (["--box", "1,2,3"], "x,y,w,h"),
    (["--box", "1,2,0,5"], "positive width"),
    ([], "either --prompt"),
    (["--prompt", "chair", "--box", "1,1,5,5"], "either --prompt"),
    (["--prompt", "chair", "--threshold", "1.5"], "between 0 and 1"),
])
def test_bad_input_is_one_line_and_exit_2(tiny_model_dir, photo, tmp_path, args, message):
    result = runner.invoke(app, ["segment", str(photo), "--out", str(tmp_path / "m.png"), "--model",
                                 str(tiny_model_dir), *args])
    assert result.exit_code == 2
    assert message in result.stderr and result.stderr.startswith("error: ") and "Traceback" not in result.output


def test_lossy_output_and_unreadable_photo(tiny_model_dir, photo, tmp_path):
    result = runner.invoke(app, ["segment", str(photo), "--prompt", "chair", "--out", str(tmp_path / "m.jpg"),
                                 "--model", str(tiny_model_dir)])
    assert result.exit_code == 2 and ".png" in result.stderr
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    result = runner.invoke(app, ["segment", str(bad), "--prompt", "chair", "--out", str(tmp_path / "m.png"),
                                 "--model", str(tiny_model_dir)])
    assert result.exit_code == 2 and result.stderr.startswith("error: ")


def test_missing_model_says_how_to_train_one(photo, tmp_path):
    result = runner.invoke(app, ["segment", str(photo), "--prompt", "chair", "--out", str(tmp_path / "m.png"),
                                 "--model", str(tmp_path / "none")])
    assert result.exit_code == 2 and "matcher seg train DATASET --out MODEL_DIR" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_seg_eval_writes_the_json_report(tiny_model_dir, tiny_bench, tmp_path):
    out = tmp_path / "eval.json"
    result = runner.invoke(app, ["seg", "eval", str(tiny_bench), "--model", str(tiny_model_dir), "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert {"miou", "dice", "box_iou", "per_label"} <= set(report)


def test_seg_eval_and_train_refuse_a_folder_that_is_not_a_bench(tiny_model_dir, tmp_path):
    result = runner.invoke(app, ["seg", "eval", str(tmp_path), "--model", str(tiny_model_dir), "--json",
                                 str(tmp_path / "e.json")])
    assert result.exit_code == 2 and "not a bench-format data set" in result.stderr
    result = runner.invoke(app, ["seg", "train", str(tmp_path), "--out", str(tmp_path / "m")])
    assert result.exit_code == 2 and "not a bench-format data set" in result.stderr


@pytest.mark.parametrize("option", ["--seed", "--split-seed"])
def test_seg_train_refuses_a_negative_seed_by_name(tiny_bench, tmp_path, option):
    result = runner.invoke(app, ["seg", "train", str(tiny_bench), "--out", str(tmp_path / "m"), option, "-1"])
    assert result.exit_code == 2 and option in result.stderr
    assert not (tmp_path / "m").exists()


def test_seg_train_passes_patience_and_the_moving_average_to_training(tiny_bench, tmp_path, monkeypatch):
    runs = []

    def fake_training(dataset, out, opts, report):
        runs.append(opts)
        return {"model_id": "learned:test", "test": {"miou": 0.5, "dice": 0.6, "box_iou": 0.7}}

    monkeypatch.setattr("matcher.segmentation.train.train_model", fake_training)
    result = runner.invoke(app, ["seg", "train", str(tiny_bench), "--out", str(tmp_path / "m"), "--patience", "9",
                                 "--ema-decay", "0.998"])
    assert result.exit_code == 0, result.stderr
    assert (runs[0].patience, runs[0].ema_decay) == (9, 0.998)


@pytest.mark.parametrize(("option", "value"), [("--patience", "0"), ("--ema-decay", "1")])
def test_seg_train_refuses_an_out_of_range_stopping_option_by_name(tiny_bench, tmp_path, option, value):
    result = runner.invoke(app, ["seg", "train", str(tiny_bench), "--out", str(tmp_path / "m"), option, value])
    assert result.exit_code == 2 and option in result.stderr
    assert not (tmp_path / "m").exists()


def test_seg_train_refuses_copy_paste_with_nothing_to_paste(tiny_bench, tmp_path):
    result = runner.invoke(app, ["seg", "train", str(tiny_bench), "--out", str(tmp_path / "m"), "--paste-share", "0.5",
                                 "--no-paste-seen"])
    assert result.exit_code == 2 and "--no-paste-seen leaves nothing to paste" in result.stderr
    assert not (tmp_path / "m").exists()


def test_seg_train_refuses_an_unknown_encoder_variant(tiny_bench, tmp_path):
    result = runner.invoke(app, ["seg", "train", str(tiny_bench), "--out", str(tmp_path / "m"), "--variant", "lite9"])
    assert result.exit_code == 2 and "choose lite0, lite1 or lite2" in result.stderr
    assert not (tmp_path / "m").exists()


def test_seg_export_onnx_of_a_box_context_model_takes_the_other_boxes_map(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import dataclasses

    import torch

    from matcher.segmentation.model import build_segnet, save_model_dir

    from .conftest import tiny_config

    torch.manual_seed(0)
    config = dataclasses.replace(tiny_config(), box_context=True)
    save_model_dir(build_segnet(config, imagenet=False).eval(), config, tmp_path / "m", card="# tiny\n")
    out = tmp_path / "model.onnx"
    result = runner.invoke(app, ["seg", "export", "--onnx", str(out), "--model", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output  # the parity check (random maps included) passed
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image", "context"]


def test_seg_export_onnx_matches_torch(tiny_model_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    out = tmp_path / "model.onnx"
    result = runner.invoke(app, ["seg", "export", "--onnx", str(out), "--model", str(tiny_model_dir)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and "max |onnxruntime - torch|" in result.stdout
