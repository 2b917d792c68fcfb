"""The ``auto`` preset: settings chosen from the machine, the data's shape and the cluster count.

``choose(machine, data, n_clusters)`` is a pure function of three small descriptions and
returns nested overrides (the preset layer: defaults < auto < ``--config`` file < flags, so
anything the user names wins) with two or three lines saying what it chose and why. The
rules are few and each is explained where it is made:

- images on a CPU: the small CNN of the ``cpu-*`` presets at the native size capped at 28
  (grey) or 32 px (colour), stage-1 epochs from a cost model sized to the time budget, and a
  default ``run.time_budget``;
- images on a GPU: ResNet-18 (ResNet-50 from 96 px with 40 GB of GPU memory), the paper's
  epochs, bf16 and data-loader workers from the cores;
- a frozen pretrained backbone or precomputed embeddings: stages 2-3 sized from N and C
  (``frozen_settings``), and the extraction batch.

The shape of the data is read without decoding it (``data_shape``): array headers, the first
image files of a folder, or the known shapes of the named sets.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from smcluster.config import PRESETS, Config, merge, stage1_training
from smcluster.data.npz import npz_field_shape
from smcluster.memory import available_memory

__all__ = [
    "AUTO",
    "AutoChoice",
    "DataShape",
    "Machine",
    "choose",
    "data_shape",
    "frozen_settings",
    "resize_for_chosen_k",
    "without",
]

AUTO = "auto"
"""The preset name that chooses settings from the machine and the data (``choose``)."""

CPU_TIME_BUDGET = 10 * 60.0
"""``run.time_budget`` auto sets on a CPU (seconds): a first result in about ten minutes;
``--time-budget`` buys a better one (the stage-1 epochs come from a measured calibration,
``budget.fit_budget``)."""

CPU_MAX_EPOCHS = 100
"""The most stage-1 epochs the CPU time budget may choose (its ceiling, ``features.epochs``)."""

GPU_IMAGES_SEEN = 30_000_000
"""Stage-1 images seen on a GPU above 10^5 images (300 epochs of 10^5)."""

NATIVE_SHAPES: dict[str, tuple[int, int, int, int]] = {
    "digits": (1797, 8, 8, 1),
    "cifar10": (60000, 32, 32, 3),
    "cifar100": (60000, 32, 32, 3),
    "cifar100-20": (60000, 32, 32, 3),
    "stl10": (13000, 96, 96, 3),
    "mnist": (70000, 28, 28, 1),
    "fashion-mnist": (70000, 28, 28, 1),
    "kmnist": (70000, 28, 28, 1),
    "omniglot": (19280, 105, 105, 1),
}
"""(N, height, width, channels) of the named sources (``data.sources.NAMED_SOURCES``)."""

FOLDER_SAMPLE = 64
"""Image files whose headers a folder's size is read from (the largest side wins)."""


@dataclass(frozen=True)
class Machine:
    """What the run may use: device kind, usable CPU cores, bytes of memory available to the
    process (cgroup and rlimit included, ``memory.available_memory``) and of GPU memory."""

    device: Literal["cpu", "cuda"]
    cores: int
    memory: int
    gpu_memory: int = 0

    @classmethod
    def detect(cls, accelerator: str = "auto") -> Machine:
        import torch

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        cuda = accelerator in ("auto", "cuda", "gpu") and torch.cuda.is_available()
        gpu = torch.cuda.get_device_properties(0).total_memory if cuda else 0
        return cls("cuda" if cuda else "cpu", max(1, cores), available_memory(), gpu)

    def describe(self) -> str:
        gpu = f", GPU {self.gpu_memory / 2**30:.0f} GB" if self.device == "cuda" else ""
        return f"{self.cores} cores, {self.memory / 2**30:.1f} GB available{gpu}"


@dataclass(frozen=True)
class DataShape:
    """The data's shape: N images of height x width x channels, or N embeddings of ``dim``
    dimensions; ``frozen`` when a frozen pretrained backbone makes the features."""

    n: int
    height: int = 0
    width: int = 0
    channels: int = 0
    dim: int = 0
    frozen: bool = False

    @property
    def features_given(self) -> bool:
        """Stage 1 trains nothing: the features come from a file or a frozen backbone."""
        return self.dim > 0 or self.frozen

    def describe(self) -> str:
        if self.dim:
            return f"{self.n} embeddings of {self.dim} dimensions"
        return f"{self.n} images of {self.height} x {self.width} x {self.channels}"


