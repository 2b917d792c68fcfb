"""A time budget for a whole run: a short measured calibration chooses the stage-1 epochs.

``run.time_budget`` (seconds; ``--time-budget 20m``) is what a user can wait. Before the run
folder is written, ``fit_budget`` measures on the actual data, model and batch:

- a few real stage-1 steps (``train_features`` on a throwaway model: it builds its own model
  and optimiser from the run's seed, and the run re-seeds before its own stage 1, so the result
  is the one of a run given the chosen epochs directly);
- one no-grad pass over a sample of the images (an extraction pass: stage 2 and 3 make
  2 + V (+1 for the strong view) of them, ``sources``);
- one epoch of stage-3 heads on a sample of stand-in features (the mining head's warm-up, the
  SCAN epochs, head selection and self-labelling cost that much per epoch).

``plan_epochs`` (a pure function of those measurements) plans 90 % of the budget
(``PLANNED_SHARE``: what the timed steps miss), keeps stage 3 unless it would take more than
half of that (then its epochs are cut, down to a floor) and gives stage 1 the rest,
between 1 epoch and the configured ``features.epochs`` (the ceiling: the method's 300, or a
preset's). The chosen epochs go into ``config.yaml``, so a resumed run does not recalibrate; the
measurements and the choice go into ``progress.json`` (``budget``). The kNN search is not
measured: seconds up to 10^5 images (README, "Scale"). A budget sizes a trained stage 1 only; a
frozen backbone or precomputed embeddings are left as configured.

``run_eta`` is the arithmetic of the whole-run ETA the stage-1 epochs print.
"""

from __future__ import annotations

import io
import math
import re
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import torch
from lightning_fabric import Fabric

from smcluster.config import Config, most_clusters, stage1_training
from smcluster.models import ClusterHeads
from smcluster.stages.clustering import stage3_schedule, train_heads_on_embeddings
from smcluster.stages.features import extract_features, train_features, training_batch

CALIBRATION_STEPS = 5
"""Stage-1 steps timed (after one untimed warm-up step)."""

SAMPLE_IMAGES = 1024
"""Images of the extraction pass and stand-in features of the stage-3 epoch timed."""

PLANNED_SHARE = 0.9
"""The share of the budget the plan fills: the timed steps miss per-epoch costs (shuffling,
augmenting, the epoch's checkpoint and ETA), which made runs planned to the whole budget end
0-7 % over it (benchmarks/results/first-run-2026-12-02.md)."""

STAGE3_SHARE = 0.5
"""Stage 3 keeps its epochs unless they take more than this share of the budget."""

STAGE3_FLOOR = 10
"""Stage-3 epochs a budget never cuts below (or the configured epochs, when fewer)."""

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|sec|m|min|h)?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {None: 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in ``"90s"``, ``"20m"``, ``"1.5h"`` or ``"1200"`` (plain seconds)."""
    match = _DURATION.match(str(text))
    seconds = 0.0
    if match:
        unit = match.group(2).lower() if match.group(2) else None
        seconds = float(match.group(1)) * _UNIT_SECONDS[unit]
    if seconds <= 0:
        raise ValueError(
            f"time budget {text!r} is not a positive duration: give seconds or a number with "
            "s, m or h, e.g. 90s, 20m, 1.5h"
        )
    return seconds


def format_duration(seconds: float) -> str:
    """``"45 s"``, ``"12 min"``, ``"1.5 h"``: the unit a person reads a wait in."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _gives(settings: dict[str, Any], section: str, key: str) -> bool:
    return isinstance(settings.get(section), dict) and key in settings[section]


def settle_explicit_epochs(config: Config, explicit: Iterable[dict[str, Any]]) -> Config:
    """Who decides the stage-1 epochs, given the settings the user named (a ``--config`` file,
    flags, keyword settings; not a preset's).

    Both a time budget and ``features.epochs`` named is a ValueError naming both. Epochs named
    while the budget comes from a preset: the epochs win and the budget is turned off.
    """
    explicit = list(explicit)
    epochs = any(_gives(s, "features", "epochs") for s in explicit)
    budget = any(_gives(s, "run", "time_budget") for s in explicit)
    if not epochs or config.run.time_budget is None:
        return config
    if budget:
        raise ValueError(
            "run.time_budget (--time-budget) and features.epochs (--epochs) both decide the "
            "stage-1 epochs: give one of them (the budget chooses epochs up to the preset's or "
            "default features.epochs)"
        )
    return config.updated({"run": {"time_budget": None}})


@dataclass(frozen=True)
class Measured:
    """What a calibration measured; seconds each."""

    step_seconds: float
    steps_per_epoch: int
    epoch_overhead_seconds: float
    pass_seconds: float
    head_epoch_seconds: float
    spent_seconds: float
    images: int
    clusters: int

    @property
    def epoch_seconds(self) -> float:
        """One stage-1 epoch: its steps and its checkpoint."""
        return self.step_seconds * self.steps_per_epoch + self.epoch_overhead_seconds


@dataclass(frozen=True)
class Plan:
    """The epochs a budget chose and the time each part is expected to take."""

    budget_seconds: float
    features_epochs: int
    features_warmup_epochs: int
    clustering_epochs: int
    stage1_seconds: float
    later_seconds: float
    measured: Measured

    def overrides(self) -> dict[str, Any]:
        return {
            "features": {
                "epochs": self.features_epochs,
                "warmup_epochs": self.features_warmup_epochs,
            },
            "clustering": {"epochs": self.clustering_epochs},
        }

    def record(self) -> dict[str, Any]:
        """What ``progress.json`` keeps under ``budget``."""
        out = asdict(self)
        out.update(out.pop("measured"))
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}

    def line(self) -> str:
        m = self.measured
        total = m.spent_seconds + self.stage1_seconds + self.later_seconds
        return (
            f"time budget {format_duration(self.budget_seconds)}: stage 1: "
            f"{m.step_seconds:.3f} s/step x {m.steps_per_epoch} steps/epoch -> "
            f"{self.features_epochs} epochs in {format_duration(self.stage1_seconds)}; "
            f"stages 2-3 ~{format_duration(self.later_seconds)} ({self.clustering_epochs} "
            f"stage-3 epochs); whole run ~{format_duration(total)}"
        )


