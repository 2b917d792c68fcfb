"""Static PNG figures of a run (matplotlib, Agg): for papers and for machines without a browser.

Each function draws one figure from a loaded ``RunData`` and returns its path, or None when
the run lacks what the figure needs (labels for the confusion matrix, history for the curves,
images for the neighbour grid). The HTML report shows the same figures.
"""

from __future__ import annotations

import colorsys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator, ScalarFormatter  # noqa: E402

from smcluster.metrics import matched_confusion  # noqa: E402
from smcluster.report.embedding import Embedding  # noqa: E402
from smcluster.report.rundata import RunData  # noqa: E402

DPI = 110
STAGE_TITLES = {
    "features": "Stage 1: feature model",
    "mining-head": "Stage 2: mining head (warm-up)",
    "clustering": "Stage 3: SCAN clustering",
    "selflabel": "Self-labelling",
}
WRONG = "#d62728"
RIGHT = "#2ca02c"


def cluster_colours(n: int) -> np.ndarray:
    """n distinct RGB colours in [0, 1]: tab10/tab20 for few clusters, spread hues for many."""
    if n <= 10:
        return np.asarray(plt.get_cmap("tab10").colors[:n])
    if n <= 20:
        return np.asarray(plt.get_cmap("tab20").colors[:n])
    golden = 0.618033988749895
    out = np.empty((n, 3))
    for i in range(n):
        hue = (i * golden) % 1.0
        sat = 0.55 + 0.35 * ((i * 7) % 3) / 2
        val = 0.65 + 0.3 * ((i * 5) % 4) / 3
        out[i] = colorsys.hsv_to_rgb(hue, sat, val)
    return out


def hex_colours(n: int) -> list[str]:
    return [
        "#{:02x}{:02x}{:02x}".format(*(np.round(c * 255).astype(int))) for c in cluster_colours(n)
    ]


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return path


def embedding_figure(data: RunData, emb: Embedding, path: Path) -> Path:
    """The 2-D map coloured by cluster, and by true class beside it when labels exist."""
    panels = 2 if data.labels is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 5.2), squeeze=False)
    clusters = data.clusters[emb.indices]
    size = float(np.clip(3000 / max(len(emb.indices), 1), 1.5, 12))
    colours = cluster_colours(data.n_clusters)
    ax = axes[0, 0]
    ax.scatter(emb.xy[:, 0], emb.xy[:, 1], c=colours[clusters], s=size, linewidths=0)
    ax.set_title(f"{emb.method} of stage-1 features, by cluster")
    if data.labels is not None:
        labels = data.labels[emb.indices]
        k = data.n_classes
        ax2 = axes[0, 1]
        ax2.scatter(emb.xy[:, 0], emb.xy[:, 1], c=cluster_colours(k)[labels], s=size, linewidths=0)
        ax2.set_title("by true class")
        if k <= 20:
            handles = [
                plt.Line2D(
                    [], [], ls="", marker="o", color=cluster_colours(k)[j], label=data.class_name(j)
                )
                for j in range(k)
            ]
            ax2.legend(
                handles=handles,
                fontsize=7,
                loc="center left",
                bbox_to_anchor=(1, 0.5),
                frameon=False,
            )
    for a in axes[0]:
        a.set_xticks([])
        a.set_yticks([])
        a.set_aspect("equal")
    n = len(data.ids)
    shown = f"{len(emb.indices):,} of {n:,} images" if len(emb.indices) < n else f"{n:,} images"
    fig.suptitle(shown, fontsize=9, y=0.02)
    return _save(fig, path)


