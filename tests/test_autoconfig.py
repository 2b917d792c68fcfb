"""The auto preset: choices on described machines and data, explicit settings winning, the
shape read from a source without decoding it, and the presets command."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from smcluster.api import SMCluster, build_settings
from smcluster.autoconfig import (
    CPU_MAX_EPOCHS,
    CPU_TIME_BUDGET,
    NATIVE_SHAPES,
    DataShape,
    Machine,
    choose,
    data_shape,
    resize_for_chosen_k,
    without,
)
from smcluster.cli import main
from smcluster.config import DEFAULT_METHOD, Config, method
from smcluster.data.sources import NAMED_SOURCES

GB = 1 << 30
LAPTOP = Machine("cpu", 2, 24 * GB)
GPU = Machine("cuda", 16, 120 * GB, gpu_memory=80 * GB)
OMNIGLOT = DataShape(19280, 105, 105, 1)
MNIST = DataShape(70000, 28, 28, 1)


def chosen(machine: Machine, data: DataShape, k: int) -> Config:
    """The configuration auto's overrides make from the defaults (validated)."""
    return Config().updated(choose(machine, data, k).overrides).validate()


def test_cpu_omniglot_gets_the_small_cnn_at_28_px_and_a_time_budget() -> None:
    choice = choose(LAPTOP, OMNIGLOT, 964)
    c = Config().updated(choice.overrides).validate()
    assert c.features.backbone == "small_cnn" and c.data.image_size == 28
    assert c.data.channels == 1 and not c.augment.flip
    assert c.features.queue_length == 4096 and c.features.batch_size == 256
    assert c.features.epochs == CPU_MAX_EPOCHS  # a ceiling: the budget's calibration decides
    assert c.run.time_budget == CPU_TIME_BUDGET
    # 20 images per class: q = N / 2C would be 10, and a batch must hold 2C images.
    assert c.mining.q == 10 and c.clustering.batch_size == 1928
    assert 2 <= len(choice.reasons) <= 4
    assert "105 px" in choice.reasons[0] and "time budget" in choice.reasons[1]


def test_cpu_image_sizes_and_neighbours_follow_the_data() -> None:
    mnist = chosen(LAPTOP, MNIST, 10)
    assert mnist.data.image_size == 28 and mnist.mining.q == 20
    colour = chosen(LAPTOP, DataShape(20000, 64, 64, 3), 200)
    assert colour.data.image_size == 32 and colour.augment.flip


def test_embeddings_size_the_frozen_path_from_n_and_c() -> None:
    million = chosen(LAPTOP, DataShape(1_000_000, dim=384), 1000)
    c = million.clustering
    assert (million.mining.q, c.heads, c.epochs, c.batch_size) == (20, 1, 5, 2000)
    assert c.score_sample == 1
    small = chosen(LAPTOP, DataShape(10_000, dim=384), 1000)
    assert (small.mining.q, small.clustering.heads, small.clustering.epochs) == (5, 10, 40)
    assert small.clustering.score_sample is None
    # Nothing of stage 1 is touched: there is none.
    assert million.features == Config().features


def test_the_chosen_number_of_clusters_resizes_only_what_auto_set() -> None:
    top = choose(LAPTOP, DataShape(100_000, dim=384), 2000)
    assert top.overrides["clustering"]["heads"] == 1
    resized = resize_for_chosen_k(top, 100_000, 100)["clustering"]
    assert (resized["heads"], resized["epochs"], resized["batch_size"]) == (10, 40, 512)
    mine = without(top.overrides, {"clustering": {"heads": 2}})
    kept = resize_for_chosen_k(type(top)(mine, top.reasons), 100_000, 100)["clustering"]
    assert "heads" not in kept and kept["batch_size"] == 512


def test_a_frozen_backbone_sizes_extraction_not_training() -> None:
    data = DataShape(50_000, 224, 224, 3, frozen=True)
    cpu, gpu = chosen(LAPTOP, data, 100), chosen(GPU, data, 100)
    assert cpu.features.batch_size == 256 and cpu.features.backbone == "resnet18"
    assert gpu.features.batch_size == 512 and gpu.run.precision == "bf16-mixed"
    assert cpu.clustering.heads == chosen(LAPTOP, DataShape(50_000, dim=512), 100).clustering.heads


def test_gpu_gets_a_resnet_paper_epochs_and_bf16() -> None:
    small = chosen(GPU, DataShape(60000, 32, 32, 3), 10)
    assert small.features.backbone == "resnet18" and small.features.small_stem
    assert small.features.epochs == 300 and small.run.precision == "bf16-mixed"
    assert small.run.workers == 8 and small.data.image_size == 32
    large = chosen(GPU, DataShape(13000, 96, 96, 3), 10)
    assert large.features.backbone == "resnet50"
    modest = chosen(
        Machine("cuda", 4, 32 * GB, gpu_memory=16 * GB), DataShape(13000, 96, 96, 3), 10
    )
    assert modest.features.backbone == "resnet18" and modest.run.workers == 3