def extraction_passes(config: Config) -> int:
    """Passes over the images after stage 1 (``sources``): embeddings, mined features, V weak
    views, the strong view of the three-view mining, V strong views of frozen self-labelling."""
    c = config.clustering
    passes = 2 + c.feature_views + (config.mining.method == "three-view")
    return passes + (c.feature_views if c.self_label and not c.update_backbone else 0)


def later_seconds(config: Config, measured: Measured, clustering_epochs: int) -> float:
    """Stages 2-3 with ``clustering_epochs`` SCAN epochs configured (which
    ``stage3_schedule`` may lengthen): extraction passes, the mining head's warm-up, head
    selection (about an epoch) and self-labelling, at the measured rates. A fine-tuned
    backbone costs about a stage-1 epoch per stage-3 epoch (rough: both push every image twice
    through the backbone)."""
    c = config.clustering
    heads = (config.mining.method == "three-view") * config.mining.warmup_epochs + 1
    configured = replace(c, epochs=clustering_epochs)
    scan = stage3_schedule(configured, measured.images, measured.clusters).epochs
    tuned = scan + (c.self_label_epochs if c.self_label else 0)
    per_tuned = measured.epoch_seconds if c.update_backbone else measured.head_epoch_seconds
    passes = extraction_passes(config) * measured.pass_seconds
    return passes + heads * measured.head_epoch_seconds + tuned * per_tuned