@dataclass(frozen=True)
class AutoChoice:
    """Nested overrides chosen by ``choose`` and why, one short line per decision."""

    overrides: dict[str, Any]
    reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"overrides": copy.deepcopy(self.overrides), "reasons": list(self.reasons)}


def frozen_settings(n: int, n_clusters: int) -> dict[str, Any]:
    """Stage-2/3 settings for N stored features and C clusters (the frozen path).

    - q = N / (2 C) clamped to 5..20: with ~N/C images per cluster, more neighbours than
      half a cluster are mostly from other clusters (SCAN's 20 assumes >= 40 per cluster);
      at most (N - 1) / 4, so three-view mining finds its 4q candidates.
    - batch = 2 C clamped to 512..4096: the entropy term spreads a batch's mean prediction
      over C clusters, which a batch smaller than C cannot do with confident predictions.
    - heads and epochs: a budget of 4 x 10^9 image x head x cluster passes (anchor and
      neighbour; the cost of a step grows with C): at least 20 epochs per head before a
      second head is added, 1..10 heads (METHOD.md's 10 at most) and 5..100 epochs. At
      C = 1,000 that is 10 heads x 40 epochs at 10^4, 2 x 20 at 10^5, 1 x 5 at 10^6 (a few
      minutes on 2 cores each, benchmarks/results/scale-2026-12-02.md); at C = 10 it is
      METHOD.md's 10 x 100 up to 4 x 10^5 images.
    - head scoring samples 1 of the q neighbours per image above 10^5 images (each
      neighbour scored costs a pass over the data set; the estimate is unbiased).

    The default method's stage-3 schedule (``stages.clustering.stage3_schedule``) then
    lengthens a stage 3 of fewer than 1,600 steps, to at most 4 x these epochs: below about
    10^5 images at 1,000 clusters the budget above gives a few hundred steps.
    """
    q = int(min(20, max(5, n // (2 * n_clusters)), max(1, (n - 1) // 4)))
    batch = int(min(4096, max(512, 2 * n_clusters)))
    passes = 4e9 / n_clusters
    heads = int(min(10, max(1, passes / (n * 20))))
    epochs = int(min(100, max(5, passes / (n * heads))))
    return {
        "mining": {"q": q, "index": "auto"},
        "clustering": {
            "batch_size": batch,
            "heads": heads,
            "epochs": epochs,
            "score_sample": 1 if n > 100_000 else None,
        },
    }


def resize_for_chosen_k(chosen: AutoChoice, n: int, n_clusters: int) -> dict[str, Any]:
    """The stage-3 settings of ``frozen_settings`` at the number of clusters a search chose,
    for the ones ``chosen`` set (not those the user gave).

    With ``--clusters auto`` or a range, ``choose`` sizes stage 3 for the range's top before
    K is known (``api.most_clusters``: the memory guard must hold for any K it may choose);
    once K is chosen, the batch, heads and epochs follow it. Mining's q is kept: the
    neighbours the search read were mined with it.
    """
    given = chosen.overrides.get("clustering", {})
    fresh = frozen_settings(n, n_clusters)["clustering"]
    return {"clustering": {key: fresh[key] for key in given if key in fresh}}


def _stage3_line(settings: dict[str, Any], n: int, n_clusters: int) -> str:
    c = settings["clustering"]
    sample = f", heads scored on {c['score_sample']} neighbour" if c["score_sample"] else ""
    return (
        f"auto: stages 2-3 for {n} items and {n_clusters} clusters: q={settings['mining']['q']}, "
        f"{c['heads']} head(s) x {c['epochs']} epochs, batch {c['batch_size']}{sample} "
        "(about N/2C neighbours, a batch of 2C, a fixed budget of head passes)"
    )


def _choose_features_given(machine: Machine, data: DataShape, n_clusters: int) -> AutoChoice:
    """Embeddings or a frozen backbone: size stages 2-3 and the extraction batch."""
    settings = frozen_settings(data.n, n_clusters)
    reasons = [_stage3_line(settings, data.n, n_clusters)]
    if data.frozen:
        batch = 512 if machine.device == "cuda" else 256
        settings = merge(settings, {"features": {"batch_size": batch}})
        if machine.device == "cuda":
            settings = merge(settings, {"run": {"precision": "bf16-mixed"}})
        reasons.append(
            f"auto: frozen backbone on the {machine.device.upper()}: extraction batch {batch}"
            + (", bf16" if machine.device == "cuda" else "")
        )
    return AutoChoice(settings, tuple(reasons))


def _choose_cpu_images(machine: Machine, data: DataShape, n_clusters: int) -> AutoChoice:
    """The small CNN of the ``cpu-*`` presets; the epochs from the time budget."""
    native = max(data.height, data.width)
    cap = 28 if data.channels == 1 else 32  # the grey cpu-* presets train at <= 28 px
    size = max(8, min(native, cap))
    features = copy.deepcopy(PRESETS["cpu-cifar10"]["features"])
    if size <= 16:
        features.update(width=16, projector_hidden=256, predictor_hidden=256, out_dim=64)
    features.update(epochs=CPU_MAX_EPOCHS)
    settings: dict[str, Any] = {
        "data": {"image_size": size, "channels": data.channels},
        "features": features,
        "mining": {"warmup_epochs": 10},
        "run": {"time_budget": CPU_TIME_BUDGET},
    }
    if data.channels == 1:  # digits and characters: a mirrored 2 is not a 2
        settings["augment"] = copy.deepcopy(PRESETS["cpu-omniglot"]["augment"])
    stage3 = frozen_settings(data.n, n_clusters)
    settings = merge(settings, stage3)
    resized = f"resized from {native} px" if size != native else "native size"
    return AutoChoice(
        settings,
        (
            f"auto: CPU ({machine.describe()}): small CNN at {size} px ({resized}), batch "
            f"{features['batch_size']}, queue {features['queue_length']}",
            f"auto: time budget {CPU_TIME_BUDGET / 60:.0f} min (run.time_budget): the stage-1 "
            f"epochs (at most {CPU_MAX_EPOCHS}) come from a calibration measured at the start",
            _stage3_line(stage3, data.n, n_clusters),
        ),
    )


def _choose_gpu_images(machine: Machine, data: DataShape, n_clusters: int) -> AutoChoice:
    """A ResNet at native size (up to 224 px), the paper's schedule, bf16."""
    native = max(data.height, data.width)
    size = max(8, min(native, 224))
    big = size >= 96 and machine.gpu_memory >= 40 * 2**30
    backbone = "resnet50" if big else "resnet18"
    hidden = 4096 if big else 2048
    epochs = 300 if data.n <= 100_000 else max(20, GPU_IMAGES_SEEN // data.n)
    workers = max(0, min(8, machine.cores - 1))
    settings: dict[str, Any] = {
        "data": {"image_size": size, "channels": data.channels},
        "features": {
            "backbone": backbone,
            "small_stem": size <= 96,
            "projector_hidden": hidden,
            "predictor_hidden": hidden,
            "epochs": epochs,
            "batch_size": 256,
        },
        "run": {"precision": "bf16-mixed", "workers": workers},
    }
    stage3 = frozen_settings(data.n, n_clusters)
    settings = merge(settings, stage3)
    return AutoChoice(
        settings,
        (
            f"auto: GPU ({machine.describe()}): {backbone} at {size} px, {epochs} stage-1 "
            f"epochs, batch 256, bf16, {workers} loader workers",
            _stage3_line(stage3, data.n, n_clusters),
        ),
    )


def choose(machine: Machine, data: DataShape, n_clusters: int) -> AutoChoice:
    """The ``auto`` preset for this machine, data and cluster count (see module docstring).
    Empty data gets nothing (the loader refuses it with its own message)."""
    if data.n < 1:
        return AutoChoice({}, ())
    if data.features_given:
        return _choose_features_given(machine, data, n_clusters)
    if machine.device == "cuda":
        return _choose_gpu_images(machine, data, n_clusters)
    return _choose_cpu_images(machine, data, n_clusters)


def without(overrides: dict[str, Any], explicit: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` less every setting ``explicit`` names (what auto actually decides)."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        given = explicit.get(key)
        if isinstance(value, dict) and isinstance(given, dict):
            kept = without(value, given)
            if kept:
                out[key] = kept
        elif key not in explicit:
            out[key] = copy.deepcopy(value)
    return out


def dotted(settings: dict[str, Any], where: str = "") -> list[str]:
    """The dotted names of the leaf settings of nested overrides."""
    names: list[str] = []
    for key, value in settings.items():
        name = f"{where}.{key}" if where else key
        names += dotted(value, name) if isinstance(value, dict) else [name]
    return names


def _image_array_shape(shape: tuple[int, ...] | None) -> tuple[int, int, int, int] | None:
    if shape is None or len(shape) not in (3, 4):
        return None
    return shape[0], shape[1], shape[2], 1 if len(shape) == 3 else shape[3]


def _folder_shape(path: Path) -> tuple[int, int, int, int]:
    """N image files and the largest side of the first ``FOLDER_SAMPLE`` (headers only)."""
    from PIL import Image

    from smcluster.data.folders import scan_folder

    paths = scan_folder(str(path))[0]
    side = 0
    for file in paths[:FOLDER_SAMPLE]:
        try:
            with Image.open(file) as image:
                side = max(side, *image.size)
        except OSError:
            continue
    return len(paths), side, side, 3


def source_shape(source: str) -> tuple[int, int, int, int] | None:
    """(N, height, width, channels) of an image source, read without decoding the images;
    None when it cannot be told (the loader then says why the source is unreadable)."""
    name = str(source).strip()
    if name.lower() in NATIVE_SHAPES:
        return NATIVE_SHAPES[name.lower()]
    path = Path(name).expanduser()
    if path.is_dir():
        return _folder_shape(path)
    if path.suffix.lower() == ".npz" and path.is_file():
        return _image_array_shape(npz_field_shape(path, "images"))
    return None


def embeddings_shape(path: str | Path) -> tuple[int, int] | None:
    """(N, D) of an embeddings file from its header, or None."""
    path = Path(path).expanduser()
    if path.suffix.lower() == ".npz":
        shape = npz_field_shape(path, "embeddings")
    else:
        try:
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
        except (OSError, ValueError):
            return None
    return (shape[0], shape[1]) if shape is not None and len(shape) == 2 else None


def data_shape(config: Config, data: Any = None) -> DataShape:
    """The shape of the data ``config`` names, or of ``data`` given in memory (an ImageSet,
    ``Embeddings``, a source string, or an array: N x D floats, or images N x H x W [x C]).

    Headers first; a source whose header does not tell is loaded (its loader then says what
    is wrong with it, or the shape comes from the loaded set).
    """
    frozen = stage1_training(config.features) == "frozen"
    if data is None and config.data.embeddings is not None:
        found = embeddings_shape(config.data.embeddings)
        if found is None:
            from smcluster.data.embeddings import load_embeddings

            found = load_embeddings(config.data.embeddings).vectors.shape
        return DataShape(found[0], dim=found[1])
    source = data if data is not None else config.data.source
    if isinstance(source, (str, Path)):
        found = source_shape(str(source))
        if found is not None:
            return DataShape(*found, frozen=frozen)
        from smcluster.data import load_dataset

        d = config.data
        data = load_dataset(str(source), root=d.root, download=d.download, lazy=None)
    if hasattr(data, "image_size") and hasattr(data, "channels"):
        s = data.image_size
        return DataShape(len(data), s, s, data.channels, frozen=frozen)
    shape = tuple(np.shape(getattr(data, "vectors", data)))
    if len(shape) == 2:
        return DataShape(shape[0], dim=shape[1])
    found = _image_array_shape(shape)
    if found is None:
        raise ValueError(
            f"auto cannot size settings for data of shape {shape}: give images N x H x W "
            "[x C], embeddings N x D, or a named preset"
        )
    return DataShape(*found, frozen=frozen)
