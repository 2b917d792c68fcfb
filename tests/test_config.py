"""Typed configuration: defaults from METHOD.md, YAML round trip, presets, validation."""

import dataclasses
import re
import tempfile
import typing
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from smcluster import config as config_module
from smcluster.config import (
    PRESETS,
    ClusteringConfig,
    Config,
    cluster_range,
    nested_settings,
    preset,
)
from smcluster.stages.choose_k import CRITERIA, DEFAULT_CRITERION
from smcluster.stages.clustering import HEAD_SELECTION
from smcluster.stages.features import FEATURE_MODELS, MINING_FEATURES
from smcluster.stages.mining import BACKEND_CHOICES, MINING_METHODS, NEIGHBOUR_WEIGHTS
from smcluster.stages.neighbours import INDEXES, SCORERS


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


def _leaves(node: object, where: str = "") -> list[tuple[str, str]]:
    """Every leaf setting of a config as (dotted name, annotation as written)."""
    leaves = []
    for f in dataclasses.fields(node):
        name, value = f"{where}.{f.name}" if where else f.name, getattr(node, f.name)
        leaves += _leaves(value, name) if dataclasses.is_dataclass(value) else [(name, f.type)]
    return leaves


def _nested(name: str, value: object) -> dict:
    *parents, leaf = name.split(".")
    for part in reversed(parents):
        value, leaf = {leaf: value}, part
    return {leaf: value}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"features": {"epochs": 2.5}}, "features.epochs must be a whole number, got 2.5"),
        ({"features": {"lr": "fast"}}, "features.lr must be a finite number, got 'fast'"),
        ({"features": {"epochs": "abc"}}, "features.epochs must be a whole number, got 'abc'"),
        ({"features": {"lr": float("nan")}}, "features.lr must be a finite number, got nan"),
        ({"augment": {"flip": "no"}}, "augment.flip must be true or false, got 'no'"),
        ({"augment": {"crop_scale": 0.5}}, "augment.crop_scale must be a list of 2"),
        ({"augment": {"crop_scale": [0.5, "x"]}}, r"augment.crop_scale\[1\] must be a finite"),
        ({"run": {"threads": 1.5}}, "run.threads must be a whole number or null, got 1.5"),
        ({"data": {"source": 3}}, "data.source must be text or null, got 3"),
        ({"features": 3}, "features must be a mapping of settings, got 3"),
    ],
)
def test_wrong_types_name_setting_value_and_type(overrides, message) -> None:
    with pytest.raises(ValueError, match=message):
        Config.from_dict(overrides)


def test_every_setting_is_type_checked() -> None:
    """A value of the wrong type for any setting (a mapping fits none) is refused by name,
    whether it comes through from_dict or sits in a Config built directly."""
    for name, _ in _leaves(Config()):
        with pytest.raises(ValueError, match=rf"^{re.escape(name)} must be .*got \{{"):
            Config.from_dict(_nested(name, {"a": 1}))
        section, _, leaf = name.rpartition(".")
        config = Config()
        setattr(getattr(config, section) if section else config, leaf, {"a": 1})
        with pytest.raises(ValueError, match=rf"^{re.escape(name)} must be"):
            config.validate()


def test_every_number_has_a_range() -> None:
    """No setting takes a negative number: epochs, warm-ups, workers, rates, sizes..."""
    numbers = [n for n, t in _leaves(Config()) if t.split(" | ")[0] in ("int", "float")]
    assert "mining.warmup_epochs" in numbers and "data.image_size" in numbers
    assert "features.lr" in numbers and "data.root" not in numbers and len(numbers) > 40
    for name in numbers:
        with pytest.raises(ValueError, match=rf"^{re.escape(name)} must be .*got -1"):
            Config.from_dict(_nested(name, -1)).validate()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"mining": {"warmup_epochs": -2}}, "mining.warmup_epochs must be >= 0, got -2"),
        ({"features": {"warmup_epochs": -2}}, "features.warmup_epochs must be >= 0, got -2"),
        (
            {"clustering": {"self_label_epochs": -2}},
            "clustering.self_label_epochs must be >= 0, got -2",
        ),
        ({"features": {"lr": 0}}, r"features.lr must be > 0, got 0"),
        ({"features": {"momentum_base": 1.5}}, r"momentum_base must be in \[0, 1\], got 1.5"),
        ({"clustering": {"self_label_threshold": 1.0}}, r"in \(0, 1\), got 1.0"),
        ({"augment": {"cutout_fraction": 1.0}}, r"cutout_fraction must be in \[0, 1\)"),
        ({"augment": {"magnitude": 11}}, r"augment.magnitude must be in \[0, 10\], got 11"),
        ({"run": {"workers": -1}}, "run.workers must be >= 0"),
        ({"run": {"threads": 0}}, "run.threads must be >= 1"),
    ],
)
def test_ranges(overrides, message) -> None:
    with pytest.raises(ValueError, match=message):
        Config().updated(overrides).validate()