def plan_epochs(config: Config, measured: Measured, budget: float) -> Plan:
    """Epochs that fit ``budget`` seconds in all (see the module docstring)."""
    f, c = config.features, config.clustering
    available = PLANNED_SHARE * budget - measured.spent_seconds
    clustering_epochs = c.epochs
    if later_seconds(config, measured, c.epochs) > STAGE3_SHARE * available:
        per_epoch = later_seconds(config, measured, 1) - later_seconds(config, measured, 0)
        room = STAGE3_SHARE * available - later_seconds(config, measured, 0)
        fits = math.floor(room / per_epoch) if per_epoch > 0 else c.epochs
        clustering_epochs = max(min(c.epochs, STAGE3_FLOOR), min(c.epochs, fits))
    later = later_seconds(config, measured, clustering_epochs)
    fits = math.floor((available - later) / measured.epoch_seconds)
    epochs = min(max(fits, 1), f.epochs)
    warmup = f.warmup_epochs
    if warmup >= epochs:
        warmup = min(epochs - 1, f.warmup_epochs * epochs // f.epochs)
    return Plan(
        budget_seconds=budget,
        features_epochs=epochs,
        features_warmup_epochs=warmup,
        clustering_epochs=clustering_epochs,
        stage1_seconds=epochs * measured.epoch_seconds,
        later_seconds=later,
        measured=measured,
    )


def measure(
    config: Config, data, fabric: Fabric, spent_seconds: float, steps: int = CALIBRATION_STEPS
) -> Measured:
    """Time stage-1 steps, an extraction pass and a stage-3 epoch (module docstring)."""
    quiet = config.updated({"run": {"progress": False}})
    marks: list[float] = []

    def on_step() -> bool:
        marks.append(time.perf_counter())
        return len(marks) > steps

    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the run itself warns about its settings
        model = train_features(data, quiet, fabric, on_step=on_step)
    step = (marks[-1] - marks[0]) / (len(marks) - 1) if len(marks) > 1 else marks[0] - started
    buffer = io.BytesIO()
    saved = time.perf_counter()
    torch.save({"model": model.state_dict()}, buffer)
    overhead = 3 * (time.perf_counter() - saved)  # model + optimiser state, written to disk
    n = len(data)
    sample = data.subset(np.arange(min(n, SAMPLE_IMAGES)))
    timed = time.perf_counter()
    embeddings = extract_features(model.online.backbone, sample, quiet, fabric)
    pass_seconds = (time.perf_counter() - timed) * n / len(sample)
    head_epoch = _head_epoch_seconds(config, embeddings, n)
    return Measured(
        step_seconds=step,
        steps_per_epoch=max(n // training_batch(config, n), 1),
        epoch_overhead_seconds=overhead,
        pass_seconds=pass_seconds,
        head_epoch_seconds=head_epoch,
        spent_seconds=spent_seconds + time.perf_counter() - started,
        images=n,
        clusters=most_clusters(config.n_clusters, n),
    )


def _head_epoch_seconds(config: Config, embeddings: torch.Tensor, n: int) -> float:
    """One epoch of the stage-3 heads on the sample's features, stored as the run stores its
    V weak views (float16), scaled to ``n`` images; random neighbours (the cost does not
    depend on which they are)."""
    c = config.clustering
    rows = len(embeddings)
    views = embeddings.half()[None].expand(c.feature_views, -1, -1).contiguous()
    generator = torch.Generator().manual_seed(0)
    neighbours = torch.randint(rows, (rows, config.mining.q), generator=generator)
    heads = ClusterHeads(embeddings.shape[1], most_clusters(config.n_clusters, n), c.heads)
    started = time.perf_counter()
    train_heads_on_embeddings(heads, views, neighbours, c, epochs=1, seed=0, progress=False)
    return (time.perf_counter() - started) * n / rows


def fit_budget(
    config: Config,
    data,
    fabric: Fabric,
    spent_seconds: float,
    say: Callable[[str], None] = lambda _: None,
) -> tuple[Config, Plan | None]:
    """``config`` with the epochs its time budget affords, and the plan (None: no budget, or
    nothing a budget sizes, which ``say`` notes). Every process measures; rank 0's plan wins."""
    if config.run.time_budget is None:
        return config, None
    if config.data.embeddings is not None or stage1_training(config.features) == "frozen":
        say("note: run.time_budget sizes a trained stage 1; this run has none, so it is ignored")
        return config, None
    measured = measure(config, data, fabric, spent_seconds)
    plan = fabric.broadcast(plan_epochs(config, measured, config.run.time_budget), src=0)
    say(plan.line())
    if plan.stage1_seconds + plan.later_seconds + measured.spent_seconds > plan.budget_seconds:
        say(
            "note: the budget is too short for the fewest epochs (1 of stage 1, "
            f"{plan.clustering_epochs} of stage 3): lower features.batch_size or "
            "data.image_size, or give more time"
        )
    return config.updated(plan.overrides()).validate(), plan


def run_eta(
    epochs_done: int,
    epochs_total: int,
    epoch_seconds: list[float],
    later_seconds: float,
    now: datetime,
) -> tuple[float, datetime]:
    """Seconds left in the whole run and the clock time it ends: the stage's remaining epochs
    at the mean of the measured ones, plus the estimate of the stages after it."""
    mean = sum(epoch_seconds) / len(epoch_seconds) if epoch_seconds else 0.0
    left = max(epochs_total - epochs_done, 0) * mean + later_seconds
    return left, now + timedelta(seconds=left)


def with_run_eta(
    callback: Callable[..., None],
    epochs_total: int,
    later: float | None,
    say: Callable[[str], None],
    now: Callable[[], datetime] = datetime.now,
) -> Callable[..., None]:
    """``callback`` (a stage-1 epoch-end callback) that then says the ETA of the whole run, or
    of stage 1 when there is no estimate of the later stages (``later`` None: no budget)."""
    seconds: list[float] = []
    what = "stage 1" if later is None else "run"

    def on_epoch_end(epoch: int, model, optimizer, record: dict[str, Any]) -> None:
        callback(epoch, model, optimizer, record)
        seconds.append(float(record["seconds"]))
        left, end = run_eta(epoch + 1, epochs_total, seconds, later or 0.0, now())
        say(
            f"stage 1 epoch {epoch + 1}/{epochs_total}: {seconds[-1]:.1f} s; {what} ETA "
            f"{end:%H:%M} (~{format_duration(left)} left)"
        )

    return on_epoch_end
