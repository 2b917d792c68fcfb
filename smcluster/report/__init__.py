"""See the clusters: a static HTML report and PNG figures of a finished run.

    >>> from smcluster.report import write_report
    >>> write_report("runs/demo")          # runs/demo/report/index.html
    >>> write_figures("runs/demo")         # runs/demo/report/figures/*.png

The page opens from the file system (no server, no network): inline CSS and JS, the data as
inline JSON, images as one PNG sprite sheet per cluster in ``report/img/``. It shows the
summary (data, settings, timings, metrics, cluster sizes), a gallery per cluster (most
confident members first and the least confident last), the 2-D map of the stage-1 features
(the paper's Fig. 2), plain-kNN versus used neighbours for a few anchors (Fig. 3), the matched
confusion matrix and the training curves. The report reads the run folder only
(CONTRIBUTING.md, "Run folder"); training never imports it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from smcluster.report.embedding import Embedding, embed
from smcluster.report.figures import (
    STAGE_TITLES,
    choose_anchors,
    confusion_figure,
    curves_figure,
    embedding_figure,
    hex_colours,
    k_search_figure,
    neighbours_figure,
    sizes_figure,
)
from smcluster.report.page import esc, fmt, render, seconds, table
from smcluster.report.rundata import RunData, load_run
from smcluster.report.sprites import Sheet, write_sheets

__all__ = ["write_figures", "write_report"]

FIGURES = {
    "embedding": "embedding.png",
    "sizes": "cluster-sizes.png",
    "confusion": "confusion.png",
    "curves": "curves.png",
    "neighbours": "neighbours.png",
    "k_search": "k-search.png",
}
SHEET_COLUMNS = 10


def write_report(
    run: str | Path,
    *,
    embedding: bool = True,
    max_members: int = 100,
    least: int = 3,
    preview: int = 12,
    anchors: int = 6,
    shown_neighbours: int = 8,
    embedding_sample: int = 5000,
    figures: bool = True,
    seed: int = 0,
    threads: int | None = None,
) -> Path:
    """Write ``RUN/report/index.html`` (and its ``img/`` and ``figures/``); return its path.

    ``embedding``: draw the 2-D map of the stage-1 features (PaCMAP, else PCA) on at most
    ``embedding_sample`` images. ``max_members``: images kept per cluster for its gallery, the
    most confident first and the ``least`` least confident last; a card previews ``preview``
    of them. ``anchors`` images get neighbour grids of ``shown_neighbours`` neighbours each.
    ``figures``: also write the static PNG figures (``write_figures``). ``threads``: PNG
    encoders (default: the CPU count, at most 4).
    """
    if max_members < 1 or least < 0 or preview < 1:
        raise ValueError("max_members and preview must be >= 1 and least >= 0")
    least = min(least, max_members - 1)
    threads = threads or min(4, os.cpu_count() or 1)
    data = load_run(run)
    out = data.report_dir
    out.mkdir(parents=True, exist_ok=True)
    img = out / "img"
    if img.exists():
        shutil.rmtree(img)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    emb = _embedding(data, embedding_sample, seed) if embedding else None
    timings["embedding"] = time.perf_counter() - started
    chosen = choose_anchors(data, anchors, seed) if data.images is not None else np.zeros(0, int)
    if figures:
        t = time.perf_counter()
        _figures(data, emb, chosen, shown_neighbours)
        timings["figures"] = time.perf_counter() - t

    t = time.perf_counter()
    shown = [_shown(m, max_members, least) for m in data.members]
    sheets = (
        write_sheets(data.images, shown, img, prefix="c", cols=SHEET_COLUMNS, threads=threads)
        if data.images is not None
        else None
    )
    neighbour_part, neighbour_data = _neighbours(data, chosen, shown_neighbours, img)
    timings["sprites"] = time.perf_counter() - t

    payload = _payload(data, shown, sheets, emb, neighbour_data, max_members, least, preview)
    parts = _parts(data, emb, neighbour_part, figures)
    spent = ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
    parts["REPORTTIME"] = esc(f"in {time.perf_counter() - started:.1f} s ({spent})")
    html = render(parts, payload)
    path = out / "index.html"
    tmp = out / ".index.html.tmp"
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_figures(
    run: str | Path,
    *,
    embedding: bool = True,
    anchors: int = 6,
    shown_neighbours: int = 8,
    embedding_sample: int = 5000,
    seed: int = 0,
) -> list[Path]:
    """Write the static PNG figures into ``RUN/report/figures/``; return their paths.

    Figures a run cannot have are skipped: the confusion matrix without labels, the curves
    without ``history.jsonl``, the neighbour grid without loadable images, the embedding
    without ``features.npy`` (or with ``embedding=False``).
    """
    data = load_run(run)
    emb = _embedding(data, embedding_sample, seed) if embedding else None
    chosen = choose_anchors(data, anchors, seed) if data.images is not None else np.zeros(0, int)
    return _figures(data, emb, chosen, shown_neighbours)


def _figures(data: RunData, emb: Embedding | None, anchors: np.ndarray, shown: int) -> list[Path]:
    folder = data.report_dir / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    for name in FIGURES.values():
        (folder / name).unlink(missing_ok=True)
    made = [sizes_figure(data, folder / FIGURES["sizes"])]
    if emb is not None:
        made.append(embedding_figure(data, emb, folder / FIGURES["embedding"]))
    made.append(confusion_figure(data, folder / FIGURES["confusion"]))
    made.append(curves_figure(data, folder / FIGURES["curves"]))
    made.append(neighbours_figure(data, anchors, shown, folder / FIGURES["neighbours"]))
    made.append(k_search_figure(data, folder / FIGURES["k_search"]))
    return [p for p in made if p is not None]


def _embedding(data: RunData, sample: int, seed: int) -> Embedding | None:
    if data.features is None:
        return None
    stat = (data.root / "features.npy").stat()
    return embed(
        data.features,
        sample=sample,
        seed=seed,
        cache=data.report_dir / "embedding.npz",
        stamp=f"{stat.st_size}-{stat.st_mtime_ns}",
    )


def _shown(members: np.ndarray, max_members: int, least: int) -> np.ndarray:
    """The members a gallery keeps: all, or the most confident and the ``least`` least."""
    if members.size <= max_members:
        return members
    return np.concatenate([members[: max_members - least], members[members.size - least :]])


# ---- the data the page's script draws from ------------------------------------------------


def _payload(
    data: RunData,
    shown: list[np.ndarray],
    sheets: list[Sheet] | None,
    emb: Embedding | None,
    neighbours: dict[str, Any] | None,
    max_members: int,
    least: int,
    preview: int,
) -> dict[str, Any]:
    stats = data.stats
    labelled = data.labels is not None
    n_classes = data.n_classes
    classes = [data.class_name(j) for j in range(n_classes)]
    everything = np.concatenate(shown) if shown else np.zeros(0, dtype=np.int64)
    offsets = np.cumsum([0] + [s.size for s in shown])
    top = _top_classes(data, classes) if labelled else None
    clusters = []
    for c in range(data.n_clusters):
        sheet = sheets[c] if sheets is not None and sheets[c].count else None
        clusters.append(
            {
                "c": c,
                "n": int(stats.sizes[c]),
                "conf": round(float(stats.mean_confidence[c]), 4) if stats.sizes[c] else None,
                "maj": classes[int(stats.majority[c])] if labelled and stats.sizes[c] else None,
                "majId": int(stats.majority[c]) if labelled and stats.sizes[c] else None,
                "pur": round(float(stats.purity[c]), 4) if labelled and stats.sizes[c] else None,
                "top": top[c] if top is not None else None,
                "o": int(offsets[c]),
                "low": int(min(least, shown[c].size)) if shown[c].size < stats.sizes[c] else 0,
                "sheet": None
                if sheet is None
                else {
                    "file": sheet.file,
                    "cols": sheet.cols,
                    "rows": sheet.rows,
                    "count": sheet.count,
                },
            }
        )
    payload: dict[str, Any] = {
        "clusters": clusters,
        "colours": hex_colours(data.n_clusters),
        "classes": classes,
        "classColours": hex_colours(n_classes) if labelled else [],
        "shown": {
            "id": [data.ids[i] for i in everything],
            "conf": np.round(data.confidence[everything], 3).tolist(),
            "label": data.labels[everything].tolist() if labelled else None,
        },
        "hasImages": data.images is not None,
        "maxMembers": max_members,
        "preview": preview,
        "least": least,
        "neighbours": neighbours,
        "embedding": None,
    }
    if emb is not None:
        payload["embedding"] = {
            "x": np.round(emb.xy[:, 0], 4).tolist(),
            "y": np.round(emb.xy[:, 1], 4).tolist(),
            "c": data.clusters[emb.indices].tolist(),
            "l": data.labels[emb.indices].tolist() if labelled else None,
            "id": emb.indices.tolist(),
        }
    return payload


def _top_classes(data: RunData, classes: list[str], count: int = 5) -> list[list[list[Any]]]:
    k = len(classes)
    c = data.n_clusters
    assert data.labels is not None
    table_ = np.bincount(data.clusters * k + data.labels, minlength=c * k).reshape(c, k)
    order = np.argsort(-table_, axis=1, kind="stable")[:, :count]
    return [[[classes[j], int(table_[r, j])] for j in order[r] if table_[r, j]] for r in range(c)]


def _neighbours(
    data: RunData, anchors: np.ndarray, shown: int, img: Path
) -> tuple[str, dict[str, Any] | None]:
    """The neighbour-grid section and its data (tiles in one sheet), or a note why not."""
    title = '<section id="neighbours"><h2>Neighbours: plain kNN vs used</h2>'
    if data.neighbours is None or data.neighbours_knn is None:
        return title + '<p class="note">This run has no neighbour files.</p></section>', None
    if data.images is None or anchors.size == 0:
        return (
            title + '<p class="note">No images available for neighbour grids.</p></section>',
            None,
        )
    knn = np.asarray(data.neighbours_knn[anchors, :shown])
    used = np.asarray(data.neighbours[anchors, :shown])
    order: list[int] = []
    for r, a in enumerate(anchors):
        order += [int(a), *knn[r].tolist(), *used[r].tolist()]
    sheet = write_sheets(
        data.images, [np.asarray(order)], img, prefix="neighbours", cols=SHEET_COLUMNS * 2
    )[0]
    labelled = data.labels is not None
    method = data.config.mining.method
    rows = []
    pos = 0

    def item(index: int, anchor: int) -> list[Any]:
        nonlocal pos
        bad = bool(labelled and data.labels[index] != data.labels[anchor])
        title_ = f"image {data.ids[index]} · cluster {int(data.clusters[index])}"
        if labelled:
            title_ += f" · class {data.class_name(int(data.labels[index]))}"
        pos += 1
        return [pos - 1, title_, bad]

    for r, a in enumerate(anchors):
        a = int(a)
        anchor = item(a, a)
        k = [item(int(i), a) for i in knn[r]]
        u = [item(int(i), a) for i in used[r]]
        if labelled:
            kp = 1 - sum(x[2] for x in k) / max(len(k), 1)
            up = 1 - sum(x[2] for x in u) / max(len(u), 1)
            knn_label, used_label = (
                f"plain kNN · purity {kp:.2f}",
                f"used ({method}) · purity {up:.2f}",
            )
        else:
            knn_label, used_label = "plain kNN", f"used ({method})"
        rows.append(
            {"anchor": anchor, "knn": k, "used": u, "knnLabel": knn_label, "usedLabel": used_label}
        )
    m = data.metrics
    facts = []
    if "neighbour_purity_knn" in m and "neighbour_purity" in m:
        facts.append(
            f"Over all images, neighbour purity is {m['neighbour_purity']:.3f} for the "
            f"neighbours used ({esc(method)}) and {m['neighbour_purity_knn']:.3f} "
            "for plain kNN."
        )
    same = method == "knn" or np.array_equal(
        np.asarray(data.neighbours), np.asarray(data.neighbours_knn)
    )
    if same:
        facts.append("This run trained on plain kNN neighbours, so both rows agree.")
    legend = (
        '<p class="legend-inline">The first ' + str(knn.shape[1]) + " neighbours of each "
        "anchor, nearest first"
        + (", <i></i> neighbours of another class than the anchor's." if labelled else ".")
        + "</p>"
    )
    html = (
        title + "<p>Each anchor with its plain kNN neighbours (instance view) and the "
        "neighbours stage 3 trained on (METHOD.md, Stage 2; the paper's Fig. 3). "
        + " ".join(facts)
        + "</p>"
        + legend
        + '<div id="nbrows"></div></section>'
    )
    payload = {
        "sheet": {"file": sheet.file, "cols": sheet.cols, "rows": sheet.rows, "count": sheet.count},
        "rows": rows,
    }
    return html, payload


# ---- server-rendered parts ------------------------------------------------------------------


METRIC_NAMES = [
    ("acc", "ACC"),
    ("nmi", "NMI"),
    ("ari", "ARI"),
    ("weighted_precision", "weighted precision"),
    ("weighted_recall", "weighted recall"),
    ("weighted_f", "weighted F"),
    ("acc_many_to_one", "ACC many-to-one (purity)"),
    ("nmi_many_to_one", "NMI many-to-one"),
    ("neighbour_purity", "neighbour purity (used)"),
    ("neighbour_purity_knn", "neighbour purity (plain kNN)"),
    ("neighbour_purity_instance", "neighbour purity (instance view, 4q)"),
    ("neighbour_purity_strong", "neighbour purity (strong view, 2q)"),
    ("knn_accuracy", "kNN accuracy (stage-1 features)"),
]


def _parts(data: RunData, emb: Embedding | None, neighbours: str, figures: bool) -> dict[str, str]:
    m = data.metrics
    stats = data.stats
    total = (m.get("timings") or {}).get("total_seconds")
    keys = [("images", f"{len(data.ids):,}"), ("clusters", f"{data.n_clusters:,}")]
    for key, label in (("acc", "ACC"), ("nmi", "NMI"), ("ari", "ARI")):
        if isinstance(m.get(key), (int, float)):
            keys.append((label, f"{m[key]:.3f}"))
    keys.append(("mean conf", f"{float(data.confidence.mean()):.3f}"))
    if total is not None:
        keys.append(("time", seconds(float(total))))
    key_html = "".join(f'<div class="key"><b>{v}</b><span>{esc(k)}</span></div>' for k, v in keys)
    nav = [
        ("summary", "Summary"),
        ("clusters", "Clusters"),
        ("embedding", "Embedding"),
        ("neighbours", "Neighbours"),
        ("confusion", "Confusion"),
        ("training", "Training"),
    ]
    nav_html = "".join(f'<a href="#{a}">{t}</a>' for a, t in nav)

    notes = list(data.notes)
    if data.images is None:
        notes.append(f"No image galleries: {data.images_note}.")
    if emb is not None and emb.note:
        notes.append(emb.note + ".")
    notes_html = "".join(f'<p class="note">{esc(n)}</p>' for n in notes)

    parts = {
        "TITLE": esc(f"smcluster report: {data.root.name}"),
        "RUNNAME": esc(data.root.resolve().name),
        "RUNPATH": esc(data.root.resolve().name),
        "KEYS": key_html,
        "NAV": nav_html,
        "NOTES": notes_html,
        "SUMMARY": _summary(data, figures),
        "SIZES": _figure_html(
            "sizes",
            "Cluster sizes, largest first (dashed: a balanced "
            f"split, {len(data.ids) / data.n_clusters:.1f} per cluster), "
            f"and their histogram. Largest {int(stats.sizes.max()):,}, "
            f"smallest {int(stats.sizes.min()):,}.",
            figures,
        ),
        "GALLERYNOTE": _gallery_note(data),
        "EMBEDDING": _embedding_html(data, emb, figures),
        "NEIGHBOURS": neighbours,
        "CONFUSION": _confusion_html(data, figures),
        "CURVES": _curves_html(data, figures),
    }
    return parts


def _gallery_note(data: RunData) -> str:
    text = (
        "Click a cluster to see its members. Each card shows its most confident members "
        "and, below the dashed line, its least confident ones."
    )
    if data.labels is not None:
        text += (
            " Purity is the share of the majority class; members of other classes are "
            "outlined in red."
        )
    return f"<p>{text}</p>"


def _k_search_panel(data: RunData, figures: bool) -> str:
    """How the number of clusters was chosen (``k-search.json``), with its curve."""
    search = data.k_search or {}
    lo, hi = search.get("range", ["?", "?"])
    text = (
        f"K = {search['chosen']} was chosen without labels: the highest {search['criterion']} "
        f"score among {len(search['candidates'])} values from {lo} to {hi} "
        f"({seconds(float(search['seconds']))}; stages.choose_k)."
    )
    if search.get("reading"):
        text += f" How sure: {search['reading']}."
    if search["chosen"] in (lo, hi) and lo != hi:
        text += " It is an end of the range: a wider range may score higher."
    if data.labels is not None and search["chosen"] != data.n_classes:
        text += (
            f" The labels have {data.n_classes} classes: read the many-to-one scores beside ACC."
        )
    curve = _figure_html("k_search", "The criterion against K; the chosen K marked.", figures)
    return f'<div class="panel span2"><h3>Number of clusters</h3><p>{esc(text)}</p>{curve}</div>'


def _summary(data: RunData, figures: bool = True) -> str:
    m = data.metrics
    cfg = data.config
    env = _environment(data.root)
    images = data.images
    rows = [
        ("source", f"<code>{esc(cfg.data.source)}</code>"),
        ("images", f"{len(data.ids):,}"),
        (
            "image size",
            f"{images.image_size} px, {images.channels} channel(s)"
            if images
            else f"{cfg.data.image_size or 'native'} px",
        ),
        (
            "classes",
            f"{data.n_classes:,} (labels used for metrics only)"
            if data.labels is not None
            else "unlabelled",
        ),
        ("clusters", f"{data.n_clusters:,} ({int((data.stats.sizes == 0).sum())} empty)"),
    ]
    if env:
        rows += [
            (
                k,
                esc(
                    str(env[k]).replace("T", " ").replace("+00:00", " UTC")
                    if k == "started"
                    else env[k]
                ),
            )
            for k in ("started", "device", "torch", "threads")
            if k in env
        ]
    panels = [f'<div class="panel"><h3>Data</h3>{table(rows)}</div>']

    scores = [
        (label, fmt(float(m[key])))
        for key, label in METRIC_NAMES
        if isinstance(m.get(key), (int, float))
    ]
    if scores:
        panels.append(f'<div class="panel"><h3>Metrics</h3>{table(scores, "kv num")}</div>')
    else:
        panels.append(
            '<div class="panel"><h3>Metrics</h3><p>No labels: only the cluster sizes '
            "and confidences describe this run.</p></div>"
        )

    t = m.get("timings") or {}
    stage_times = [
        (s, float(t[f"{s}_seconds"]))
        for s in ("features", "k_search", "neighbours", "clustering")
        if isinstance(t.get(f"{s}_seconds"), (int, float))
    ]
    if stage_times:
        longest = max(v for _, v in stage_times) or 1.0
        lines = "".join(
            f'<span>{esc(s)}</span><div class="bar"><i style="width:{100 * v / longest:.1f}%">'
            f"</i></div><span>{seconds(v)}</span>"
            for s, v in stage_times
        )
        extra = []
        if "total_seconds" in t:
            extra.append(("total", seconds(float(t["total_seconds"]))))
        for key, label in (
            ("features_images_per_s", "stage 1 speed"),
            ("clustering_images_per_s", "stage 3 speed"),
        ):
            if isinstance(t.get(key), (int, float)):
                extra.append((label, f"{float(t[key]):,.0f} images/s"))
        panels.append(
            f'<div class="panel"><h3>Time per stage</h3><div class="timing">{lines}'
            f"</div>{table(extra, 'kv num')}</div>"
        )

    if data.k_search is not None:
        panels.append(_k_search_panel(data, figures))

    heads = m.get("heads")
    if isinstance(heads, list) and heads:
        best = m.get("best_head")
        cols = [k for k in ("total", "consistency", "entropy", "acc") if any(k in h for h in heads)]
        head_row = "".join(f"<th>{esc(c)}</th>" for c in ["head", *cols])
        body = ""
        for i, h in enumerate(heads):
            cls = ' class="best"' if i == best else ""
            cells = "".join(
                f"<td>{fmt(h.get(c)) if h.get(c) is not None else '–'}</td>" for c in cols
            )
            body += f"<tr{cls}><td>{i}{' ✓' if i == best else ''}</td>{cells}</tr>"
        panels.append(
            f'<div class="panel span2"><h3>Cluster heads (kept: {esc(best)})</h3>'
            f'<div class="scroll"><table class="heads"><tr>{head_row}</tr>{body}</table></div>'
            '<p class="legend-inline">SCAN loss per head over all images; the head with '
            "the lowest total is kept (METHOD.md, Stage 3).</p></div>"
        )

    settings = cfg.to_dict()
    main = [
        ("model", settings["features"]["model"]),
        ("backbone", settings["features"]["backbone"]),
        ("stage-1 epochs", settings["features"]["epochs"]),
        ("mining", f"{settings['mining']['method']}, q = {settings['mining']['q']}"),
        ("stage-3 epochs", settings["clustering"]["epochs"]),
        ("heads", settings["clustering"]["heads"]),
        (
            "backbone in stage 3",
            "fine-tuned" if settings["clustering"]["update_backbone"] else "frozen",
        ),
        ("self-labelling", settings["clustering"]["self_label"]),
        ("seed", settings["run"]["seed"]),
    ]
    groups = "".join(
        f"<div><h3>{esc(section)}</h3>{table([(esc(k), esc(v)) for k, v in values.items()])}</div>"
        for section, values in settings.items()
        if isinstance(values, dict)
    )
    panels.append(
        f'<div class="panel span2"><h3>Settings</h3>{table([(k, esc(v)) for k, v in main])}'
        '<details class="settings"><summary>all settings (config.yaml)</summary>'
        f'<div class="settings-grid">{groups}</div></details></div>'
    )
    return "".join(panels)


def _environment(root: Path) -> dict[str, Any]:
    path = root / "environment.json"
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        return {}


def _figure_html(key: str, caption: str, figures: bool, alt: str = "") -> str:
    if not figures:
        return ""
    return (
        f'<figure><img src="figures/{FIGURES[key]}" alt="{esc(alt or key)}" '
        f'loading="lazy"><figcaption>{esc(caption)}</figcaption></figure>'
    )


def _embedding_html(data: RunData, emb: Embedding | None, figures: bool) -> str:
    head = '<section id="embedding"><h2>Embedding of the stage-1 features</h2>'
    if emb is None:
        why = (
            "this run has no features.npy"
            if data.features is None
            else "the report was written with embedding=False"
        )
        return head + f'<p class="note">No embedding: {esc(why)}.</p></section>'
    n = len(data.ids)
    sample = (
        f"a random sample of {len(emb.indices):,} of the {n:,} images"
        if len(emb.indices) < n
        else f"all {n:,} images"
    )
    pick = ""
    if data.labels is not None:
        pick = (
            '<label>Colour by <select id="colourby"><option value="cluster">cluster'
            '</option><option value="class">true class</option></select></label>'
        )
    return (
        head + f"<p>{esc(emb.method)} of the stage-1 mining features "
        f"(<code>features.npy</code>) on {sample}, coloured by cluster (the paper's Fig. 2)."
        " Hover a point to light up its cluster, click to open it.</p>"
        f'<div class="emb"><canvas id="embcanvas" width="700" height="700"></canvas>'
        f'<div class="side">{pick}<div id="emblegend" class="legend"></div>'
        + (
            '<p class="legend-inline">Static version: <code>figures/embedding.png</code>.</p>'
            if figures
            else ""
        )
        + "</div></div></section>"
    )


def _confusion_html(data: RunData, figures: bool) -> str:
    head = '<section id="confusion"><h2>Confusion matrix after Hungarian matching</h2>'
    if data.labels is None:
        return head + '<p class="note">No labels, so no confusion matrix.</p></section>'
    if not figures:
        return head + "<p>Written with figures=False.</p></section>"
    return (
        head
        + _figure_html(
            "confusion",
            "Rows: true classes; columns: the cluster matched to each class "
            "(Hungarian algorithm). Each row is divided by its class size; the diagonal holds the "
            "correctly clustered share and its total over N is ACC.",
            figures,
        )
        + "</section>"
    )


def _curves_html(data: RunData, figures: bool) -> str:
    head = '<section id="training"><h2>Training curves</h2>'
    stages = [s for s in dict.fromkeys(r.get("stage") for r in data.history) if s]
    if not stages:
        return head + '<p class="note">No history.jsonl in this run.</p></section>'
    rows = []
    for s in stages:
        recs = [r for r in data.history if r.get("stage") == s]
        last = recs[-1]
        secs = sum(float(r.get("seconds", 0) or 0) for r in recs)
        loss = last.get("loss")
        rows.append(
            (
                esc(STAGE_TITLES.get(s, s)),
                f"{len(recs)} epochs, final loss {fmt(loss, 4) if loss is not None else '–'}"
                f", {seconds(secs)}",
            )
        )
    return (
        head
        + _figure_html("curves", "Loss per epoch of each stage (history.jsonl).", figures)
        + f'<div class="panel" style="margin-top:12px">'
        f"{table(rows)}</div></section>"
    )
