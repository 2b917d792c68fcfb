"""Runs the three stages into a run folder: orchestration, resume, outputs.

The data flow is one way (METHOD.md): images -> stage 1 (feature model) -> features ->
stage 2 (neighbours) -> stage 3 (cluster heads) -> assignments and metrics. Each stage's
result is a file in the run folder (see CONTRIBUTING.md, "Run folder"); a stage whose file
exists is not run again when a run is resumed, and a stage that was interrupted continues from
its last finished epoch. Whatever a stage creates from random numbers is drawn from a seed of
its own, never from the state earlier stages left, so a run resumed at any point gives the
assignments an unbroken one gives; a finished run is returned as it is. Only rank 0 writes.
The folder's layout lives in ``runfolder``; inference on a finished run in ``inference``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import platform
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning_fabric import Fabric
from torch import nn

from smcluster.augment import ViewMaker
from smcluster.autoconfig import AutoChoice, resize_for_chosen_k
from smcluster.budget import fit_budget
from smcluster.config import Config, cluster_range
from smcluster.data import ImageSet, load_dataset
from smcluster.data.cache import ResizeCost, cache_fits, open_image_cache, write_image_cache
from smcluster.data.embeddings import Embeddings, load_embeddings
from smcluster.data.imageset import FileImageSet
from smcluster.engine import make_fabric, seed_everything, stage_seed
from smcluster.memory import check_memory, estimate_memory, fit_batch_to_memory, format_bytes
from smcluster.metrics import evaluate, knn_accuracy
from smcluster.models import ClusterHeads
from smcluster.runfolder import (
    IN_MEMORY,
    EpochCheckpoints,
    Progress,
    RunFolder,
    StageClock,
    atomic_write,
    resolve_config,
)
from smcluster.sources import (
    FEATURE_SOURCES,
    StageOne,
    embeddings_with_images,
    feature_source,
    resolve_for_source,
)
from smcluster.stages.choose_k import candidate_grid, choose_n_clusters
from smcluster.stages.clustering import (
    ClusteringModel,
    head_probability_chunks,
    image_fetch,
    score_heads,
    select_head,
    selected_heads,
    self_label_on_embeddings,
    stage3_schedule,
    train_heads_on_embeddings,
    train_scan,
    train_self_label,
)
from smcluster.stages.features import extract_features
from smcluster.stages.mining import (
    MINING_METHODS,
    MiningInputs,
    images_needed,
    instance_neighbours,
)
from smcluster.stages.neighbours import choose_index, neighbour_purity


def environment(config: Config, fabric: Fabric) -> dict[str, Any]:
    """Versions, threads and devices, recorded with every run."""
    import faiss
    import lightning_fabric
    import sklearn
    import torchvision

    return {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "lightning_fabric": lightning_fabric.__version__,
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "scikit_learn": sklearn.__version__,
        "threads": torch.get_num_threads(),
        "workers": config.run.workers,
        "device": str(fabric.device),
        "world_size": fabric.world_size,
        "precision": config.run.precision,
        "seed": config.run.seed,
        "command": " ".join(sys.argv),
    }


def load_data(config: Config) -> ImageSet:
    d = config.data
    if d.source == IN_MEMORY:
        raise ValueError("these images were given in memory: pass them to fit again")
    if d.source is None:
        raise ValueError(
            f"this run clustered the embeddings of {d.embeddings} without images: give the "
            "images with --data to see them"
        )
    return load_dataset(
        d.source, image_size=d.image_size, channels=d.channels, root=d.root, download=d.download
    )


def _images_resized_once(
    data: ImageSet | None, folder: RunFolder, fabric: Fabric, say: Callable[[str], None]
) -> tuple[ImageSet | None, ResizeCost | None]:
    """The images at the working size, decoded and resized once (``data.cache``): a lazy set
    of files is mapped from the run's image cache, written first if absent; the cost of that,
    or of the resize at load, is said and returned (None when nothing was done now)."""
    if isinstance(data, FileImageSet) and cache_fits(data, folder.path("image_cache")):
        path, cost = folder.path("image_cache"), None
        if folder.writer and not path.exists():
            folder.root.mkdir(parents=True, exist_ok=True)
            cost = write_image_cache(data, path)
            say(cost.line(f"{len(data)} files decoded and resized into {path.name}"))
        fabric.barrier()
        return open_image_cache(data, path), cost
    if data is not None and data.resize_cost is not None:
        say(data.resize_cost.line(f"{len(data)} images resized"))
    return data, None if data is None else data.resize_cost


def check_data(data: ImageSet | Embeddings, config: Config) -> None:
    """Refuse data sets the configuration cannot cluster, with the fix in the message."""
    n, what = len(data), "embeddings" if isinstance(data, Embeddings) else "images"
    if isinstance(config.n_clusters, str):
        cluster_range(config.n_clusters, n)
    elif n < config.n_clusters:
        raise ValueError(
            f"{n} {what} cannot form {config.n_clusters} clusters: lower n_clusters or add images"
        )
    need = images_needed(config)
    if n < need:
        raise ValueError(
            f"mining.method={config.mining.method!r} with q={config.mining.q} needs at least "
            f"{need} images, the data has {n}: lower mining.q"
        )


def check_embeddings_memory(config: Config, embeddings: Embeddings, device: torch.device) -> str:
    """The memory guard of a run on precomputed embeddings, before any work: the estimated
    peak (``memory.estimate_memory``) against the memory available; a ValueError naming the
    setting to change when it does not fit, else a line saying what it will take."""
    n, d = embeddings.vectors.shape
    most = cluster_range(config.n_clusters, n)[1]
    c = stage3_schedule(config.clustering, n, most)
    index = config.mining.index
    terms = estimate_memory(
        n,
        d,
        config.mining.q,
        most,
        c.heads,
        batch_size=c.batch_size,
        index=choose_index(n, device) if index == "auto" else index,
        embeddings_mapped=isinstance(embeddings.vectors, np.memmap),
        probabilities_in_memory=True,
    )
    stage, need = check_memory(terms)
    return f"memory: about {format_bytes(need)} at the peak ({stage} stage)"


def check_image_memory(
    config: Config, data: ImageSet, device: torch.device, auto: AutoChoice | None
) -> tuple[Config, str]:
    """The memory guard of a run on images (``memory.fit_batch_to_memory``): a batch that
    ``auto`` chose is lowered to fit, one the user set is an error naming it. On a GPU the
    estimate is held against the device's free memory (the model and activations dominate)."""
    chosen = auto.overrides if auto is not None else {}
    adjustable = any("batch_size" in chosen.get(s, {}) for s in ("features", "clustering"))
    room = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    return fit_batch_to_memory(
        config, len(data), data.channels, data.image_size, adjustable=adjustable, available=room
    )


