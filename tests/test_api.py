"""The Python API's settings: the order in which preset, config file and overrides apply."""

from __future__ import annotations

import pytest

from smcluster.api import build_config
from smcluster.config import DEFAULT_METHOD, Config, method, preset


def test_config_file_overrides_the_preset_and_flags_override_the_file(tmp_path) -> None:
    """defaults < method < preset < config file < overrides < n_clusters."""
    path = tmp_path / "tuned.yaml"
    path.write_text("n_clusters: 7\nfeatures:\n  epochs: 7\n  lr: 0.2\nmining:\n  q: 3\n")
    demo = Config().updated(method(DEFAULT_METHOD)).updated(preset("demo"))
    c = build_config(preset_name="demo", config=path)
    assert (c.features.epochs, c.features.lr, c.mining.q, c.n_clusters) == (7, 0.2, 3, 7)
    assert demo.features.epochs != 7 and demo.mining.q != 3
    assert c.features.backbone == demo.features.backbone == "small_cnn"
    assert c.clustering == demo.clustering
    c = build_config(12, preset_name="demo", config=path, overrides={"features": {"epochs": 9}})
    assert (c.features.epochs, c.features.lr, c.n_clusters) == (9, 0.2, 12)


def test_a_config_object_and_a_preset_are_refused_together() -> None:
    with pytest.raises(ValueError, match="holds every setting"):
        build_config(preset_name="demo", config=Config(n_clusters=3))
    assert build_config(config=Config(n_clusters=3)).n_clusters == 3


def test_a_method_sits_under_the_preset_and_explicit_settings_win() -> None:
    """defaults < method < preset < config file < overrides."""
    paper = build_config(method_name="paper", preset_name="demo")
    assert paper == Config().updated(method("paper")).updated(preset("demo")).validate()
    assert (paper.features.model, paper.mining.method, paper.clustering.head_selection) == (
        "paper",
        "three-view",
        "loss",
    )
    assert paper.mining.q == preset("demo")["mining"]["q"]
    scan = build_config(
        method_name="scan",
        overrides={"mining": {"method": "fused"}, "clustering": {"entropy_weight": 8.0}},
    )
    assert (scan.features.model, scan.mining.method, scan.clustering.entropy_weight) == (
        "simclr",
        "fused",
        8.0,
    )
    with pytest.raises(ValueError, match="holds every setting, so method 'paper'"):
        build_config(method_name="paper", config=Config(n_clusters=3))