def test_ints_and_numpy_numbers_become_plain_settings(tmp_path) -> None:
    """Ints are taken for floats, numpy scalars for Python numbers, so the config saves."""
    c = Config.from_dict(
        {"features": {"lr": 1, "epochs": np.int64(3), "temperature": np.float32(1)}}
    )
    assert type(c.features.lr) is float and type(c.features.epochs) is int
    assert type(c.features.temperature) is float
    c.save(tmp_path / "c.yaml")
    assert Config.load(tmp_path / "c.yaml") == c


def test_yaml_reads_exponents_as_numbers(tmp_path) -> None:
    """YAML 1.1 (PyYAML) reads `1e-3` as text; settings files read it as a number."""
    path = tmp_path / "c.yaml"
    path.write_text("clustering:\n  lr: 1e-3\n  frozen_lr: 5E-2\nfeatures:\n  lr: .5e-1\n")
    c = Config.load(path)
    assert (c.clustering.lr, c.clustering.frozen_lr, c.features.lr) == (0.001, 0.05, 0.05)


def test_cluster_ranges_are_parsed_and_checked() -> None:
    assert cluster_range(12, 100) == (12, 12)
    assert cluster_range("50:2000", 10_000) == (50, 2000)
    assert cluster_range("auto", 1000) == (2, 200)  # N / 5
    assert cluster_range("auto", 10**6) == (2, 2000)  # at most 2000
    assert cluster_range("auto", 7) == (2, 2)
    for bad, match in [
        ("fifty:100", "not understood"),
        ("100", "not understood"),
        ("10-50", "not understood"),
        ("1:10", "at least 2"),
        ("20:10", "empty"),
        ("2:5000", "more clusters than the 1000 images"),
    ]:
        with pytest.raises(ValueError, match=match):
            cluster_range(bad, 1000)


def test_a_cluster_range_is_checked_before_work_and_stays_text_in_yaml(tmp_path) -> None:
    """YAML 1.1 reads ``10:50`` as the number 650 (base 60); settings files keep it text."""
    path = tmp_path / "c.yaml"
    path.write_text("n_clusters: 10:50\n")
    assert Config.load(path).n_clusters == "10:50"
    Config(n_clusters="auto").save(path)
    assert Config.load(path).n_clusters == "auto"
    for bad, match in [("many", "not understood"), ("30:20", "empty"), ("1:20", "at least 2")]:
        with pytest.raises(ValueError, match=match):
            Config(n_clusters=bad).validate()
        path.write_text(f"n_clusters: {bad}\n")
        with pytest.raises(ValueError, match=match):
            Config.load(path)


def test_broken_yaml_names_file_and_line(tmp_path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("features:\n  epochs: 3\n  lr: [0.1, 0.2\nmining: {q: 3}\n")
    with pytest.raises(ValueError, match=r"broken.yaml: line 4, column \d+: not valid YAML"):
        Config.load(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"- 1\n- 2\n", "expected a mapping of settings at the top level"),
        (b"\xff\xfe\x00", "not a text"),
        (b"features:\n  epochs: 2.5\n", "c.yaml: features.epochs must be a whole number"),
        (b"mining:\n  warmup_epochs: -2\n", "c.yaml: mining.warmup_epochs must be >= 0"),
        (b"clustering:\n  lr: !!float abc\n", "c.yaml: a value could not be read"),
    ],
)
def test_bad_config_files_are_value_errors_naming_the_file(tmp_path, content, message) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        Config.load(path)


def test_a_folder_is_not_a_config_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="is a folder"):
        Config.load(tmp_path)