@dataclass
class RunResult:
    """What a finished run returns to the API (and wrote to its folder).

    ``already_finished``: the run had finished before this call, which changed nothing.
    """

    folder: RunFolder
    config: Config
    labels: np.ndarray
    probabilities: np.ndarray
    metrics: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    already_finished: bool = False


def stored_result(folder: RunFolder, config: Config) -> RunResult:
    """The result a finished run wrote, read back without touching any file."""
    probabilities = folder.load_array("probabilities")
    metrics = folder.load_json("metrics")
    seconds = folder.load_progress().seconds
    labels = probabilities.argmax(axis=1)
    return RunResult(folder, config, labels, probabilities, metrics, seconds, True)


def run_pipeline(
    config: Config,
    out: str | Path,
    *,
    resume: bool = False,
    data: ImageSet | None = None,
    embeddings: Embeddings | None = None,
    fabric: Fabric | None = None,
    log: Callable[[str], None] | None = None,
    features_from: str | Path | None = None,
    auto: AutoChoice | None = None,
) -> RunResult:
    """Run every stage for ``config``, writing the run folder ``out``; see module docstring.

    ``data`` and ``embeddings`` are images or precomputed features given in memory (the run
    keeps a copy); otherwise they are read from ``config.data``.

    ``features_from`` names a finished run with the same data, augmentation, feature and seed
    settings whose stage 1 is reused, so variants of stages 2 and 3 share one feature model.

    ``auto``: what the ``auto`` preset chose (``autoconfig.choose``), said in the log and
    kept in environment.json; the memory guard may lower a batch only ``auto`` chose.
    """
    started = time.perf_counter()
    config, notes = resolve_for_source(config.validate())
    config = resolve_config(out, config, resume=resume)
    if resume and RunFolder(out).finished():
        if log is not None:
            log(f"{out} has already finished: nothing to do (its stored result is returned)")
        return stored_result(RunFolder(out), config)
    for note in notes if log is not None and not resume else []:
        log(f"note: {note}")
    for line in auto.reasons if log is not None and auto is not None and not resume else []:
        log(line)
    if data is None and config.data.source is not None:
        data = load_data(config)
    if embeddings is None and config.data.embeddings is not None:
        embeddings = load_embeddings(config.data.embeddings)
    if embeddings is not None:
        embeddings = embeddings_with_images(embeddings, data)
    items = embeddings if embeddings is not None else data
    check_data(items, config)
    fabric = fabric or make_fabric(config.run)
    if embeddings is not None:
        memory = check_embeddings_memory(config, embeddings, fabric.device)
    elif not resume:
        config, memory = check_image_memory(config, data, fabric.device, auto)
    if (embeddings is not None or not resume) and log is not None and fabric.is_global_zero:
        log(memory)
    folder = RunFolder(out, writer=fabric.is_global_zero)
    say_first = log if (log is not None and fabric.is_global_zero) else (lambda _: None)
    data, resized = _images_resized_once(data, folder, fabric, say_first)
    plan = None
    if not resume:
        spent = time.perf_counter() - started
        config, plan = fit_budget(config, data, fabric, spent, say_first)
    embeddings_in_memory = config.data.embeddings == IN_MEMORY
    if embeddings_in_memory:
        stored_at = str(folder.path("input_embeddings").resolve())
        config = config.updated({"data": {"embeddings": stored_at}})
    in_memory = config.data.source == IN_MEMORY
    if in_memory:
        stored = {
            "source": str(folder.path("images").resolve()),
            "image_size": data.image_size,
            "channels": data.channels,
        }
        config = config.updated({"data": stored})
    if not resume and folder.writer:
        folder.root.mkdir(parents=True, exist_ok=True)
        if in_memory:
            _save_images(folder, data)
        if embeddings_in_memory:
            _save_embeddings(folder, embeddings)
        atomic_write(folder.path("config"), config.save)
        folder.save_json(
            "environment",
            {**environment(config, fabric), **({"auto": auto.to_dict()} if auto else {})},
        )
        if features_from is not None:
            reuse_features(RunFolder(features_from), folder, config)
    if resume:
        folder.repair_history()
    fabric.barrier()
    say = log if (log is not None and fabric.is_global_zero) else (lambda _: None)
    seed_everything(config.run.seed)
    shape = (
        f"{len(data)} images, {data.channels} x {data.image_size} px"
        if embeddings is None
        else f"{len(embeddings)} embeddings of {embeddings.vectors.shape[1]} dimensions"
    )
    say(
        f"data: {items.name}, {shape}, {config.n_clusters} clusters, device {fabric.device}, "
        f"{torch.get_num_threads()} threads, world size {fabric.world_size}"
    )
    source = feature_source(config)
    if (
        fabric.device.type == "cpu"
        and source == "train"
        and config.features.backbone.startswith("resnet")
    ):
        say(
            f"note: {config.features.backbone} for {config.features.epochs} epochs is GPU-sized; "
            "on a CPU start from a small preset (smcluster presets: demo, cpu-*)"
        )
    progress = folder.load_progress()
    if plan is not None:
        progress.budget = plan.record()
    if resized is not None:
        progress.image_cache = resized.record()
    folder.save_progress(progress)
    views = ViewMaker(**config.to_dict()["augment"])
    clock = StageClock(folder, progress)
    run = RunContext(
        config, data, embeddings, items, fabric, folder, views, say, progress, clock, auto
    )

    stage_one = FEATURE_SOURCES[source](run)
    run.clock.charge("features")

    instance = None
    if isinstance(config.n_clusters, str):
        run, instance = _stage_choose_k(run, stage_one)
        run.clock.charge("k_search")

    neighbours, weights, diagnostics = _stage_neighbours(run, stage_one, instance)
    run.clock.charge("neighbours")

    clustering = _stage_clustering(run, stage_one, neighbours, weights)
    run.clock.charge("clustering")
    return _write_outputs(run, clustering, stage_one.embeddings, neighbours, diagnostics)


