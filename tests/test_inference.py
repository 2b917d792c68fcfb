"""Inference on a finished run: predict warns when new images are not the run's shape."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from smcluster.inference import InputShapeWarning, predict_paths


def _npz(path, images: np.ndarray):
    np.savez(path, images=images)
    return path


def test_predict_paths_warns_about_resized_npz_images(brief_run, tmp_path) -> None:
    """The brief run takes 16 x 16 grey images; 20 x 20 RGB ones are resized with a warning
    naming both shapes, and images of the run's shape pass without one."""
    rng = np.random.default_rng(0)
    big = _npz(tmp_path / "big.npz", rng.integers(0, 255, (5, 20, 20, 3), dtype=np.uint8))
    with pytest.warns(InputShapeWarning, match="resized 20 x 20 RGB images to the run's 16 x 16"):
        assert predict_paths(brief_run.run_dir_, [big], output=tmp_path / "a.csv") == 5
    same = _npz(tmp_path / "same.npz", rng.integers(0, 255, (5, 16, 16), dtype=np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputShapeWarning)
        assert predict_paths(brief_run.run_dir_, [same], output=tmp_path / "b.csv") == 5


def test_predict_array_of_another_shape_warns(brief_run) -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (4, 16, 16, 3), dtype=np.uint8)
    with pytest.warns(
        InputShapeWarning, match="converted 16 x 16 RGB images to the run's 16 x 16 grey"
    ):
        assert brief_run.predict(rgb).shape == (4,)
