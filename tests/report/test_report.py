"""write_report and write_figures on a real run, and on runs missing labels or images."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from smcluster.report import write_figures, write_report


def page_data(index: Path) -> dict[str, Any]:
    """The JSON the page's script draws from."""
    text = index.read_text()
    match = re.search(
        r'<script id="report-data" type="application/json">(.*?)</script>', text, re.S
    )
    assert match, "no report data in the page"
    return json.loads(match.group(1))


def assignments(run: Path) -> list[dict[str, str]]:
    with (run / "assignments.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_page_has_one_gallery_entry_per_cluster(demo_run: Path, demo_report: Path) -> None:
    assert demo_report == demo_run / "report" / "index.html"
    data = page_data(demo_report)
    rows = assignments(demo_run)
    sizes = np.bincount([int(r["cluster"]) for r in rows], minlength=10)
    assert [c["c"] for c in data["clusters"]] == list(range(10))
    assert [c["n"] for c in data["clusters"]] == sizes.tolist()
    assert data["hasImages"] is True
    for cluster in data["clusters"]:
        if cluster["n"] == 0:
            assert cluster["sheet"] is None
            continue
        sheet = cluster["sheet"]
        assert sheet["count"] == min(cluster["n"], 100)
        with Image.open(demo_report.parent / sheet["file"]) as image:
            image.verify()
        with Image.open(demo_report.parent / sheet["file"]) as image:
            assert image.size == (sheet["cols"] * 8, sheet["rows"] * 8)
        start = cluster["o"]
        confidences = data["shown"]["conf"][start : start + sheet["count"] - cluster["low"]]
        assert confidences == sorted(confidences, reverse=True), "most confident first"
        assert cluster["maj"] is not None and 0 <= cluster["pur"] <= 1


def test_page_has_summary_embedding_neighbours_confusion_and_curves(
    demo_run: Path, demo_report: Path
) -> None:
    html = demo_report.read_text()
    data = page_data(demo_report)
    metrics = json.loads((demo_run / "metrics.json").read_text())
    for section in ("summary", "clusters", "embedding", "neighbours", "confusion", "training"):
        assert f'<section id="{section}">' in html
    assert f"{metrics['acc']:.3f}" in html
    assert "Time per stage" in html and "Cluster heads" in html
    assert '<canvas id="embcanvas"' in html
    embedding = data["embedding"]
    assert len(embedding["x"]) == len(embedding["c"]) == len(set(embedding["id"])) == 1000
    clusters = [int(r["cluster"]) for r in assignments(demo_run)]
    assert embedding["c"] == [clusters[i] for i in embedding["id"]]
    assert "a random sample of 1,000 of the 1,797 images" in html
    assert min(embedding["x"]) >= 0 and max(embedding["y"]) <= 1
    assert "PaCMAP of the stage-1" in html
    rows = data["neighbours"]["rows"]
    assert len(rows) == 6 and all(len(r["knn"]) == len(r["used"]) == 8 for r in rows)
    knn = np.load(demo_run / "neighbours-knn.npy")
    labels = [int(r["label"]) for r in assignments(demo_run)]
    anchor_tile = rows[0]["anchor"][0]
    assert anchor_tile == 0 and rows[0]["knn"][0][0] == 1
    first = rows[0]["knn"]
    anchor_id = int(re.search(r"image (\d+)", rows[0]["anchor"][1]).group(1))
    wrong = [labels[int(j)] != labels[anchor_id] for j in knn[anchor_id, :8]]
    assert [item[2] for item in first] == wrong, "red outline = another class than the anchor"
    for figure in ("figures/confusion.png", "figures/curves.png", "figures/cluster-sizes.png"):
        assert f'src="{figure}"' in html
        assert (demo_report.parent / figure).exists()


def test_figures_are_valid_pngs(demo_run: Path, demo_report: Path) -> None:
    paths = write_figures(demo_run, embedding_sample=1000)
    names = sorted(p.name for p in paths)
    assert names == [
        "cluster-sizes.png",
        "confusion.png",
        "curves.png",
        "embedding.png",
        "neighbours.png",
    ]
    for path in paths:
        assert path.parent == demo_run / "report" / "figures"
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG"
            pixels = np.asarray(image.convert("L"))
            assert min(pixels.shape) > 100 and pixels.std() > 5, f"{path.name} looks blank"


def test_report_without_labels_or_images(run_copy: Path) -> None:
    config = yaml.safe_load((run_copy / "config.yaml").read_text())
    config["data"]["source"] = str(run_copy / "gone.npz")
    (run_copy / "config.yaml").write_text(yaml.safe_dump(config))
    rows = assignments(run_copy)
    with (run_copy / "assignments.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "cluster", "confidence"])
        writer.writerows([r["id"], r["cluster"], r["confidence"]] for r in rows)
    metrics = json.loads((run_copy / "metrics.json").read_text())
    for key in ("acc", "nmi", "ari", "neighbour_purity", "neighbour_purity_knn"):
        metrics.pop(key)
    (run_copy / "metrics.json").write_text(json.dumps(metrics))

    index = write_report(run_copy, embedding=False)
    html = index.read_text()
    data = page_data(index)
    assert "No image galleries" in html and "gone.npz" in html
    assert "No labels, so no confusion matrix" in html
    assert data["hasImages"] is False and data["neighbours"] is None
    assert len(data["clusters"]) == 10 and all(c["sheet"] is None for c in data["clusters"])
    assert all(c["maj"] is None for c in data["clusters"])
    assert not (run_copy / "report" / "img").exists() or not any(
        (run_copy / "report" / "img").iterdir()
    )
    made = sorted(p.name for p in write_figures(run_copy, embedding=False))
    assert made == ["cluster-sizes.png", "curves.png"]


def test_report_refuses_an_in_memory_source_that_is_not_the_runs(run_copy: Path) -> None:
    """A run fitted on arrays records a source that may name other images: no galleries."""
    rows = assignments(run_copy)[:-1]
    with (run_copy / "assignments.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "cluster", "confidence", "label"])
        writer.writerows([r["id"], r["cluster"], r["confidence"], r["label"]] for r in rows)
    for name in ("features.npy", "neighbours.npy", "neighbours-knn.npy", "probabilities.npy"):
        np.save(run_copy / name, np.load(run_copy / name)[:-1])
    html = write_report(run_copy, embedding=False).read_text()
    assert "does not hold the images of this run" in html


def test_max_members_keeps_the_most_and_least_confident(run_copy: Path) -> None:
    index = write_report(run_copy, embedding=False, figures=False, max_members=7, least=2)
    data = page_data(index)
    rows = assignments(run_copy)
    for cluster in data["clusters"]:
        conf = sorted(
            (float(r["confidence"]) for r in rows if int(r["cluster"]) == cluster["c"]),
            reverse=True,
        )
        if len(conf) <= 7:
            continue
        start = cluster["o"]
        shown = data["shown"]["conf"][start : start + 7]
        assert cluster["sheet"]["count"] == 7 and cluster["low"] == 2
        assert shown[:5] == pytest.approx(conf[:5], abs=1e-3)
        assert shown[5:] == pytest.approx(conf[-2:], abs=1e-3)
    assert "No embedding" in index.read_text()


def test_embedding_falls_back_to_pca(run_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMCLUSTER_REPORT_NO_PACMAP", "1")
    html = write_report(run_copy, figures=False).read_text()
    assert "PaCMAP unavailable" in html and "PCA of the stage-1" in html


def test_bad_run_folders_raise_clear_errors(tmp_path: Path, run_copy: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        write_report(tmp_path / "nothing")
    (run_copy / "assignments.csv").unlink()
    with pytest.raises(ValueError, match="has not finished"):
        write_report(run_copy)


@pytest.mark.parametrize("name", ["probabilities.npy", "metrics.json"])
def test_a_damaged_run_file_is_named_not_a_traceback(run_copy: Path, name: str) -> None:
    from smcluster.runfolder import RunFolderError

    path = run_copy / name
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(RunFolderError, match=name):
        write_report(run_copy)


def test_a_run_that_chose_its_number_of_clusters_plots_the_search(
    tmp_path: Path, demo_report: Path
) -> None:
    """The criterion against K with the chosen K (k-search.json), and the many-to-one scores
    when the chosen K is not the number of classes; a run with a fixed K shows neither."""
    from smcluster.api import SMCluster

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 48))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.permutation(np.arange(1200) % 8)
    vectors = (centres[labels] + 1.2 * rng.normal(size=(1200, 48)) / np.sqrt(48)).astype("f4")
    run = tmp_path / "run"
    quick = {"run__report": False, "run__progress": False, "run__threads": 1}
    model = SMCluster("12:40", out=run, clustering__epochs=5, **quick).fit(vectors, labels)
    chosen = model.n_clusters_
    search = json.loads((run / "k-search.json").read_text())
    assert search["chosen"] == chosen and 12 <= chosen <= 40
    html = write_report(run).read_text()
    assert "<h3>Number of clusters</h3>" in html
    assert f"K = {chosen} was chosen without labels" in html
    assert "from 12 to 40" in html
    assert 'src="figures/k-search.png"' in html
    with Image.open(run / "report" / "figures" / "k-search.png") as image:
        image.verify()
    assert "ACC many-to-one (purity)" in html  # 8 classes, more clusters
    assert f"{model.metrics_['acc_many_to_one']:.3f}" in html
    assert "k-search.png" in {p.name for p in write_figures(run, embedding=False)}
    fixed = demo_report.read_text()
    assert "Number of clusters" not in fixed and "k-search.png" not in fixed


def test_the_report_maps_the_probabilities_instead_of_reading_them(
    run_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the array's shape is used: at 10^6 images x 1000 clusters a read costs 4 GB."""
    from smcluster.report.rundata import load_run

    data = load_run(run_copy, images=False)
    loaded = np.load(run_copy / "probabilities.npy", mmap_mode="r")
    assert data.n_clusters == loaded.shape[1]
    opened: list[Any] = []
    real_load = np.load

    def spy(path, *args, **kwargs):
        opened.append((Path(path).name, kwargs.get("mmap_mode")))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(np, "load", spy)
    load_run(run_copy, images=False)
    assert ("probabilities.npy", "r") in opened
    assert ("probabilities.npy", None) not in opened