@dataclass
class RunContext:
    """What every stage of one run reads: settings, images (None when only embeddings were
    given), precomputed embeddings (or None), ``items`` (whichever of the two is clustered:
    its ids and labels name the outputs), devices, folder, views, log, and the run's progress
    with the clock that charges each stage's time to it."""

    config: Config
    data: ImageSet | None
    embeddings: Embeddings | None
    items: ImageSet | Embeddings
    fabric: Fabric
    folder: RunFolder
    views: ViewMaker
    say: Callable[[str], None]
    progress: Progress
    clock: StageClock
    auto: AutoChoice | None = None

    def epoch_checkpoints(self, stage: str, timed_as: str) -> EpochCheckpoints:
        return EpochCheckpoints(self.folder, stage, self.clock, timed_as)


def _mining_inputs(run: RunContext, stage_one: StageOne, **extra: Any) -> MiningInputs:
    """Stage 2's inputs from stage 1's arrays (``extra``: MiningInputs' optional fields)."""
    return MiningInputs(
        stage_one.features,
        stage_one.strong_features,
        stage_one.weak_embeddings,
        run.config,
        run.fabric.device,
        **extra,
    )


def _stage_choose_k(run: RunContext, stage_one: StageOne) -> tuple[RunContext, np.ndarray | None]:
    """Choose the number of clusters in the range ``n_clusters`` gives (``stages.choose_k``).

    Between stages 1 and 2, since the three-view mining's weak-view head needs K: scored on
    the stored stage-1 embeddings and their plain-kNN neighbours (the first q of the mining's
    own kNN search, returned so stage 2 does not search again). The result is saved in
    ``k-search.json`` and the resolved number in ``config.yaml``, so a resumed run reads the
    choice instead of searching again. Returns the run with the chosen K (and the kNN search,
    None when the choice was read back).
    """
    config, folder = run.config, run.folder
    lo, hi = cluster_range(config.n_clusters, len(run.items))
    saved = folder.load_json("k_search") if folder.path("k_search").exists() else None
    instance = None
    if saved is None:
        instance = instance_neighbours(_mining_inputs(run, stage_one))
        q = config.mining.q
        search = choose_n_clusters(
            stage_one.embeddings,
            instance[:, :q],
            candidate_grid(lo, hi),
            config.clustering,
            seed=config.run.seed,
            criterion=config.clustering.k_criterion,
            device=run.fabric.device,
        )
        saved = {"request": config.n_clusters, "range": [lo, hi], **search.to_dict()}
        saved["neighbours"] = f"plain kNN, q = {q}"
        folder.save_json("k_search", saved)
    chosen = int(saved["chosen"])
    config = config.updated({"n_clusters": chosen})
    resized = resize_for_chosen_k(run.auto, len(run.items), chosen) if run.auto else {}
    config = config.updated(resized)
    if folder.writer:
        atomic_write(folder.path("config"), config.save)
    notes = []
    if saved.get("images") and saved["images"] < len(stage_one.embeddings):
        notes.append(f" on a sample of {saved['images']} images")
    if instance is None:
        notes.append(" (read from k-search.json)")
    if saved.get("reading"):
        notes.append(f"; {saved['reading']}")
    run.say(
        f"number of clusters: {chosen}, chosen by {saved['criterion']} among "
        f"{len(saved['candidates'])} values from {lo} to {hi} in {saved['seconds']:.1f} s"
        + "".join(notes)
    )
    if resized.get("clustering"):
        c = config.clustering
        run.say(
            f"auto: stage 3 for {chosen} clusters: {c.heads} head(s) x {c.epochs} epochs, "
            f"batch {c.batch_size} (it was sized for the range's top, {hi}, before the search)"
        )
    edge = {lo: "lower", hi: "upper"}.get(chosen) if lo < hi else None
    if edge is not None:
        warnings.warn(
            f"the best number of clusters is the range's {edge} end {chosen}; try a wider "
            "range (--clusters LO:HI)",
            stacklevel=2,
        )
    return dataclasses.replace(run, config=config), instance


