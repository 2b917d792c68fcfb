"""Feature extraction speed of a pretrained backbone on the CPU: images/s by threads, fp32 vs bf16.

Times ``PretrainedBackbone`` forward passes (the model's own preprocessing included) of
torchvision's ResNet-50 at 224 px, randomly initialised (speed does not depend on the
weights, and nothing is downloaded), on batches of random uint8 images at the model's resize
size, for each thread count, in float32 and under ``torch.autocast("cpu", torch.bfloat16)``.
Also checks that bf16 keeps the answers: the cosine similarity of the bf16 and fp32 features
of the same images, and how often each image's nearest neighbour (cosine, within the batch)
is the same in both.

    python benchmarks/extraction_speed.py [--threads 1 2] [--batch 16] [--batches 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

from smcluster.models import build_pretrained

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def features(backbone: torch.nn.Module, images: torch.Tensor, dtype: torch.dtype | None):
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.float32, enabled=bool(dtype)):
        return backbone(images.float() / 255).float()


def images_per_second(backbone, images: torch.Tensor, dtype, batches: int) -> float:
    features(backbone, images, dtype)  # warm-up: allocations, oneDNN kernels
    started = time.perf_counter()
    for _ in range(batches):
        features(backbone, images, dtype)
    return batches * len(images) / (time.perf_counter() - started)


def nearest(x: torch.Tensor) -> torch.Tensor:
    x = F.normalize(x, dim=1)
    similarity = x @ x.T
    similarity.fill_diagonal_(-2.0)
    return similarity.argmax(dim=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="torchvision:resnet50")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--results", default=f"benchmarks/results/extraction-{date.today()}")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    backbone = build_pretrained(args.source).eval()
    size = backbone.preprocess.resize_size
    # Smooth random pictures (noise upsampled 8x), so that features differ between images.
    small = torch.randint(0, 256, (args.batch, 3, size // 8 + 1, size // 8 + 1)).float()
    images = F.interpolate(small, size=(size, size), mode="bilinear").round().to(torch.uint8)

    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name, dtype in PRECISIONS.items():
            speed = images_per_second(backbone, images, dtype, args.batches)
            rows.append({"threads": threads, "precision": name, "images_per_s": speed})
            print(f"{threads} threads {name}: {speed:.2f} images/s", flush=True)
    fp32, bf16 = (features(backbone, images, dtype) for dtype in PRECISIONS.values())
    agreement = {
        "cosine_min": float(F.cosine_similarity(fp32, bf16).min()),
        "nearest_neighbour_agreement": float((nearest(fp32) == nearest(bf16)).float().mean()),
    }
    print(agreement)
    command = "python benchmarks/extraction_speed.py " + " ".join(argv or sys.argv[1:])
    machine = (
        f"{os.cpu_count()} CPU cores, {platform.platform()}; torch {torch.__version__}; "
        f"load average {os.getloadavg()[0]:.1f} at the end"
    )
    record = {
        "command": command.strip(),
        "machine": machine,
        "date": str(date.today()),
        "source": args.source,
        "input_size": backbone.preprocess.input_size,
        "batch": args.batch,
        "batches": args.batches,
        "speeds": rows,
        "bf16_vs_fp32": agreement,
    }
    out = Path(args.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        f"# Feature extraction speed, {record['date']}",
        "",
        f"Command: `{record['command']}`",
        "",
        f"Machine: {machine}.",
        "",
        f"{args.source} (random weights) at {record['input_size']} px, batches of {args.batch} "
        "uint8 images, preprocessing included.",
        "",
        "| threads | precision | images/s |",
        "|---|---|---|",
        *(f"| {r['threads']} | {r['precision']} | {r['images_per_s']:.2f} |" for r in rows),
        "",
        f"bf16 vs fp32 features of the same {args.batch} images: lowest cosine similarity "
        f"{agreement['cosine_min']:.4f}, same nearest neighbour for "
        f"{agreement['nearest_neighbour_agreement']:.0%} of them.",
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