def sizes_figure(data: RunData, path: Path) -> Path:
    """Cluster sizes: a bar per cluster (largest first) and the size histogram."""
    sizes = data.stats.sizes
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.2), gridspec_kw={"width_ratios": [3, 2]})
    order = np.argsort(-sizes, kind="stable")
    colours = cluster_colours(data.n_clusters)[order]
    if sizes.size <= 60:
        ax.bar(np.arange(sizes.size), sizes[order], width=0.8, color=colours, linewidth=0)
    else:  # one polygon instead of a thousand bars
        ax.fill_between(
            np.arange(sizes.size), sizes[order], step="mid", color="#4c72b0", linewidth=0
        )
        ax.set_xlim(-0.5, sizes.size - 0.5)
    ax.axhline(
        len(data.ids) / data.n_clusters, color="#444", lw=0.8, ls="--", label="N / C (balanced)"
    )
    ax.set_xlabel("clusters, largest first")
    ax.set_ylabel("images")
    ax.legend(frameon=False, fontsize=8)
    if sizes.size <= 30:
        ax.set_xticks(np.arange(sizes.size), [str(c) for c in order], fontsize=7)
    ax2.hist(sizes, bins=min(40, max(5, sizes.size // 5)), color="#4c72b0")
    ax2.set_xlabel("cluster size")
    ax2.set_ylabel("clusters")
    empty = int((sizes == 0).sum())
    ax2.set_title(f"{data.n_clusters} clusters, {empty} empty", fontsize=9)
    for a in (ax, ax2):
        a.spines[["top", "right"]].set_visible(False)
    return _save(fig, path)


def k_search_figure(data: RunData, path: Path) -> Path | None:
    """The criterion that chose the number of clusters against K (``k-search.json``), the
    chosen K marked, and the number of classes when labels exist; None without a search."""
    search = data.k_search
    if search is None:
        return None
    ks = np.asarray(search["candidates"])
    scores = np.asarray(search["scores"][search["criterion"]])
    chosen = int(search["chosen"])
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    ax.plot(ks, scores, marker="o", ms=3.5, color="#4c72b0", label=search["criterion"])
    ax.axvline(chosen, color=RIGHT, lw=1.2, label=f"chosen K = {chosen}")
    ax.plot([chosen], [scores[list(ks).index(chosen)]], marker="o", ms=8, color=RIGHT)
    if data.labels is not None:
        ax.axvline(data.n_classes, color="#444", lw=0.9, ls=":", label=f"{data.n_classes} classes")
    if ks.max() > 2 * ks.min():
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
    lo, hi = search.get("range", [int(ks.min()), int(ks.max())])
    ax.set_xlabel(f"number of clusters K (range {lo}:{hi})")
    ax.set_ylabel("score (higher is better)")
    ax.set_title(f"Choosing K: {len(ks)} values tried in {search['seconds']:.1f} s", fontsize=9.5)
    ax.legend(frameon=False, fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, path)


def confusion_figure(data: RunData, path: Path) -> Path | None:
    """Confusion matrix after Hungarian matching, rows normalised to the class sizes."""
    if data.labels is None:
        return None
    matrix = matched_confusion(data.labels, data.clusters).astype(np.float64)
    classes = np.unique(data.labels)
    class_sizes = np.bincount(np.searchsorted(classes, data.labels), minlength=classes.size)
    share = matrix / np.maximum(class_sizes, 1)[:, None]
    k = classes.size
    side = 5.5 if k <= 30 else 7.5
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    im = ax.imshow(
        share,
        cmap="viridis",
        vmin=0,
        vmax=1,
        interpolation="nearest" if k <= 200 else "antialiased",
        aspect="equal",
    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the class")
    names = [data.class_name(int(c)) for c in classes]
    if k <= 30:
        ax.set_xticks(np.arange(k), names, rotation=90, fontsize=7)
        ax.set_yticks(np.arange(k), names, fontsize=7)
    if k <= 15:
        for (i, j), v in np.ndenumerate(matrix):
            if v:
                ax.text(
                    j,
                    i,
                    f"{int(v)}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if share[i, j] < 0.6 else "black",
                )
    acc = np.trace(matrix) / len(data.labels)
    ax.set_xlabel("cluster (matched to class)")
    ax.set_ylabel("true class")
    ax.set_title(f"Matched confusion, ACC {acc:.3f}")
    return _save(fig, path)


def curves_figure(data: RunData, path: Path) -> Path | None:
    """Loss per epoch, one panel per stage, from history.jsonl; logged loss components (e.g.
    SCAN's consistency and entropy) get a panel of their own, as their scale differs."""
    stages = [s for s in dict.fromkeys(r.get("stage") for r in data.history) if s]
    if not stages:
        return None
    panels: list[tuple[str, list[dict[str, Any]], list[str]]] = []
    for stage in stages:
        rows = [r for r in data.history if r.get("stage") == stage]
        keys = curve_keys(rows)
        title = STAGE_TITLES.get(stage, stage)
        if "loss" in keys:
            panels.append((title, rows, ["loss"]))
        others = [k for k in keys if k != "loss"]
        if others:
            panels.append((f"{title}: components", rows, others))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(3.9 * len(panels), 3.1), squeeze=False)
    for ax, (title, rows, keys) in zip(axes[0], panels, strict=True):
        epochs = [r.get("epoch", i) for i, r in enumerate(rows)]
        for key in keys:
            ax.plot(
                epochs,
                [r.get(key, np.nan) for r in rows],
                marker="o" if len(rows) < 15 else None,
                ms=3,
                label=key,
            )
        ax.set_title(title, fontsize=9.5)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.spines[["top", "right"]].set_visible(False)
        if len(keys) > 1 or keys[0] != "loss":
            ax.legend(frameon=False, fontsize=7)
        else:
            ax.set_ylabel("loss")
    fig.tight_layout()
    return _save(fig, path)


def curve_keys(rows: list[dict[str, Any]]) -> list[str]:
    """Numeric history fields worth plotting: the loss first, then other loss-like fields."""
    skip = {"stage", "epoch", "lr", "seconds", "images_per_s", "step"}
    keys: list[str] = []
    for row in rows:
        for key, value in row.items():
            if (
                key not in skip
                and key not in keys
                and isinstance(value, (int, float))
                and ("loss" in key or "entropy" in key or "consistency" in key or "acc" in key)
            ):
                keys.append(key)
    return sorted(keys, key=lambda k: (k != "loss", k))


def neighbours_figure(data: RunData, anchors: np.ndarray, shown: int, path: Path) -> Path | None:
    """Anchors with their plain kNN and their used neighbours; wrong-class ones outlined red.

    The grid is composed as one image (a single ``imshow``), which keeps it fast for any
    number of anchors.
    """
    from smcluster.report.sprites import tiles

    if (
        data.images is None
        or data.neighbours is None
        or data.neighbours_knn is None
        or anchors.size == 0
    ):
        return None
    knn = np.asarray(data.neighbours_knn[anchors, :shown])
    used = np.asarray(data.neighbours[anchors, :shown])
    k, u = knn.shape[1], used.shape[1]
    order = np.concatenate([anchors[:, None], knn, used], axis=1)
    pics = tiles(data.images, order.reshape(-1))
    t = pics.shape[1]
    scale = max(1, 48 // t)
    side = t * scale
    border = max(2, side // 16)
    cell = side + 2 * border
    gap = cell // 2
    colours = {
        "anchor": (30, 35, 48),
        "right": (44, 160, 44),
        "wrong": (214, 39, 40),
        "plain": (255, 255, 255),
    }
    width = cell * (1 + k + u) + 2 * gap
    canvas = np.full((anchors.size * (cell + 4), width, 3), 255, dtype=np.uint8)
    for r, anchor in enumerate(anchors):
        for c, index in enumerate(order[r]):
            pic = pics[r * order.shape[1] + c]
            pic = np.repeat(np.repeat(pic, scale, axis=0), scale, axis=1)
            if pic.shape[-1] == 1:
                pic = np.repeat(pic, 3, axis=2)
            if c == 0:
                kind = "anchor"
            elif data.labels is None:
                kind = "plain"
            else:
                kind = "right" if data.labels[index] == data.labels[anchor] else "wrong"
            x = c * cell + (gap if c >= 1 else 0) + (gap if c >= 1 + k else 0)
            y = r * (cell + 4)
            canvas[y : y + cell, x : x + cell] = colours[kind]
            canvas[y + border : y + border + side, x + border : x + border + side] = pic
    fig_w = width / 60
    fig, ax = plt.subplots(figsize=(fig_w, canvas.shape[0] / 60 + 0.45))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_axis_off()
    top = -6
    ax.text(cell / 2, top, "anchor", ha="center", fontsize=8)
    ax.text(cell + gap + k * cell / 2, top, "plain kNN", ha="center", fontsize=8)
    ax.text(
        cell * (1 + k) + 2 * gap + u * cell / 2,
        top,
        f"used ({data.config.mining.method})",
        ha="center",
        fontsize=8,
    )
    return _save(fig, path)


def choose_anchors(data: RunData, count: int, seed: int = 0) -> np.ndarray:
    """A few anchors from different clusters, preferring ones whose neighbour sets differ."""
    if data.neighbours is None or data.neighbours_knn is None or count <= 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    n = len(data.ids)
    candidates = rng.permutation(n)[: min(n, 50 * count)]
    q = min(data.neighbours.shape[1], data.neighbours_knn.shape[1])
    used = np.sort(np.asarray(data.neighbours[candidates, :q]), axis=1)
    plain = np.sort(np.asarray(data.neighbours_knn[candidates, :q]), axis=1)
    differ = (used != plain).any(axis=1)
    ordered = np.concatenate([candidates[differ], candidates[~differ]])
    chosen: list[int] = []
    seen: set[int] = set()
    for index in ordered:
        cluster = int(data.clusters[index])
        if cluster not in seen:
            chosen.append(int(index))
            seen.add(cluster)
        if len(chosen) == count:
            break
    for index in ordered:  # fewer clusters than anchors: fill up with any
        if len(chosen) == count:
            break
        if int(index) not in chosen:
            chosen.append(int(index))
    return np.asarray(chosen, dtype=np.int64)