def test_conflicting_flat_settings() -> None:
    with pytest.raises(ValueError, match="conflicts"):
        nested_settings({"features": 3, "features.epochs": 2}, separator=".")
    with pytest.raises(ValueError, match="conflicts"):
        nested_settings({"features.epochs.x": 2, "features.epochs": 3}, separator=".")


FUZZ = settings(max_examples=80, deadline=None, database=None, derandomize=True)
SECTIONS = [f.name for f in dataclasses.fields(Config)]
LEAVES = sorted({name.rpartition(".")[2] for name, _ in _leaves(Config())})
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["paper", "knn", "resnet18", "32-true", "dot", "auto"])
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
SECTION_DICTS = st.dictionaries(st.sampled_from([*LEAVES, "bogus"]), VALUES, max_size=4)
CONFIG_DICTS = st.dictionaries(
    st.sampled_from([*SECTIONS, "bogus"]) | st.integers(), SECTION_DICTS | VALUES, max_size=4
)


@FUZZ
@given(data=CONFIG_DICTS)
def test_fuzz_from_dict(clean_outcome, data: dict) -> None:
    clean_outcome(lambda: Config.from_dict(data).validate())


@FUZZ
@given(text=st.text(max_size=200) | CONFIG_DICTS.map(yaml.safe_dump))
def test_fuzz_config_files(clean_outcome, text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.yaml"
        path.write_text(text, encoding="utf-8")
        clean_outcome(lambda: Config.load(path))


@pytest.mark.parametrize(
    ("choices", "registry"),
    [
        (config_module.FeatureModel, FEATURE_MODELS),
        (config_module.MiningFeatures, MINING_FEATURES),
        (config_module.MiningMethod, MINING_METHODS),
        (config_module.NeighbourWeighting, NEIGHBOUR_WEIGHTS),
        (config_module.HeadSelection, HEAD_SELECTION),
        (config_module.MethodName, config_module.METHODS),
        (config_module.KCriterion, CRITERIA),
        (config_module.Agreement, SCORERS),
        (config_module.SearchBackend, BACKEND_CHOICES),
        (config_module.SearchIndex, {"auto", *INDEXES}),
    ],
)
def test_choice_settings_name_exactly_the_registered_implementations(choices, registry) -> None:
    assert set(typing.get_args(choices)) == set(registry)


def test_a_choice_outside_its_literal_is_refused_with_the_options() -> None:
    with pytest.raises(ValueError, match=r"mining.method must be one of 'three-view', 'knn'"):
        Config.from_dict({"mining": {"method": "spectral"}})


def test_pretrained_backbone_sources_are_valid_settings() -> None:
    Config.from_dict({"features": {"backbone": "timm:resnet10t"}}).validate()
    with pytest.raises(ValueError, match="features.backbone"):
        Config.from_dict({"features": {"backbone": "keras:resnet"}}).validate()


def test_every_method_is_valid_settings_and_the_paper_method_is_method_md() -> None:
    for name in config_module.METHODS:
        Config().updated(config_module.method(name)).validate()
    paper = Config().updated(config_module.method("paper"))
    assert (paper.features.model, paper.mining.method, paper.mining.strong_views) == (
        "paper",
        "three-view",
        1,
    )
    assert (paper.clustering.head_selection, paper.clustering.entropy_weight) == ("loss", 5.0)
    scan = Config().updated(config_module.method("scan"))
    assert (scan.features.model, scan.mining.method) == ("simclr", "knn")
    with pytest.raises(ValueError, match="unknown method 'nope'; choose one of"):
        config_module.method("nope")


def test_fusion_weights_round_trip_and_must_not_all_be_zero(tmp_path) -> None:
    config = Config().updated({"mining": {"method": "fused", "fusion_weights": [2, 1, 0]}})
    config.save(tmp_path / "c.yaml")
    assert Config.load(tmp_path / "c.yaml").mining.fusion_weights == (2.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="mining.fusion_weights must be three weights >= 0"):
        Config().updated({"mining": {"fusion_weights": [0, 0, 0]}}).validate()


def test_the_k_criterion_setting_defaults_to_the_search_default() -> None:
    assert ClusteringConfig().k_criterion == DEFAULT_CRITERION
    with pytest.raises(ValueError, match="clustering.k_criterion must be one of"):
        Config.from_dict({"clustering": {"k_criterion": "elbow"}})
