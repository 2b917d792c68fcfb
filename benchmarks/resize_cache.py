"""Stage-1 epoch time with images far above the working size: resized at every epoch or once.

Omniglot background (19,280 images of 105 x 105 px) with the ``cpu-omniglot`` preset (28 px
working size, batch 256). Three ways of feeding stage 1, each timed over a few real steps
(``train_features``'s ``on_step``; one untimed warm-up step) and scaled to one epoch:

- ``folder-lazy``: the images as PNG files in a folder read lazily (``FileImageSet``): every
  image is decoded and resized at every epoch (before this change, for large folders);
- ``folder-cached``: the same folder decoded and resized once into the run's image cache
  (``data.cache``; its one-off cost is reported as well);
- ``native-105``: the ``.npz`` with no working size: the networks see 105 px images (what a
  run without ``--image-size`` does). An ``.npz`` with a working size is resized once at
  load, as it was before; that cost is reported too.

    python benchmarks/resize_cache.py --data PATH/omniglot_background.npz [--steps 6]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from smcluster.config import Config, preset
from smcluster.data import load_dataset
from smcluster.data.cache import open_image_cache, write_image_cache
from smcluster.engine import batch_indices, iterate_images, make_fabric
from smcluster.stages.features import train_features, training_batch


def step_seconds(data, config: Config, steps: int) -> float:
    marks: list[float] = []

    def on_step() -> bool:
        marks.append(time.perf_counter())
        return len(marks) > steps

    train_features(data, config, make_fabric(config.run), on_step=on_step)
    return (marks[-1] - marks[0]) / (len(marks) - 1)


def data_pass_seconds(data, batch: int) -> float:
    """One pass over every image as stage 1 reads them (what an epoch pays for its data)."""
    started = time.perf_counter()
    for _ in iterate_images(data, batch_indices(len(data), batch, shuffle=True, drop_last=True)):
        pass
    return time.perf_counter() - started


def write_folder(npz: Path, folder: Path) -> float:
    started = time.perf_counter()
    with np.load(npz) as archive:
        images, labels = archive["images"], archive["labels"]
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        target = folder / f"{label:04d}"
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(target / f"{i:05d}.png")
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--results", default=f"benchmarks/results/resize-cache-{date.today()}")
    args = parser.parse_args(argv)
    base = Config().updated(preset("cpu-omniglot")).updated({"run": {"progress": False}})
    rows, notes = [], {}
    npz_loaded = time.perf_counter()
    resized = load_dataset(str(args.data), image_size=28, channels=1)
    notes["npz_load_seconds"] = round(time.perf_counter() - npz_loaded, 2)
    notes["npz_resize"] = resized.resize_cost.record()
    n = len(resized)
    steps_per_epoch = n // training_batch(base, n)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "omniglot"
        notes["png_write_seconds"] = round(write_folder(args.data, folder), 1)
        lazy = load_dataset(str(folder), image_size=28, channels=1, lazy=True)
        cost = write_image_cache(lazy, Path(tmp) / "images-cache.npy")
        notes["folder_cache"] = cost.record()
        cached = open_image_cache(lazy, Path(tmp) / "images-cache.npy")
        native = load_dataset(str(args.data), channels=1)
        ways = {
            "folder-lazy": (lazy, base),
            "folder-cached": (cached, base),
            "native-105": (native, base.updated({"data": {"image_size": None}})),
        }
        for name, (data, config) in ways.items():
            seconds = step_seconds(data, config, args.steps)
            rows.append(
                {
                    "way": name,
                    "image_size": data.image_size,
                    "data_pass_seconds": round(data_pass_seconds(data, 256), 2),
                    "step_seconds": round(seconds, 3),
                    "epoch_seconds": round(seconds * steps_per_epoch, 1),
                }
            )
            print(rows[-1], flush=True)
    result = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": f"{os.cpu_count()} CPU cores, {platform.platform()}, torch {torch.__version__}",
        "threads": torch.get_num_threads(),
        "load_average": round(os.getloadavg()[0], 1),
        "images": n,
        "steps_per_epoch": steps_per_epoch,
        "rows": rows,
        **notes,
    }
    Path(f"{args.results}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Stage-1 epoch time, images resized at every epoch or once ({date.today()})",
        "",
        f"Command: `python benchmarks/resize_cache.py --data omniglot_background.npz "
        f"--steps {args.steps}`",
        "",
        f"Machine: {result['machine']}; {result['threads']} threads; load average "
        f"{result['load_average']} at the end.",
        "",
        f"Omniglot background, {n} images of 105 x 105 px, preset cpu-omniglot (28 px, batch "
        f"256, {steps_per_epoch} steps per epoch); {args.steps} timed steps each.",
        "",
        "| way | px | reading every image once (s) | s/step | s/epoch |",
        "|---|---|---|---|---|",
        *(
            f"| {r['way']} | {r['image_size']} | {r['data_pass_seconds']} | "
            f"{r['step_seconds']} | {r['epoch_seconds']} |"
            for r in rows
        ),
        "",
        f"One-off costs: the folder's cache {cost.seconds:.1f} s ({cost.bytes_before / 2**20:.1f}"
        f" MB of PNG files -> {cost.bytes_after / 2**20:.1f} MB); the .npz resized at load in "
        f"{resized.resize_cost.seconds:.1f} s ({resized.resize_cost.bytes_before / 2**20:.1f} MB"
        f" -> {resized.resize_cost.bytes_after / 2**20:.1f} MB).",
    ]
    Path(f"{args.results}.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
