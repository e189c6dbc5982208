"""Bad arguments and settings give one clear line and a documented exit code, never a traceback."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from matcher.cli import app


@pytest.fixture
def cli_env(db_settings, monkeypatch):
    for key, value in {"MATCHER_DATABASE_URL": db_settings.database_url, "MATCHER_DATA_DIR": str(db_settings.data_dir),
                       "MATCHER_BACKEND": db_settings.backend}.items():
        monkeypatch.setenv(key, value)
    return db_settings


@pytest.mark.parametrize("args", [
    ["runs", "--limit", "-1"],
    ["index", "catalog.jsonl", "--limit", "-1"],
    ["index", "catalog.jsonl", "--workers", "0"],
    ["match", "photo.jpg", "--top-k", "0"],
    ["prune-uploads", "--older-than-days", "-1"],
    ["prune-uploads", "--older-than-days", "inf"],
    ["prune-uploads", "--older-than-days", "nan"],
    ["review", "--port", "70000"],
])
def test_out_of_range_options_are_refused(args, tmp_path, monkeypatch):
    monkeypatch.setenv("MATCHER_DATA_DIR", str(tmp_path))
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("variable, value", [("MATCHER_TOP_N", "-1"), ("MATCHER_EF_SEARCH", "5000"),
                                             ("MATCHER_BATCH_SIZE", "0")])
def test_invalid_settings_are_named_in_one_line(variable, value, tmp_path, monkeypatch):
    monkeypatch.setenv("MATCHER_DATA_DIR", str(tmp_path))
    monkeypatch.setenv(variable, value)
    result = CliRunner().invoke(app, ["runs"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert variable in result.output and "Traceback" not in result.output


def test_a_run_where_every_row_failed_exits_non_zero(cli_env, tmp_path):
    catalog = tmp_path / "catalog.jsonl"
    catalog.write_text("".join(json.dumps({"sku": f"p{i}", "image": f"missing{i}.jpg"}) + "\n" for i in range(3)))
    result = CliRunner().invoke(app, ["index", str(catalog), "--no-progress"])
    assert result.exit_code == 1, result.output
    assert "all 3 catalog rows failed" in result.output


def test_evaluations_check_their_inputs_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("MATCHER_DATA_DIR", str(tmp_path / "data"))
    runner = CliRunner()
    missing = tmp_path / "no-such-bench"
    for args in (["eval", str(missing), "--use-gt-boxes", "--json", str(tmp_path / "out.json")],
                 ["eval-masks", str(missing)],
                 ["rerank", "train", "--source", "bench", "--dataset", str(missing)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "not a bench-format data set" in result.output, result.output

    bench = tmp_path / "bench"
    (bench / "catalog").mkdir(parents=True)
    (bench / "scenes").mkdir()
    (bench / "catalog" / "products.jsonl").write_text(json.dumps({"sku": "a", "image": "gone.jpg", "alpha": "gone.png"}) + "\n")
    (bench / "scenes" / "instances.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    into_nowhere = runner.invoke(app, ["eval-masks", str(bench), "--json", str(tmp_path / "nowhere" / "out.json")])
    assert into_nowhere.exit_code == 2 and "does not exist" in into_nowhere.output
    unknown = runner.invoke(app, ["eval", str(bench), "--json", str(tmp_path / "o.json"), "--detector", "nope"])
    assert unknown.exit_code == 2 and "unknown detector nope" in unknown.output
    unknown = runner.invoke(app, ["eval-masks", str(bench), "--segmenter", "nope"])
    assert unknown.exit_code == 2 and "unknown segmenter nope" in unknown.output
    nothing_loads = runner.invoke(app, ["eval-masks", str(bench), "--backend", "classical"])
    assert nothing_loads.exit_code == 1 and "no catalog image" in nothing_loads.output


def test_the_deep_tier_without_weights_is_one_message(cli_env, tmp_path):
    catalog = tmp_path / "catalog.jsonl"
    catalog.write_text(json.dumps({"sku": "p", "image": "p.jpg"}) + "\n")
    result = CliRunner().invoke(app, ["index", str(catalog), "--backend", "deep", "--no-progress"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert "missing model weights" in result.output and "matcher models fetch" in " ".join(result.output.split())