def _stage_neighbours(
    run: RunContext, stage_one: StageOne, instance: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Stage 2: the configured mining, its arrays saved (the neighbours' SCAN-loss weights
    too, when weighted); purities when labels exist.

    ``instance``: the mining's kNN search when the number of clusters was chosen first."""
    config, folder, labels = run.config, run.folder, run.items.labels
    started = time.perf_counter()
    neighbours = folder.load_array("neighbours")
    knn = folder.load_array("neighbours_knn")
    weighted = config.mining.weighting != "none"
    weights = folder.load_array("neighbour_weights") if weighted else None
    if neighbours is None or knn is None or (weighted and weights is None):
        inputs = _mining_inputs(
            run,
            stage_one,
            on_epoch_end=run.epoch_checkpoints("mining-head", "neighbours"),
            checkpoint=folder.resume_point("mining-head"),
            instance=instance,
        )
        mined = MINING_METHODS[config.mining.method](inputs)
        neighbours, knn, weights = mined.neighbours, mined.knn, mined.weights
        if mined.head is not None:
            folder.save_checkpoint("mining-head", {"heads": mined.head.state_dict()})
        if labels is not None:
            run.progress.diagnostics = {
                f"neighbour_purity_{step}": neighbour_purity(array, labels)
                for step, array in mined.steps.items()
            }
            folder.save_progress(run.progress)
        if weights is not None:
            folder.save_array("neighbour_weights", weights)
        folder.save_array("neighbours_knn", knn)
        folder.save_array("neighbours", neighbours)
    diagnostics: dict[str, Any] = dict(run.progress.diagnostics)
    summary = ""
    if labels is not None:
        diagnostics["neighbour_purity"] = neighbour_purity(neighbours, labels)
        diagnostics["neighbour_purity_knn"] = neighbour_purity(knn, labels)
        diagnostics["knn_accuracy"] = knn_accuracy(knn, labels)
        summary = (
            f", purity {diagnostics['neighbour_purity']:.3f} "
            f"(plain kNN {diagnostics['neighbour_purity_knn']:.3f})"
        )
    run.say(
        f"stage 2 ({config.mining.method}): {neighbours.shape[1]} neighbours per image in "
        f"{time.perf_counter() - started:.1f} s{summary}"
    )
    return neighbours, weights, diagnostics


def _write_outputs(
    run: RunContext,
    clustering: ClusteringModel,
    embeddings: np.ndarray,
    neighbours: np.ndarray,
    diagnostics: dict[str, Any],
) -> RunResult:
    """Final assignments by the kept head on un-augmented images, metrics, CSV."""
    config, data, folder = run.config, run.items, run.folder
    plain = _embed(clustering, embeddings, run)
    losses = score_heads(
        clustering.heads,
        plain,
        torch.from_numpy(neighbours),
        config.clustering.entropy_weight,
        data.labels,
        sample=config.clustering.score_sample,
    )
    best = int(clustering.heads.best_head)
    n = len(data)
    labels, confidence = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.float32)

    def rows():
        for start, chunk in head_probability_chunks(clustering.heads, plain, best):
            chunk = chunk.numpy()
            labels[start : start + len(chunk)] = chunk.argmax(axis=1)
            confidence[start : start + len(chunk)] = chunk.max(axis=1)
            yield chunk

    kept = folder.save_array_rows("probabilities", (n, config.n_clusters), rows())
    metrics: dict[str, Any] = {
        "n_images": len(data),
        "n_clusters": config.n_clusters,
        "best_head": best,
        "head_selection": config.clustering.head_selection,
        "selected_heads": selected_heads(losses),
        "heads": losses,
    }
    if data.labels is not None:
        metrics.update(evaluate(data.labels, labels))
    metrics.update(diagnostics)
    timings = dict(run.progress.seconds)
    metrics["timings"] = _timings(timings, folder.history(), len(data))
    folder.save_json("metrics", metrics)
    _write_assignments(folder, data, labels, confidence)
    run.progress.finished = True
    folder.save_progress(run.progress)
    return RunResult(folder, config, labels, kept, metrics, timings)


