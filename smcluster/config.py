"""Typed settings of a run: dataclasses with the METHOD.md defaults, presets, YAML round-trip.

Every setting is a field with the default METHOD.md gives (or the Decision it records);
``Config.validate`` checks the whole configuration before any work starts: every value against
its field's annotation, every number against ``RANGES`` (``>= 0`` when not listed), and the
choices. Presets are plain nested dicts of overrides, so a preset, a YAML file and
command-line flags compose the same way (``api.build_config`` says in which order).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import numbers
import re
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from smcluster.augment import MAX_LEVEL
from smcluster.models.backbones import BACKBONES
from smcluster.models.pretrained import is_pretrained, parse_backbone

# The choices of string settings. The stages key their registries by these names (one
# direction: stages import config, never the reverse); tests/test_config.py checks they agree.
FeatureModel = Literal["paper", "simclr"]
MiningFeatures = Literal["projector", "backbone"]
MiningMethod = Literal["three-view", "knn", "fused"]
NeighbourWeighting = Literal["none", "fused"]
HeadSelection = Literal["loss", "agreement", "confidence", "consensus"]
MethodName = Literal["paper", "scan", "best"]
KCriterion = Literal[
    "scan-mapeq",
    "kmeans-mapeq",
    "scan-nmi",
    "scan-kappa",
    "kmeans-nmi",
    "kmeans-kappa",
    "kmeans-silhouette",
    "kmeans-probe",
    "kmeans-probe-ari",
    "kmeans-coding",
    "kmeans-coding-d0.1",
    "kmeans-coding-d0.5",
    "kmeans-coding-32d",
    "kmeans-coding-eps0.5",
    "kmeans-gap",
]
Agreement = Literal["dot", "argmax"]
SearchBackend = Literal["auto", "faiss", "torch"]
SearchIndex = Literal["auto", "exact", "ivf", "hnsw"]
Precision = Literal["32-true", "bf16-mixed", "16-mixed"]
FeatureTraining = Literal["auto", "scratch", "contrastive", "frozen"]


@dataclass
class DataConfig:
    """Where the images come from and the size the networks see (METHOD.md, Stage 1).

    ``embeddings``: a file of precomputed features (``.npy`` N x D, or ``.npz`` with
    ``embeddings`` and optional ``ids``, ``labels``) that replaces stage 1; ``source`` is then
    optional and, when given, only shows the images in the report.
    """

    source: str | None = "digits"
    embeddings: str | None = None
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
    ``backbone``: a built-in name (``BACKBONES``) or a pretrained source, ``torchvision:NAME``,
    ``timm:NAME``, ``open_clip:NAME`` or ``run:PATH`` (``models.pretrained``), whose weights
    come from ``weights`` (a file), the library's cache, or a download when ``download``.
    ``train``: ``scratch`` trains the feature model from random weights, ``contrastive``
    from the pretrained weights, ``frozen`` uses the pretrained backbone as it is (no stage-1
    training); ``auto`` is ``frozen`` for a pretrained source and ``scratch`` otherwise.
    """

    model: FeatureModel = "paper"
    backbone: str = "resnet18"
    train: FeatureTraining = "auto"
    weights: str | None = None
    download: bool = False
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
    mining_features: MiningFeatures = "projector"
    bn_group_size: int = 32
    projector_out_bn: bool = False


