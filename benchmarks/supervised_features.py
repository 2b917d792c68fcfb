"""Features that separate classes the network never saw: a stand-in for pretrained features.

Users run ``--clusters auto`` on pretrained features (``--backbone torchvision:...``), which
were trained with labels on other classes. No weights can be downloaded here, so this script
makes the same kind of features from the shared data: a classifier is trained with labels on
one part of a set's classes and its pooled backbone features are written for images of the
other classes (and of other sets), whose labels are only kept for scoring. ``choose_k.py
--embeddings FILE.npz`` then measures each criterion for the number of clusters on them.

Pairs (``PAIRS``), from the shared data (``$SMCLUSTER_SHARED_DATA`` or ``../shared/data``):

- ``omniglot``: trained on Omniglot background classes 482-963 (9,640 images at 28 px);
  written for classes 0-99, 0-199 and 0-481 (100, 200 and 482 characters of 20 images) and,
  strokes made bright as in MNIST, for MNIST's first 10,000 training images;
- ``tinyimagenet``: trained on Tiny-ImageNet-200 classes 100-199 (10,000 images at 32 px);
  written for classes 0-99 (100 classes of 100 images) and for the CIFAR-10 test set.

    python benchmarks/supervised_features.py --pairs omniglot tinyimagenet --threads 1

Writes ``runs/bench/supervised/seed<S>/<pair>/<target>.npz`` (``embeddings``, ``labels``:
the format of ``smcluster fit --embeddings``) and
``benchmarks/results/supervised-features-<tag>.json`` (training loss and accuracy per epoch,
each target's kNN purity at q = 10).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from smcluster.engine import seed_everything
from smcluster.models.backbones import build_backbone
from smcluster.stages.neighbours import knn_search

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import shared_data_dir  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
RUNS = REPO / "runs" / "bench" / "supervised"


@dataclass(frozen=True)
class Part:
    """Images of classes ``[first, stop)`` of a shared set, at ``size`` px, ``limit`` at most
    (the first ones), inverted when ``invert`` (Omniglot's dark strokes made bright)."""

    file: str
    first: int = 0
    stop: int | None = None
    size: int = 28
    limit: int | None = None
    invert: bool = False


@dataclass(frozen=True)
class Pair:
    train: Part
    targets: dict[str, Part]
    width: int
    epochs: int
    flip: bool


PAIRS: dict[str, Pair] = {
    "omniglot": Pair(
        Part("omniglot_background.npz", 482, invert=True),
        {
            "omniglot-unseen-100": Part("omniglot_background.npz", 0, 100, invert=True),
            "omniglot-unseen-200": Part("omniglot_background.npz", 0, 200, invert=True),
            "omniglot-unseen-482": Part("omniglot_background.npz", 0, 482, invert=True),
            "mnist-10k": Part("mnist.npz", limit=10_000),
        },
        width=32,
        epochs=30,
        flip=False,
    ),
    "tinyimagenet": Pair(
        Part("tinyimagenet_train_32.npz", 100, size=32),
        {
            "tinyimagenet-unseen-100": Part("tinyimagenet_train_32.npz", 0, 100, size=32),
            "cifar10-test": Part("cifar10_test.npz", size=32),
        },
        width=32,
        epochs=30,
        flip=True,
    ),
}


@functools.cache
def read_set(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A shared set's images and labels, read once per process (every part of a pair reads
    the same file)."""
    with np.load(path, allow_pickle=False) as data:
        return data["images"], data["labels"]


def load_part(part: Part, shared: Path) -> tuple[torch.Tensor, np.ndarray]:
    """Images as float N x C x size x size in [0, 1] and labels renumbered from 0."""
    images, labels = read_set(shared / part.file)
    keep = (labels >= part.first) & (labels < (part.stop if part.stop is not None else 1 << 30))
    images, labels = images[keep][: part.limit], labels[keep][: part.limit]
    x = torch.from_numpy(images).float().div_(255.0)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    if part.invert:
        x = 1.0 - x
    if x.shape[-1] != part.size:
        x = F.interpolate(x, size=(part.size, part.size), mode="area")
    return x.contiguous(), np.unique(labels, return_inverse=True)[1].astype(np.int64)


def jitter(x: torch.Tensor, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Per-image random affine (rotation 10 degrees, scale 0.9-1.1, shift 8 %) and flips."""
    n = len(x)

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=generator)

    angle = uniform(-math.pi / 18, math.pi / 18)
    scale = uniform(0.9, 1.1)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    sign = torch.ones(n)
    if flip:
        sign = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.stack(
        [
            torch.stack([cos * sign, -sin, uniform(-0.16, 0.16)], 1),
            torch.stack([sin * sign, cos, uniform(-0.16, 0.16)], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def train_classifier(
    x: torch.Tensor, y: np.ndarray, pair: Pair, seed: int, log: Callable[[str], None]
) -> tuple[nn.Module, list[dict[str, float]]]:
    """The pair's backbone with a linear classifier, trained by cross-entropy (SGD, cosine)."""
    seed_everything(seed)
    backbone = build_backbone("small_cnn", x.shape[1], width=pair.width)
    backbone.normalize.fit(x)
    classes = int(y.max()) + 1
    model = nn.Sequential(backbone, nn.Linear(backbone.out_dim, classes))
    target = torch.from_numpy(y)
    steps_per_epoch = math.ceil(len(x) / 128)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, pair.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(pair.epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        total, correct, started = 0.0, 0, time.perf_counter()
        for step in range(steps_per_epoch):
            idx = order[step * 128 : (step + 1) * 128]
            logits = model(jitter(x[idx], pair.flip, generator))
            loss = F.cross_entropy(logits, target[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == target[idx]).sum())
        row = {
            "epoch": epoch + 1,
            "loss": total / len(x),
            "train_accuracy": correct / len(x),
            "seconds": time.perf_counter() - started,
        }
        history.append(row)
        log(
            f"epoch {epoch + 1}/{pair.epochs} loss {row['loss']:.3f} "
            f"accuracy {row['train_accuracy']:.3f} ({row['seconds']:.0f} s)"
        )
    return backbone, history


@torch.no_grad()
def embed(backbone: nn.Module, x: torch.Tensor) -> np.ndarray:
    backbone.eval()
    return torch.cat([backbone(x[i : i + 512]) for i in range(0, len(x), 512)]).numpy()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--epochs", type=int, default=None, help="override the pairs' epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shared-data", default=None)
    parser.add_argument("--out", type=Path, default=RUNS)
    parser.add_argument("--tag", default=dt.date.today().isoformat())
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    shared = shared_data_dir(args.shared_data)
    report: dict[str, object] = {
        "command": "python benchmarks/supervised_features.py " + shlex.join(sys.argv[1:]),
        "date": dt.date.today().isoformat(),
        "machine": f"{os.cpu_count()} CPU cores, {platform.platform()}",
        "threads": args.threads,
        "torch": torch.__version__,
        "seed": args.seed,
        "pairs": {},
    }
    for name in args.pairs:
        pair = PAIRS[name]
        if args.epochs is not None:
            pair = dataclasses.replace(pair, epochs=args.epochs)
        x, y = load_part(pair.train, shared)
        print(f"{name}: training on {len(x)} images of {y.max() + 1} classes", flush=True)
        backbone, history = train_classifier(x, y, pair, args.seed, print)
        folder = args.out / f"seed{args.seed}" / name
        folder.mkdir(parents=True, exist_ok=True)
        targets = {}
        for target, part in pair.targets.items():
            tx, ty = load_part(part, shared)
            vectors = embed(backbone, tx)
            neighbours = knn_search(vectors, 10)[0]
            purity = float((ty[neighbours] == ty[:, None]).mean())
            partial = folder / f"{target}.partial.npz"
            np.savez(partial, embeddings=vectors, labels=ty)
            partial.replace(folder / f"{target}.npz")
            targets[target] = {"images": len(ty), "classes": int(ty.max()) + 1, "purity": purity}
            print(f"{name} -> {target}: {len(ty)} images, kNN purity {purity:.3f}", flush=True)
        report["pairs"][name] = {  # type: ignore[index]
            "train": vars(pair.train),
            "train_images": len(x),
            "width": pair.width,
            "epochs": pair.epochs,
            "history": history,
            "targets": targets,
        }
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"supervised-features-{args.tag}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
