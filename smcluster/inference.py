"""Inference on a finished run: load its model, predict new images, re-evaluate its outputs.

Reads what ``pipeline`` wrote (through ``RunFolder``); never trains.
"""

from __future__ import annotations

import csv
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from smcluster.config import Config
from smcluster.data import ImageSet, load_dataset
from smcluster.data.npz import npz_image_shape
from smcluster.data.pixels import probe_shape
from smcluster.engine import map_batches
from smcluster.metrics import evaluate
from smcluster.models import ClusterHeads
from smcluster.runfolder import FILES, RunFolder, atomic_write, check_can_create
from smcluster.stages.features import stage1_backbone
from smcluster.stages.neighbours import neighbour_purity


@dataclass
class FittedModel:
    """What ``predict`` needs from a finished run: the backbone, the heads and the input shape."""

    config: Config
    backbone: nn.Module
    heads: ClusterHeads
    channels: int
    image_size: int

    @torch.no_grad()
    def predict_proba(self, data: ImageSet, batch_size: int = 256) -> np.ndarray:
        """Soft assignments (N x C) of the kept head on the un-augmented images."""
        self.backbone.eval()
        self.heads.eval()
        device = next(self.heads.parameters()).device

        def network(images: torch.Tensor) -> torch.Tensor:
            x = images.float() / 255.0
            return torch.softmax(self.heads.predict_logits(self.backbone(x)), dim=1)

        return map_batches(network, data, batch_size=batch_size, device=device).numpy()


def load_fitted(run: str | Path, device: str | torch.device = "cpu") -> FittedModel:
    """Load a finished run's model (safely, ``weights_only``) for prediction.

    The clustering model is the self-labelled one when the run self-labels, so a run
    stopped between SCAN and self-labelling counts as unfinished; a damaged checkpoint
    raises ``RunFolderError`` naming it.
    """
    folder = RunFolder(run)
    if not folder.exists():
        raise FileNotFoundError(f"{folder.root} is not a run folder (no {FILES['config']})")
    config = folder.read(folder.path("config"), Config.load)
    if config.data.embeddings is not None:
        raise ValueError(
            f"{folder.root} clustered precomputed embeddings, so it has no image model to "
            "predict with: embed the new images with the same model and assign them to the "
            "nearest cluster, or cluster them together with the others"
        )
    features = folder.load_checkpoint("features")
    final = "selflabel" if config.clustering.self_label else "clustering"
    clustering = folder.load_checkpoint(final)
    if features is None or clustering is None:
        raise ValueError(f"{folder.root} has not finished: run `smcluster fit --resume` first")
    channels, image_size = int(features["channels"]), int(features["image_size"])
    backbone = stage1_backbone(config, features)
    heads = ClusterHeads(backbone.out_dim, config.n_clusters, config.clustering.heads)
    state = clustering["model"]
    heads.load_state_dict(
        {k[len("heads.") :]: v for k, v in state.items() if k.startswith("heads.")}
    )
    tuned = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
    if tuned:
        backbone.load_state_dict(tuned)
    return FittedModel(config, backbone.to(device), heads.to(device), channels, image_size)


def evaluate_run(run: str | Path) -> dict[str, Any]:
    """Recompute a finished run's metrics from its outputs and the labels it recorded."""
    folder = RunFolder(run)
    if not folder.exists():
        raise FileNotFoundError(f"{folder.root} is not a run folder (no {FILES['config']})")
    probabilities = folder.load_array("probabilities")
    if probabilities is None:
        raise ValueError(f"{folder.root} has not finished: run `smcluster fit --resume` first")
    with folder.path("assignments").open() as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "label" not in rows[0]:
        raise ValueError(f"the images of {folder.root} had no labels: nothing to evaluate")
    labels = np.array([int(r["label"]) for r in rows])
    metrics = folder.load_json("metrics") if folder.path("metrics").exists() else {}
    metrics.update(evaluate(labels, probabilities.argmax(axis=1)))
    for key in ("neighbours", "neighbours_knn"):
        array = folder.load_array(key)
        if array is not None:
            name = "neighbour_purity" if key == "neighbours" else "neighbour_purity_knn"
            metrics[name] = neighbour_purity(array, labels)
    folder.save_json("metrics", metrics)
    return metrics


class InputShapeWarning(UserWarning):
    """Images given to ``predict`` were resized or converted to the run's input."""


def warn_if_converted(shapes: set[tuple[int, int, int]], image_size: int, channels: int) -> None:
    """Warn when images of other ``(width, height, channels)`` shapes than the run's input
    are about to be converted to it (its networks take no other)."""
    run_shape = (image_size, image_size, channels)
    others = sorted(s for s in shapes if s != run_shape)
    if not others:
        return
    verb = "resized" if any(s[:2] != run_shape[:2] for s in others) else "converted"
    seen = ", ".join(_shape_text(s) for s in others[:3])
    more = f" and {len(others) - 3} other shapes" if len(others) > 3 else ""
    warnings.warn(
        f"{verb} {seen}{more} images to the run's {_shape_text(run_shape)}, the only input "
        "its networks take; to cluster them at their own size, fit a run on them",
        InputShapeWarning,
        stacklevel=3,
    )


def _shape_text(shape: tuple[int, int, int]) -> str:
    width, height, channels = shape
    return f"{width} x {height} {'grey' if channels == 1 else 'RGB'}"


def _file_shapes(files: list[Path]) -> set[tuple[int, int, int]]:
    shapes = set()
    for path in files:
        try:
            shapes.add(probe_shape(path))
        except Exception:  # unreadable: images_from_paths skips and reports it
            continue
    return shapes


def predict_paths(run: str | Path, paths: list[Path], *, output: Path) -> int:
    """Assign new images (files, folders, or .npz files) and write ``output`` as CSV.

    Images of another size or channel count than the run's are converted to its input, with
    an ``InputShapeWarning`` naming both shapes.
    """
    from smcluster.data import images_from_paths

    output = Path(output)
    if output.is_dir():
        raise ValueError(f"{output} is a folder: name a CSV file to write, e.g. {output}.csv")
    check_can_create(output.parent)
    model = load_fitted(run)
    files: list[Path] = []
    sets: list[ImageSet] = []
    shapes: set[tuple[int, int, int]] = set()
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        if path.suffix == ".npz":
            shapes.update(s for s in [npz_image_shape(path)] if s is not None)
            sets.append(
                load_dataset(str(path), image_size=model.image_size, channels=model.channels)
            )
        elif path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        else:
            files.append(path)
    if files:
        shapes.update(_file_shapes(files))
        sets.append(images_from_paths(files, image_size=model.image_size, channels=model.channels))
    warn_if_converted(shapes, model.image_size, model.channels)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "cluster", "confidence"])
    count = 0
    for data in sets:
        probs = model.predict_proba(data)
        for i, row in enumerate(probs):
            writer.writerow([data.ids[i], int(row.argmax()), f"{row.max():.4f}"])
        count += len(probs)
    text = buffer.getvalue()
    atomic_write(output, lambda p: p.write_text(text))
    return count