@dataclass
class MiningConfig:
    """Stage 2, neighbour mining (METHOD.md, Stage 2).

    ``index``: the kNN index, "exact", "ivf" or "hnsw" (approximate, tuned to a recall
    against exact search that is measured and reported), or "auto" (exact up to
    ``stages.neighbours.EXACT_LIMIT`` images on the CPU, IVF above it).
    ``method="fused"`` (ours, not the paper's; METHOD.md, "Decisions where the paper is
    silent") ranks the 4q instance-view pool by a weighted sum of the three views' per-anchor
    z-scores, ``fusion_weights`` = (instance, strong, weak); ``strong_views`` strong views are
    averaged (1 = the paper's one view); ``weighting="fused"`` also weights each neighbour's
    SCAN consistency term by its fused score (fused mining only).
    """

    method: MiningMethod = "three-view"
    q: int = 20
    warmup_epochs: int = 5
    agreement: Agreement = "dot"
    strong_views: int = 1
    fusion_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    weighting: NeighbourWeighting = "none"
    backend: SearchBackend = "auto"
    index: SearchIndex = "auto"


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
    ``head_selection``: the label-free criterion that picks the kept head
    (``stages.clustering.HEAD_SELECTION``); "loss", the lowest total SCAN loss, is SCAN's and
    METHOD.md's.
    ``score_sample``: head selection scores each image against this many of its q neighbours
    (an unbiased estimate for 1 + score_sample passes instead of 1 + q; None: all q).
    ``batch_per_cluster`` and ``min_steps``: the stage-3 schedule rules of the ``best`` method
    (``stages.clustering.stage3_schedule``): a batch of at least that many images per cluster,
    and at least that many optimizer steps; ``epochs`` and ``batch_size`` are then the
    configured length and the smallest batch. 0 (both) trains exactly ``epochs`` at
    ``batch_size``, as SCAN and METHOD.md do.
    ``k_criterion``: what chooses the number of clusters when ``n_clusters`` is a range
    (``stages.choose_k.CRITERIA``; benchmarks/README.md measures each).
    """

    entropy_weight: float = 5.0
    head_selection: HeadSelection = "loss"
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
    score_sample: int | None = None
    batch_per_cluster: float = 0.0
    min_steps: int = 0
    k_criterion: KCriterion = "kmeans-probe"


@dataclass
class RunConfig:
    """Execution: seed, threads, devices, precision. Recorded with every run."""

    seed: int = 0
    threads: int | None = None
    workers: int = 0
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    precision: Precision = "32-true"
    report: bool = True
    progress: bool = True
    time_budget: float | None = None


@dataclass
class Config:
    """The whole configuration of a run.

    ``n_clusters``: the number of clusters, or a range to choose it from without labels
    (``"LO:HI"``, or ``"auto"``: see ``cluster_range``), which the run resolves to the chosen
    number before stage 2 (``stages.choose_k``; its ``config.yaml`` then holds the number).
    """

    n_clusters: int | str = 10
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["augment"]["crop_scale"] = list(self.augment.crop_scale)
        data["mining"]["fusion_weights"] = list(self.mining.fusion_weights)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Build a Config from nested dicts; unknown keys and values of the wrong type are a
        ValueError naming the setting (ints are taken for floats, lists for pairs)."""
        return _from_dict(cls, data, "")

    def updated(self, overrides: dict[str, Any]) -> Config:
        """A copy with the nested ``overrides`` applied (unknown keys are an error)."""
        return Config.from_dict(merge(self.to_dict(), overrides))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: str | Path) -> Config:
        """A saved or hand-written YAML file of settings, validated (``load_settings``)."""
        return cls.from_dict(load_settings(path))

    def validate(self) -> Config:
        """Check every setting before work starts; raise ValueError naming the bad one.

        Types first (a Config built directly is not checked by ``from_dict``), then the range
        of every number, then choices and the settings that depend on each other.
        """
        for name, value, annotation in _settings(self, ""):
            typed(value, annotation, name)
            allowed = RANGES.get(name, AT_LEAST_0)
            if _is_number(value) and value not in allowed:
                raise ValueError(f"{name} must be {allowed}, got {value}")
        if isinstance(self.n_clusters, str):
            cluster_range(self.n_clusters, None)
        checks: list[tuple[bool, str]] = [
            (
                self.data.channels in (None, 1, 3),
                f"data.channels must be 1 or 3, got {self.data.channels}",
            ),
            (
                0 < self.augment.crop_scale[0] <= self.augment.crop_scale[1] <= 1,
                f"augment.crop_scale must be 0 < low <= high <= 1, got {self.augment.crop_scale}",
            ),
            _backbone_check(self.features.backbone),
            (
                self.features.bn_group_size == 0 or self.features.bn_group_size >= 2,
                "features.bn_group_size must be 0 (whole batch) or at least 2 (BatchNorm needs "
                f"two images per group), got {self.features.bn_group_size}",
            ),
            (
                self.features.train != "frozen" or is_pretrained(self.features.backbone),
                "features.train=frozen needs a pretrained backbone (torchvision:NAME, timm:NAME, "
                f"open_clip:NAME or run:PATH), got {self.features.backbone!r}: a randomly "
                "initialised network gives no features; use features.train=scratch",
            ),
            (
                min(self.mining.fusion_weights) >= 0 and max(self.mining.fusion_weights) > 0,
                "mining.fusion_weights must be three weights >= 0, not all 0, got "
                f"{list(self.mining.fusion_weights)}",
            ),
            (
                self.mining.weighting == "none" or self.mining.method == "fused",
                f"mining.weighting={self.mining.weighting!r} weights neighbours by the fused "
                f"mining's scores, but mining.method is {self.mining.method!r}: set "
                "mining.method=fused or mining.weighting=none",
            ),
            (
                self.data.source is not None or self.data.embeddings is not None,
                "nothing to cluster: give data.source (--data) or data.embeddings (--embeddings)",
            ),
            (
                self.data.embeddings is None
                or not (self.clustering.update_backbone or self.clustering.self_label),
                "precomputed embeddings have no image model to fine-tune or self-label through: "
                "turn off clustering.update_backbone and clustering.self_label",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        return self


AUTO_MAX_CLUSTERS = 2000
AUTO_MIN_PER_CLUSTER = 5


def cluster_range(n_clusters: int | str, n_images: int | None) -> tuple[int, int]:
    """The smallest and largest number of clusters a run may end with.

    A number K gives (K, K); ``"LO:HI"`` gives (LO, HI); ``"auto"`` runs from 2 to
    min(N / 5, 2000) for N images: below five images per cluster on average a cluster carries
    little evidence of being one, and 2000 bounds the search's cost. Checked against N when
    ``n_images`` is given (a ValueError naming the fix).
    """
    if not isinstance(n_clusters, str):
        return n_clusters, n_clusters
    if n_clusters == "auto":
        if n_images is None:
            return 2, AUTO_MAX_CLUSTERS
        return 2, max(2, min(n_images // AUTO_MIN_PER_CLUSTER, AUTO_MAX_CLUSTERS))
    lo_text, sep, hi_text = n_clusters.partition(":")
    if not sep or not lo_text.strip().isdigit() or not hi_text.strip().isdigit():
        raise ValueError(
            f"n_clusters (--clusters) {n_clusters!r} is not understood: give a whole number, "
            "'auto' or a range 'LO:HI' of two whole numbers, e.g. '50:2000'"
        )
    lo, hi = int(lo_text), int(hi_text)
    check_cluster_range(lo, hi, n_images)
    return lo, hi


def most_clusters(n_clusters: int | str, n_images: int | None) -> int:
    """The largest number of clusters a run may end with: what memory, batches and time are
    sized for before a range is searched (``cluster_range``'s upper end)."""
    return cluster_range(n_clusters, n_images)[1]


def check_cluster_range(lo: int, hi: int, n_images: int | None) -> None:
    """A ValueError naming the fix unless 2 <= lo <= hi <= n_images."""
    if lo < 2:
        raise ValueError(f"the smallest number of clusters to try must be at least 2, got {lo}")
    if hi < lo:
        raise ValueError(f"the cluster range {lo}:{hi} is empty: give LO <= HI")
    if n_images is not None and hi > n_images:
        raise ValueError(
            f"the cluster range {lo}:{hi} asks for more clusters than the {n_images} images; "
            f"lower its upper end to at most {n_images}"
        )


def stage1_training(features: FeatureConfig) -> str:
    """``features.train`` with ``auto`` resolved: frozen for a pretrained source, else scratch."""
    if features.train != "auto":
        return features.train
    return "frozen" if is_pretrained(features.backbone) else "scratch"


def _backbone_check(source: str) -> tuple[bool, str]:
    """A built-in backbone name or a pretrained source (``models.pretrained``)."""
    message = (
        f"features.backbone must be one of {sorted(BACKBONES)} or a pretrained source "
        f"(torchvision:NAME, timm:NAME, open_clip:NAME, run:PATH), got {source!r}"
    )
    if source in BACKBONES:
        return True, message
    try:
        parse_backbone(source)
    except ValueError as error:
        return False, f"{message}: {error}"
    return is_pretrained(source), message


def nested_settings(flat: dict[str, Any], separator: str = "__") -> dict[str, Any]:
    """``{"features__epochs": 5}`` -> ``{"features": {"epochs": 5}}`` (scikit-learn's style)."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(separator)
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"{key} conflicts with a setting of {part} itself")
        if isinstance(node.get(leaf), dict):
            raise ValueError(f"{key} conflicts with settings inside it")
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


def _from_dict(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(
            f"{where or 'the settings'} must be a mapping of settings, got {_shown(data)} "
            f"({type(data).__name__})"
        )
    annotations = _annotations(cls)
    unknown = sorted(repr(key) for key in data if key not in annotations)
    if unknown:
        raise ValueError(
            f"unknown setting(s) {', '.join(unknown)} in {where or 'the top level'}; "
            f"known: {', '.join(annotations)}"
        )
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        annotation = annotations[name]
        setting = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(annotation):
            kwargs[name] = _from_dict(annotation, value, setting)
        else:
            kwargs[name] = typed(value, annotation, setting)
    return cls(**kwargs)


@functools.cache
def _annotations(cls: type) -> dict[str, Any]:
    """Field name -> its annotation, evaluated (this module's annotations are strings)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _settings(node: Any, where: str) -> Iterator[tuple[str, Any, Any]]:
    """Every leaf setting of a config as ``(dotted name, value, annotation)``."""
    for name, annotation in _annotations(type(node)).items():
        setting = f"{where}.{name}" if where else name
        value = getattr(node, name)
        if not dataclasses.is_dataclass(annotation):
            yield setting, value, annotation
        elif isinstance(value, annotation):
            yield from _settings(value, setting)
        else:
            raise ValueError(
                f"{setting} must be a mapping of settings ({annotation.__name__}), got "
                f"{_shown(value)} ({type(value).__name__})"
            )


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


_SCALARS: dict[type, tuple[Callable[[Any], bool], Callable[[Any], Any], str]] = {
    bool: (lambda v: isinstance(v, bool), bool, "true or false"),
    int: (_is_int, int, "a whole number"),
    float: (_is_finite_number, float, "a finite number"),
    str: (lambda v: isinstance(v, str), str, "text"),
}
"""Annotation -> (accepts a value, converts it to the plain Python type, its description)."""


def typed(value: Any, annotation: Any, name: str) -> Any:
    """``value`` as a setting annotated ``annotation``, or a ValueError naming ``name``.

    Handles the annotations settings use: bool, int, float (ints and numpy numbers are taken
    and converted), str, ``Literal`` choices, ``X | None`` and fixed-length tuples (lists
    are taken).
    """
    origin, options = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is not type(None):
                try:
                    return typed(value, option, name)
                except ValueError:
                    pass
    elif origin is Literal:
        if value in options:
            return value
    elif origin is tuple:
        if isinstance(value, (list, tuple)) and len(value) == len(options):
            pairs = zip(value, options, strict=True)
            return tuple(typed(v, a, f"{name}[{i}]") for i, (v, a) in enumerate(pairs))
    elif _scalar(annotation)[0](value):
        return _scalar(annotation)[1](value)
    raise ValueError(
        f"{name} must be {_describe(annotation)}, got {_shown(value)} ({type(value).__name__})"
    )


def _describe(annotation: Any) -> str:
    options = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join("null" if o is type(None) else _describe(o) for o in options)
    if typing.get_origin(annotation) is Literal:
        return "one of " + ", ".join(repr(o) for o in options)
    if typing.get_origin(annotation) is tuple and len(set(options)) == 1:
        return f"a list of {len(options)}, each {_describe(options[0])}"
    if typing.get_origin(annotation) is tuple:
        return f"a list of {len(options)}: " + ", ".join(_describe(o) for o in options)
    return _scalar(annotation)[2]


def _scalar(annotation: Any) -> tuple[Callable[[Any], bool], Callable[[Any], Any], str]:
    if annotation not in _SCALARS:
        raise TypeError(f"settings of type {annotation} have no check: add one to _SCALARS")
    return _SCALARS[annotation]


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Range:
    """The values a numeric setting may take: ``low <= value <= high`` (strict where open)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"


AT_LEAST_0 = Range(0)
AT_LEAST_1 = Range(1)
AT_LEAST_2 = Range(2)
POSITIVE = Range(0, low_open=True)
FRACTION = Range(0, 1, high_open=True)

RANGES: dict[str, Range] = {
    "n_clusters": AT_LEAST_2,
    "data.image_size": Range(8),
    "augment.magnitude": Range(0, MAX_LEVEL),
    "augment.max_magnitude": Range(0, MAX_LEVEL),
    "augment.cutout_fraction": FRACTION,
    "augment.weak_shift": FRACTION,
    "features.width": AT_LEAST_1,
    "features.projector_hidden": AT_LEAST_1,
    "features.out_dim": AT_LEAST_1,
    "features.predictor_hidden": AT_LEAST_1,
    "features.temperature": POSITIVE,
    "features.simclr_temperature": POSITIVE,
    "features.momentum_base": Range(0, 1),
    "features.queue_length": AT_LEAST_1,
    "features.batch_size": AT_LEAST_2,
    "features.lr": POSITIVE,
    "mining.q": AT_LEAST_1,
    "mining.strong_views": AT_LEAST_1,
    "clustering.heads": AT_LEAST_1,
    "clustering.epochs": AT_LEAST_1,
    "clustering.batch_size": AT_LEAST_2,
    "clustering.lr": POSITIVE,
    "clustering.frozen_lr": POSITIVE,
    "clustering.feature_views": AT_LEAST_1,
    "clustering.self_label_threshold": Range(0, 1, low_open=True, high_open=True),
    "clustering.self_label_lr": POSITIVE,
    "clustering.frozen_self_label_lr": POSITIVE,
    "clustering.score_sample": AT_LEAST_1,
    "run.threads": AT_LEAST_1,
    "run.devices": AT_LEAST_1,
    "run.num_nodes": AT_LEAST_1,
    "run.time_budget": POSITIVE,
}
"""Allowed values of the numeric settings; a numeric setting not listed must be >= 0 (epochs,
warm-ups, weight decays, workers, seed, ...)."""


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` as text; this reads it as a number, as YAML 1.2 and Python do."""


# No sexagesimal integers (YAML 1.1 reads ``10:50`` as 650): a cluster range stays text.
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:int"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_yaml(text: str, source: str) -> Any:
    """Parse YAML ``text``; a syntax error is a ValueError naming ``source`` and the line."""
    try:
        return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader: no Python objects
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" line {mark.line + 1}, column {mark.column + 1}:" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ValueError(f"{source}:{line} not valid YAML ({problem}); fix the YAML") from None
    except ValueError as error:
        raise ValueError(f"{source}: a value could not be read ({error}); fix the YAML") from None


def load_settings(path: str | Path) -> dict[str, Any]:
    """The settings of a YAML file as nested dicts, checked: a mapping of known settings of
    the right types and ranges (errors name the file). Only the settings the file gives."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a YAML file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"config file {path} {what}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text (UTF-8) file: give a YAML file") from None
    data = load_yaml(text, str(path))
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: expected a mapping of settings at the top level (e.g. `n_clusters: 10`), "
            f"got {type(data).__name__}"
        )
    try:
        Config.from_dict(data).validate()
    except ValueError as error:
        raise ValueError(f"{path}: {error} (fix it in that file)") from None
    return data


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


# Methods: nested overrides naming a whole method, applied on top of the defaults and under a
# preset (``api.build_config``). ``paper`` is METHOD.md's method exactly and ``scan`` the SCAN
# baseline (SimCLR features, plain kNN), both with SCAN's stage 3 at the rate of the earlier
# benchmark rows (``_SCAN_STAGE3``); ``best`` is the combination with the best measured ACC on
# the development sets (benchmarks/README.md, "The default method") and is what a run uses
# when no method is named (``DEFAULT_METHOD``). ``Config()`` itself keeps METHOD.md's values.
_SCAN_STAGE3: dict[str, Any] = {
    "head_selection": "loss",
    "entropy_weight": 5.0,
    "frozen_lr": 1e-2,
    "batch_per_cluster": 0.0,
    "min_steps": 0,
}
METHODS: dict[MethodName, dict[str, Any]] = {
    "paper": {
        "features": {"model": "paper"},
        "mining": {"method": "three-view", "strong_views": 1, "weighting": "none"},
        "clustering": dict(_SCAN_STAGE3),
    },
    "scan": {
        "features": {"model": "simclr"},
        "mining": {"method": "knn", "weighting": "none"},
        "clustering": dict(_SCAN_STAGE3),
    },
    "best": {
        "features": {"model": "simclr"},
        "mining": {"method": "knn", "weighting": "none"},
        "clustering": {
            **_SCAN_STAGE3,
            "frozen_lr": 3e-2,
            "batch_per_cluster": 2.0,
            "min_steps": 1600,
        },
    },
}
DEFAULT_METHOD: MethodName = "best"


def method(name: str) -> dict[str, Any]:
    """The overrides of a named method (``METHODS``)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    return copy.deepcopy(METHODS[name])