def reuse_features(source: RunFolder, target: RunFolder, config: Config) -> None:
    """Copy a finished stage 1 (checkpoint, arrays, history) from ``source`` into ``target``."""
    if not source.checkpoint_path("features").exists() or not source.path("features").exists():
        raise ValueError(f"{source.root} has no finished stage 1 to reuse")
    saved = Config.load(source.path("config"))
    for section in ("data", "augment", "features"):
        if getattr(saved, section) != getattr(config, section):
            raise ValueError(
                f"cannot reuse the features of {source.root}: its {section} settings differ"
            )
    if saved.run.seed != config.run.seed:
        raise ValueError(f"cannot reuse the features of {source.root}: its seed differs")
    for key in ("features", "embeddings"):
        target.save_array(key, source.load_array(key))
    checkpoint = source.load_checkpoint("features")
    target.save_checkpoint("features", checkpoint)
    for row in source.history():
        if row["stage"] == "features":
            target.log_epoch(
                "features", row.pop("epoch"), {k: v for k, v in row.items() if k != "stage"}
            )


def _stage_clustering(
    run: RunContext, stage_one: StageOne, neighbours: np.ndarray, weights: np.ndarray | None
) -> ClusteringModel:
    """Stage 3: SCAN heads on frozen features or with the backbone, then self-labelling;
    ``weights`` (N x q or None) weight the neighbours in the SCAN loss.

    The heads start from a seed of their own: built from the random state earlier stages
    left, a run resumed after stage 2 started from other heads than an unbroken one.
    """
    config, folder, device = run.config, run.folder, run.fabric.device
    backbone, embeddings = stage_one.backbone, stage_one.embeddings
    c = stage3_schedule(config.clustering, len(neighbours), config.n_clusters)
    frozen = not c.update_backbone
    seed_everything(stage_seed(config.run.seed, "clustering-init", 0))
    heads = ClusterHeads(embeddings.shape[1], config.n_clusters, c.heads)
    model = ClusteringModel(nn.Identity() if frozen else backbone, heads).to(device)
    relabelled = folder.load_checkpoint("selflabel")
    if relabelled is not None:
        model.load_state_dict(relabelled["model"])
        return model
    saved = folder.load_checkpoint("clustering")
    if saved is not None:
        model.load_state_dict(saved["model"])
    else:
        started = time.perf_counter()
        nb = torch.from_numpy(neighbours)
        schedule = {
            "epochs": c.epochs,
            "seed": config.run.seed,
            "checkpoint": folder.resume_point("clustering"),
            "on_epoch_end": run.epoch_checkpoints("clustering", "clustering"),
            "progress": config.run.progress,
            "weights": None if weights is None else torch.from_numpy(weights),
        }
        if frozen:
            train_heads_on_embeddings(heads, stage_one.weak_embeddings(), nb, c, **schedule)
        else:
            fetch = image_fetch(run.data, run.views.weak, device)
            train_scan(model, fetch, nb, c, lr=c.lr, fabric=run.fabric, **schedule)
        plain = _embed(model, embeddings, run)
        scores = score_heads(heads, plain, nb, c.entropy_weight, sample=c.score_sample)
        best = select_head(heads, scores, c.head_selection)
        folder.save_checkpoint("clustering", {"model": model.state_dict()})
        run.say(
            f"stage 3 (SCAN, {'frozen' if frozen else 'fine-tuned'} backbone): "
            f"{c.epochs} epochs of batch {min(c.batch_size, len(nb))} in "
            f"{time.perf_counter() - started:.1f} s, kept head {best} of {c.heads}"
        )
    if not c.self_label:
        return model
    return _stage_self_label(run, model, backbone, embeddings)


