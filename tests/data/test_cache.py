"""Images resized once: the lazy folder's cache and the cost of resizing at load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from smcluster.config import Config
from smcluster.data import from_arrays, load_dataset
from smcluster.data.cache import open_image_cache, write_image_cache
from smcluster.data.folders import load_folder
from smcluster.data.imageset import FileImageSet, TensorImageSet
from smcluster.pipeline import run_pipeline


@pytest.fixture
def photo_folder(tmp_path):
    """60 RGB pictures of 48 x 40 px (not square, not the working size) in 3 class folders."""
    rng = np.random.default_rng(0)
    for i in range(60):
        folder = tmp_path / "photos" / f"class{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        pixels[:, : 8 * (i % 3 + 1)] = 255  # something to tell the classes apart
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return tmp_path / "photos"


def test_the_cache_holds_the_pixels_the_lazy_reader_gives(photo_folder, tmp_path) -> None:
    lazy = load_folder(photo_folder, image_size=16, channels=3, lazy=True)
    assert isinstance(lazy, FileImageSet)
    cost = write_image_cache(lazy, tmp_path / "cache.npy")
    cached = open_image_cache(lazy, tmp_path / "cache.npy")
    assert isinstance(cached, TensorImageSet) and cached.as_tensor().shape == (60, 3, 16, 16)
    expected = torch.stack([lazy[i][0] for i in range(len(lazy))])
    assert torch.equal(cached.as_tensor(), expected)
    assert cached.ids == lazy.ids and np.array_equal(cached.labels, lazy.labels)
    assert cost.bytes_after == 60 * 3 * 16 * 16 and cost.bytes_before > 0
    assert not (tmp_path / ".cache.npy.tmp").exists()


def test_a_cache_of_other_images_is_refused(photo_folder, tmp_path) -> None:
    lazy = load_folder(photo_folder, image_size=16, channels=3, lazy=True)
    write_image_cache(lazy, tmp_path / "cache.npy")
    other = load_folder(photo_folder, image_size=12, channels=3, lazy=True)
    with pytest.raises(ValueError, match="delete it and resume"):
        open_image_cache(other, tmp_path / "cache.npy")


def test_resizing_at_load_records_its_cost() -> None:
    images = np.zeros((10, 105, 105), dtype=np.uint8)
    resized = from_arrays(images, image_size=28)
    cost = resized.resize_cost
    assert cost is not None and cost.native == "1 x 105 x 105 px" and cost.working == "1 x 28 px"
    assert (cost.bytes_before, cost.bytes_after) == (10 * 105 * 105, 10 * 28 * 28)
    assert from_arrays(images).resize_cost is None


def test_a_run_on_a_lazy_folder_decodes_once_and_resume_reuses_the_cache(
    photo_folder, tmp_path, monkeypatch
) -> None:
    config = Config().updated(
        {
            "n_clusters": 3,
            "data": {"source": str(photo_folder), "image_size": 16, "channels": 3},
            "features": {
                "backbone": "small_cnn",
                "width": 8,
                "projector_hidden": 32,
                "predictor_hidden": 32,
                "out_dim": 16,
                "epochs": 1,
                "batch_size": 20,
                "queue_length": 20,
            },
            "mining": {"q": 3, "warmup_epochs": 1},
            "clustering": {"epochs": 1, "heads": 1, "feature_views": 1},
            "run": {"report": False, "progress": False},
        }
    )
    lazy = load_dataset(str(photo_folder), image_size=16, channels=3, lazy=True)
    out = tmp_path / "run"
    decoded: list[int] = []
    original = FileImageSet._image

    def counting(self, index):
        decoded.append(index)
        return original(self, index)

    monkeypatch.setattr(FileImageSet, "_image", counting)
    run_pipeline(config, out, data=lazy)
    assert sorted(decoded) == list(range(60))  # each file once, then the cache
    progress = json.loads((out / "progress.json").read_text())
    assert progress["image_cache"]["bytes_after"] == 60 * 3 * 16 * 16
    (out / "progress.json").write_text(json.dumps({**progress, "finished": False}))
    (out / "metrics.json").unlink()
    decoded.clear()
    run_pipeline(config, out, data=lazy, resume=True)
    assert decoded == []
