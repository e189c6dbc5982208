"""The app's pure helpers: drawing boxes and mask outlines; the `matcher review` command line and environment."""

from __future__ import annotations

import os
from unittest import mock

import numpy as np

from matcher.settings import Settings
from matcher.types import Box
from ui.drawing import STATUS_COLOURS, Overlay, annotate, checkerboard_composite, crop
from ui.launch import APP_PATH, launch_command, launch_env


def test_annotate_draws_box_and_mask_outline_without_touching_the_input():
    photo = np.full((200, 300, 3), 40, np.uint8)
    mask = np.zeros((200, 300), bool)
    mask[60:140, 100:180] = True
    out = annotate(photo, [Overlay(Box(90, 50, 200, 150), "7", mask, "decided")])
    assert (photo == 40).all() and out.shape == photo.shape and out.dtype == np.uint8
    green = np.all(out == STATUS_COLOURS["decided"], axis=-1)
    assert green[100, 90] and green[149, 150]  # box edges
    assert green[100, 100] or green[100, 101]  # the mask's outline
    assert not green[100, 140]  # inside the mask: untouched
    assert (out[100, 140] == 40).all()


def test_annotate_ignores_masks_of_another_size_and_boxes_outside():
    photo = np.zeros((50, 60, 3), np.uint8)
    out = annotate(photo, [Overlay(Box(-10, -10, 500, 500), "", np.ones((5, 5), bool))])
    assert out.shape == photo.shape


def test_crop_and_checkerboard():
    photo = np.arange(100 * 100 * 3, dtype=np.uint32).reshape(100, 100, 3).astype(np.uint8)
    assert crop(photo, Box(40, 40, 60, 60), margin=0.5).shape == (40, 40, 3)
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:8, :, 3] = 255
    board = checkerboard_composite(rgba)
    assert (board[:8] == [255, 0, 0]).all() and len(np.unique(board[8:].reshape(-1, 3), axis=0)) == 2


def test_launch_env_gives_the_app_the_same_settings(tmp_path):
    settings = Settings(data_dir=tmp_path / "d", database_url="postgresql://u@/db?host=/tmp", backend="classical",
                        review_max_failed_sign_ins=3, review_detectors=["rtdetr"], composite_background=(1, 2, 3),
                        max_upload_bytes=5_000_000)
    env = launch_env(settings, base={})
    with mock.patch.dict(os.environ, env, clear=True):
        seen = Settings()
    assert seen.data_dir == settings.data_dir.resolve() and seen.database_url == settings.database_url
    assert seen.review_max_failed_sign_ins == 3 and seen.review_detectors == ["rtdetr"]
    assert seen.composite_background == (1, 2, 3) and seen.max_upload_bytes == 5_000_000
    command = launch_command(settings, port=9999, headless=True, address="127.0.0.1")
    assert command[1:5] == ["-m", "streamlit", "run", str(APP_PATH)]
    assert command[command.index("--server.maxUploadSize") + 1] == "5"
    assert command[command.index("--server.address") + 1] == "127.0.0.1"