def _stage_self_label(
    run: RunContext, model: ClusteringModel, backbone: nn.Module, embeddings: np.ndarray
) -> ClusteringModel:
    """SCAN's optional self-labelling of the kept head (METHOD.md, Stage 3 extension)."""
    config, data, device = run.config, run.data, run.fabric.device
    c = config.clustering
    best = int(model.heads.best_head)
    kept = model.heads.head(best)
    schedule = {
        "seed": config.run.seed,
        "checkpoint": run.folder.resume_point("selflabel"),
        "on_epoch_end": run.epoch_checkpoints("selflabel", "clustering"),
        "progress": config.run.progress,
    }
    started = time.perf_counter()
    if isinstance(model.features, nn.Identity):
        seed_everything(config.run.seed + 3)
        strong = torch.stack(
            [
                extract_features(backbone, data, config, run.fabric, view=run.views.strong).half()
                for _ in range(c.feature_views)
            ]
        )
        self_label_on_embeddings(kept, torch.from_numpy(embeddings)[None], strong, c, **schedule)
    else:
        train_self_label(
            nn.Sequential(model.features, kept),
            image_fetch(data, run.views.weak, device),
            image_fetch(data, run.views.strong, device),
            len(data),
            c,
            lr=c.self_label_lr,
            **schedule,
        )
    model.heads.set_head(best, kept)
    run.folder.save_checkpoint("selflabel", {"model": model.state_dict()})
    run.say(
        f"self-labelling: {c.self_label_epochs} epochs in {time.perf_counter() - started:.1f} s"
    )
    return model