def test_without_leaves_out_what_the_user_named() -> None:
    auto = {"features": {"epochs": 5, "batch_size": 256}, "run": {"time_budget": 1200.0}}
    explicit = {"features": {"epochs": 9}, "run": {"time_budget": 60.0}, "n_clusters": 3}
    assert without(auto, explicit) == {"features": {"batch_size": 256}}


def test_a_flag_and_a_config_file_each_win_over_auto(tmp_path) -> None:
    path = tmp_path / "tuned.yaml"
    path.write_text("mining:\n  q: 7\n")
    config, choice = build_settings(
        10,
        preset_name="auto",
        config=path,
        overrides={"data": {"source": "mnist"}, "features": {"epochs": 9}},
        machine=LAPTOP,
    )
    assert config.mining.q == 7 and config.features.epochs == 9
    assert config.features.backbone == "small_cnn" and config.data.image_size == 28
    assert "q" not in choice.overrides["mining"] and "epochs" not in choice.overrides["features"]
    assert "mining.q" in choice.reasons[-1] and "features.epochs" in choice.reasons[-1]
    # Without the user's settings auto would have chosen otherwise.
    plain, _ = build_settings(10, preset_name="auto", overrides={"data": {"source": "mnist"}})
    assert plain.mining.q == 20 and plain.features.epochs != 9


def test_named_presets_and_no_preset_are_unchanged() -> None:
    demo, choice = build_settings(10, preset_name="demo")
    assert choice is None and demo.features.epochs == 40
    assert build_settings(10)[0] == Config(n_clusters=10).updated(method(DEFAULT_METHOD))


def test_shapes_are_read_without_loading(tmp_path) -> None:
    images = np.zeros((30, 40, 40, 3), dtype=np.uint8)
    np.savez(tmp_path / "x.npz", images=images)
    config = Config().updated({"data": {"source": str(tmp_path / "x.npz")}})
    assert data_shape(config) == DataShape(30, 40, 40, 3)
    np.save(tmp_path / "e.npy", np.zeros((50, 16), dtype=np.float32))
    config = Config().updated({"data": {"source": None, "embeddings": str(tmp_path / "e.npy")}})
    assert data_shape(config) == DataShape(50, dim=16)
    folder = tmp_path / "folder"
    folder.mkdir()
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (20 + i, 24)).save(folder / f"{i}.png")
    assert data_shape(Config(), str(folder)) == DataShape(3, 24, 24, 3)
    assert data_shape(Config(), np.zeros((5, 8, 8), dtype=np.uint8)) == DataShape(5, 8, 8, 1)
    with pytest.raises(FileNotFoundError, match="no .npz file at"):  # the loader's own message
        data_shape(Config().updated({"data": {"source": "nowhere.npz"}}))
    assert set(NATIVE_SHAPES) == set(NAMED_SOURCES)


def test_presets_auto_shows_the_choice(tmp_path, capsys) -> None:
    np.save(tmp_path / "e.npy", np.zeros((1000, 8), dtype=np.float32))
    assert (
        main(["presets", "auto", "--embeddings", str(tmp_path / "e.npy"), "--clusters", "50"]) == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("# auto\n# auto: stages 2-3 for 1000 items and 50 clusters")
    shown = yaml.safe_load(out)
    assert shown["mining"]["q"] == 10 and shown["clustering"]["batch_size"] == 512
    assert main(["presets", "auto", "--clusters", "5"]) == 2
    assert "needs the data" in capsys.readouterr().err
    assert main(["presets"]) == 0
    assert "# auto (the default)" in capsys.readouterr().out


def test_the_api_defaults_to_auto_and_records_it(tmp_path) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(200, 8)).astype(np.float32)
    settings = {"clustering__epochs": 1, "run__report": False, "run__progress": False}
    model = SMCluster(20, out=tmp_path / "run", **settings)
    assert model.preset == "auto"
    model.fit(vectors)
    saved = Config.load(tmp_path / "run" / "config.yaml")
    # 200 embeddings, 20 clusters: q = N / 2C = 5 (the default is 20); epochs stay the user's.
    assert saved.mining.q == 5 and saved.clustering.epochs == 1
    environment = yaml.safe_load((tmp_path / "run" / "environment.json").read_text())
    assert environment["auto"]["overrides"]["mining"]["q"] == 5
    assert "clustering.epochs" in environment["auto"]["reasons"][-1]
