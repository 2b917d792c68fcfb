"""Typed settings of a run: dataclasses with the METHOD.md defaults, presets, YAML round-trip.

Every setting is a field with the default METHOD.md gives (or the Decision it records);
``Config.validate`` checks the whole configuration before any work starts, and presets are
plain nested dicts of overrides, so a preset, a YAML file and command-line flags compose the
same way.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from smcluster.models.backbones import BACKBONES


@dataclass
class DataConfig:
    """Where the images come from and the size the networks see (METHOD.md, Stage 1)."""

    source: str = "digits"
    image_size: int | None = None
    channels: int | None = None
    root: str | None = None
    download: bool = False


@dataclass
class AugmentConfig:
    """Augmentation settings (METHOD.md, Stage 1 Augmentations and Stage 2 views)."""

    crop_scale: tuple[float, float] = (0.2, 1.0)
    num_ops: int = 4
    magnitude: float | None = None
    max_magnitude: float = 10.0
    cutout_fraction: float = 0.5
    weak_shift: float = 0.125
    flip: bool = True


@dataclass
class FeatureConfig:
    """Stage 1, the feature model (METHOD.md, Stage 1; optimiser is a Decision).

    ``bn_group_size``: the paper model runs each view through its networks in groups of this
    many images, shuffled for the target network, so BatchNorm cannot leak which queued
    outputs belong to the current batch (MoCo's shuffling BN; 0 = whole batch at once).
    ``projector_out_bn``: end the projector with a BatchNorm without affine parameters, as
    MoCo v3 does (off by default, as in BYOL's MLP that METHOD.md follows; on in the small-CNN
    presets, see ``_small_cnn``).
    """

    model: str = "paper"
    backbone: str = "resnet18"
    small_stem: bool = True
    width: int = 32
    projector_hidden: int = 2048
    out_dim: int = 256
    predictor_hidden: int = 2048
    temperature: float = 0.2
    simclr_temperature: float = 0.5
    momentum_base: float = 0.996
    queue_length: int = 65536
    epochs: int = 300
    batch_size: int = 256
    lr: float = 0.05
    weight_decay: float = 5e-4
    warmup_epochs: int = 10
    mining_features: str = "projector"
    bn_group_size: int = 32
    projector_out_bn: bool = False


@dataclass
class MiningConfig:
    """Stage 2, neighbour mining (METHOD.md, Stage 2).

    ``index``: the kNN index, "exact", "ivf" or "hnsw" (approximate, tuned to a recall
    against exact search that is measured and reported), or "auto" (exact up to
    ``stages.neighbours.EXACT_LIMIT`` images on the CPU, IVF above it).
    """

    method: str = "three-view"
    q: int = 20
    warmup_epochs: int = 5
    agreement: str = "dot"
    backend: str = "auto"
    index: str = "auto"


@dataclass
class ClusteringConfig:
    """Stage 3, SCAN clustering (METHOD.md, Stage 3; defaults are SCAN's, per the Decision).

    ``lr`` (SCAN's Adam 1e-4) trains backbone and heads together (``update_backbone``);
    ``frozen_lr`` trains heads alone on stored backbone features, where 1e-4 barely moves a
    linear layer in the epochs a CPU can afford (our Decision; the paper is silent). The same
    split holds for self-labelling: ``self_label_lr`` (SCAN's 1e-4) with the backbone,
    ``frozen_self_label_lr`` for the kept head alone, where 1e-4 changed nothing and 1e-2 fitted
    the few confident images of weak features and lost clusters (benchmarks/README.md).
    ``feature_views`` is how many weak views per image are stored for the frozen path.
    ``weight_decay`` is decoupled from the gradient (AdamW; ``stages.clustering.stage3_optimizer``).
    """

    entropy_weight: float = 5.0
    heads: int = 10
    epochs: int = 100
    batch_size: int = 512
    lr: float = 1e-4
    frozen_lr: float = 1e-2
    weight_decay: float = 1e-4
    update_backbone: bool = False
    feature_views: int = 4
    self_label: bool = False
    self_label_epochs: int = 10
    self_label_threshold: float = 0.99
    self_label_lr: float = 1e-4
    frozen_self_label_lr: float = 1e-3


@dataclass
class RunConfig:
    """Execution: seed, threads, devices, precision. Recorded with every run."""

    seed: int = 0
    threads: int | None = None
    workers: int = 0
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    precision: str = "32-true"
    report: bool = True
    progress: bool = True


@dataclass
class Config:
    """The whole configuration of a run."""

    n_clusters: int = 10
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["augment"]["crop_scale"] = list(self.augment.crop_scale)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Build a Config from nested dicts, rejecting unknown keys by name."""
        return _from_dict(cls, data, "config")

    def updated(self, overrides: dict[str, Any]) -> Config:
        """A copy with the nested ``overrides`` applied (unknown keys are an error)."""
        return Config.from_dict(merge(self.to_dict(), overrides))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: str | Path) -> Config:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"config file {path} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of settings at the top level")
        return cls.from_dict(data)

    def validate(self) -> Config:
        """Check every setting before work starts; raise ValueError naming the bad one."""
        from smcluster.stages.features import FEATURE_MODELS, MINING_FEATURES
        from smcluster.stages.mining import BACKEND_CHOICES, MINING_METHODS
        from smcluster.stages.neighbours import SCORERS

        checks: list[tuple[bool, str]] = [
            (self.n_clusters >= 2, f"n_clusters must be at least 2, got {self.n_clusters}"),
            (
                self.data.image_size is None or self.data.image_size >= 8,
                f"data.image_size must be at least 8 px, got {self.data.image_size}",
            ),
            (
                self.data.channels in (None, 1, 3),
                f"data.channels must be 1 or 3, got {self.data.channels}",
            ),
            (
                0 < self.augment.crop_scale[0] <= self.augment.crop_scale[1] <= 1,
                f"augment.crop_scale must be 0 < low <= high <= 1, got {self.augment.crop_scale}",
            ),
            (self.augment.num_ops >= 0, "augment.num_ops must be >= 0"),
            (0 <= self.augment.cutout_fraction < 1, "augment.cutout_fraction must be in [0, 1)"),
            _one_of("features.model", self.features.model, FEATURE_MODELS),
            _one_of("features.backbone", self.features.backbone, BACKBONES),
            _one_of("features.mining_features", self.features.mining_features, MINING_FEATURES),
            (self.features.temperature > 0, "features.temperature must be positive"),
            (0 <= self.features.momentum_base <= 1, "features.momentum_base must be in [0, 1]"),
            (self.features.epochs >= 0, "features.epochs must be >= 0"),
            (self.features.batch_size >= 2, "features.batch_size must be >= 2"),
            (self.features.queue_length >= 1, "features.queue_length must be >= 1"),
            (
                self.features.bn_group_size == 0 or self.features.bn_group_size >= 2,
                "features.bn_group_size must be 0 (whole batch) or at least 2 (BatchNorm needs "
                f"two images per group), got {self.features.bn_group_size}",
            ),
            _one_of("mining.method", self.mining.method, MINING_METHODS),
            _one_of("mining.agreement", self.mining.agreement, SCORERS),
            _one_of("mining.backend", self.mining.backend, BACKEND_CHOICES),
            (self.mining.q >= 1, f"mining.q must be >= 1, got {self.mining.q}"),
            (self.clustering.heads >= 1, "clustering.heads must be >= 1"),
            (self.clustering.epochs >= 1, "clustering.epochs must be >= 1"),
            (self.clustering.feature_views >= 1, "clustering.feature_views must be >= 1"),
            (self.clustering.entropy_weight >= 0, "clustering.entropy_weight must be >= 0"),
            (
                0 < self.clustering.self_label_threshold < 1,
                "clustering.self_label_threshold must be in (0, 1)",
            ),
            _one_of("run.precision", self.run.precision, PRECISIONS),
            (self.run.devices >= 1 and self.run.num_nodes >= 1, "run.devices/num_nodes >= 1"),
            (self.run.threads is None or self.run.threads >= 1, "run.threads must be >= 1"),
            (self.run.workers >= 0, "run.workers must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        return self


PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")


def _one_of(name: str, value: Any, options: Any) -> tuple[bool, str]:
    return value in options, f"{name} must be one of {sorted(options)}, got {value!r}"


def nested_settings(flat: dict[str, Any], separator: str = "__") -> dict[str, Any]:
    """``{"features__epochs": 5}`` -> ``{"features": {"epochs": 5}}`` (scikit-learn's style)."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(separator)
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``overrides`` into a copy of ``base``."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {unknown}; known: {sorted(fields)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        default = getattr(cls(), name) if name not in kwargs else None
        if dataclasses.is_dataclass(default):
            kwargs[name] = _from_dict(type(default), value, f"{where}.{name}")
        elif isinstance(default, tuple):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _small_cnn(width: int, hidden: int, out_dim: int, **schedule: Any) -> dict[str, Any]:
    """Stage-1 settings of the small CNN: widths of the trunk and of the MLP heads.

    The projector ends in a BatchNorm (``projector_out_bn``): without it the paper model's
    target outputs start in a narrow cone, the queued negatives look alike, and a CPU budget
    of a few hundred steps ends near the chance loss (benchmarks/README.md).
    """
    return {
        "backbone": "small_cnn",
        "width": width,
        "projector_hidden": hidden,
        "predictor_hidden": hidden,
        "out_dim": out_dim,
        "projector_out_bn": True,
        **schedule,
    }


# A 65,536-entry queue dominates a CPU step (a batch x queue logit matrix per loss term).
_CPU_SCHEDULE = {"queue_length": 4096, "epochs": 30, "batch_size": 256, "warmup_epochs": 2}

# Presets: nested overrides of the defaults. The paper's (METHOD.md, "What the paper reports")
# train ResNet-50 on a GPU; the cpu-* presets are sized for a 2-core CPU and were chosen on the
# development sets only.
PRESETS: dict[str, dict[str, Any]] = {
    "paper-stl10": {
        "data": {"image_size": 96},
        "features": {
            "backbone": "resnet50",
            "small_stem": True,
            "projector_hidden": 4096,
            "predictor_hidden": 4096,
            "epochs": 300,
            "batch_size": 256,
        },
        "mining": {"q": 20},
        "clustering": {"epochs": 100, "batch_size": 512, "update_backbone": True},
        "run": {"workers": 8, "precision": "bf16-mixed"},
    },
    "paper-imagenet": {
        "data": {"image_size": 224},
        "features": {
            "backbone": "resnet50",
            "small_stem": False,
            "projector_hidden": 4096,
            "predictor_hidden": 4096,
            "epochs": 300,
            "batch_size": 256,
            "weight_decay": 1e-4,
        },
        "mining": {"q": 50},
        "clustering": {"epochs": 100, "batch_size": 512, "update_backbone": False},
        "run": {"workers": 8, "precision": "bf16-mixed"},
    },
    "demo": {
        "data": {"image_size": 16},
        "features": _small_cnn(16, 256, 64, epochs=40, batch_size=128, warmup_epochs=3),
        "augment": {"crop_scale": [0.5, 1.0], "max_magnitude": 5.0, "flip": False},
        "mining": {"q": 10, "warmup_epochs": 20},
        "clustering": {"epochs": 60, "batch_size": 128},
    },
    "cpu-mnist": {
        "data": {"image_size": 16, "channels": 1},
        "features": _small_cnn(16, 256, 64, **_CPU_SCHEDULE),
        "augment": {"crop_scale": [0.5, 1.0], "max_magnitude": 5.0, "flip": False},
        "mining": {"q": 20, "warmup_epochs": 10},
        "clustering": {"epochs": 40, "batch_size": 512},
    },
    "cpu-omniglot": {
        "data": {"image_size": 28, "channels": 1},
        "features": _small_cnn(32, 512, 128, **_CPU_SCHEDULE),
        "augment": {"crop_scale": [0.6, 1.0], "max_magnitude": 5.0, "flip": False},
        "mining": {"q": 10, "warmup_epochs": 10},
        "clustering": {"epochs": 60, "batch_size": 512},
    },
    "cpu-cifar10": {
        "data": {"image_size": 32, "channels": 3},
        "features": _small_cnn(32, 512, 128, **_CPU_SCHEDULE),
        "mining": {"q": 20, "warmup_epochs": 10},
        "clustering": {"epochs": 40, "batch_size": 512},
    },
    "cpu-tinyimagenet": {
        "data": {"image_size": 32, "channels": 3},
        "features": _small_cnn(32, 512, 128, **_CPU_SCHEDULE),
        "mining": {"q": 10, "warmup_epochs": 10},
        "clustering": {"epochs": 60, "batch_size": 512},
    },
}


def preset(name: str) -> dict[str, Any]:
    """The overrides of a named preset."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[name])