def _embed(model: ClusteringModel, embeddings: np.ndarray, run: RunContext) -> np.ndarray:
    """Backbone features of the un-augmented images under the clustering model's backbone."""
    if isinstance(model.features, nn.Identity):
        return embeddings
    return extract_features(model.features, run.data, run.config, run.fabric).numpy()


def _save_images(folder: RunFolder, data: ImageSet) -> None:
    """Keep images given in memory with the run, so report, export and resume can read them."""
    images = data.as_tensor()
    if images is None:
        images = torch.stack([data[i][0] for i in range(len(data))])
    arrays = {"images": images.permute(0, 2, 3, 1).squeeze(-1).numpy()}
    if data.labels is not None:
        arrays["labels"] = data.labels
    if data.class_names is not None:
        arrays["class_names"] = np.array(data.class_names)
    atomic_write(folder.path("images"), lambda p: np.savez(p.open("wb"), **arrays))


def _save_embeddings(folder: RunFolder, embeddings: Embeddings) -> None:
    """Keep embeddings given in memory with the run, so a resume can read them."""
    arrays = {"embeddings": np.asarray(embeddings.vectors), "ids": np.array(list(embeddings.ids))}
    if embeddings.labels is not None:
        arrays["labels"] = embeddings.labels
    atomic_write(folder.path("input_embeddings"), lambda p: np.savez(p.open("wb"), **arrays))


def _timings(seconds: dict[str, float], history: list[dict[str, Any]], n: int) -> dict[str, Any]:
    out: dict[str, Any] = {f"{stage}_seconds": round(s, 3) for stage, s in seconds.items()}
    out["total_seconds"] = round(sum(seconds.values()), 3)
    for stage in ("features", "clustering"):
        rows = [r for r in history if r["stage"] == stage and "images_per_s" in r]
        if rows:
            out[f"{stage}_images_per_s"] = round(
                float(np.mean([r["images_per_s"] for r in rows])), 1
            )
    out["n_images"] = n
    return out


def _write_assignments(
    folder: RunFolder, data: ImageSet, clusters: np.ndarray, confidence: np.ndarray
) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    header = ["id", "cluster", "confidence"]
    if data.labels is not None:
        header.append("label")
    writer.writerow(header)
    for i, (cluster, conf) in enumerate(zip(clusters, confidence, strict=True)):
        row = [data.ids[i], int(cluster), f"{conf:.4f}"]
        if data.labels is not None:
            row.append(int(data.labels[i]))
        writer.writerow(row)
    text = buffer.getvalue()
    if folder.writer:
        atomic_write(folder.path("assignments"), lambda p: p.write_text(text))
