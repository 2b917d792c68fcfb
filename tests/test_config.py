"""Typed configuration: defaults from METHOD.md, YAML round trip, presets, validation."""

import pytest

from smcluster.config import PRESETS, Config, preset


def test_defaults_follow_method() -> None:
    c = Config()
    assert c.features.temperature == 0.2
    assert c.features.momentum_base == 0.996
    assert c.features.batch_size == 256 and c.features.epochs == 300
    assert c.clustering.entropy_weight == 5.0 and c.clustering.heads == 10
    assert c.clustering.batch_size == 512 and c.clustering.epochs == 100
    assert c.clustering.lr == 1e-4
    assert c.mining.method == "three-view" and c.features.model == "paper"
    assert c.augment.num_ops == 4 and c.augment.cutout_fraction == 0.5


def test_yaml_round_trip(tmp_path) -> None:
    c = Config(n_clusters=200).updated(
        {"features": {"epochs": 3}, "augment": {"crop_scale": [0.3, 0.9]}}
    )
    c.save(tmp_path / "c.yaml")
    loaded = Config.load(tmp_path / "c.yaml")
    assert loaded == c
    assert loaded.augment.crop_scale == (0.3, 0.9)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid(name: str) -> None:
    Config().updated(preset(name)).validate()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_clusters": 1}, "n_clusters"),
        ({"features": {"model": "byol"}}, "features.model"),
        ({"features": {"backbone": "vgg"}}, "features.backbone"),
        ({"mining": {"method": "magic"}}, "mining.method"),
        ({"augment": {"crop_scale": [0.8, 0.2]}}, "crop_scale"),
        ({"run": {"precision": "fp8"}}, "run.precision"),
        ({"mining": {"q": 0}}, "mining.q"),
        ({"features": {"bn_group_size": 1}}, "features.bn_group_size"),
    ],
)
def test_validation_names_the_bad_setting(overrides, message) -> None:
    with pytest.raises(ValueError, match=message):
        Config().updated(overrides).validate()


def test_unknown_keys_are_rejected_by_name() -> None:
    with pytest.raises(ValueError, match="unknown setting.*epochz"):
        Config.from_dict({"features": {"epochz": 3}})
    with pytest.raises(ValueError, match="unknown preset"):
        preset("nope")


def test_missing_config_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        Config.load(tmp_path / "missing.yaml")
