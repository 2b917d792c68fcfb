"""``--clusters auto`` / ``LO:HI`` through the pipeline: the search between stages 1 and 2, its
record (``k-search.json``), the resolved configuration, resume and the edge warning.

Planted Gaussian mixtures of 8 clusters given as embeddings (the fast path: no stage 1); the
mixture overlaps a little (neighbour purity about 0.99): features that separate the clusters,
where the default criterion finds K (``stages.choose_k``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from smcluster import pipeline
from smcluster.api import SMCluster
from smcluster.autoconfig import frozen_settings
from smcluster.cli import main
from smcluster.config import Config
from smcluster.runfolder import RunFolder
from smcluster.stages.choose_k import DEFAULT_CRITERION, KSearch

QUICK = {"run__report": False, "run__progress": False, "run__threads": 1}
HEADS = {"clustering__epochs": 15, "clustering__heads": 3}
TRUE_K = 8


def planted(n: int = 1600, k: int = TRUE_K, dim: int = 48, spread: float = 1.2, seed: int = 0):
    """A mixture of ``k`` unit-norm centres; ``spread`` is the noise's total norm."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.permutation(np.arange(n) % k)
    x = centres[labels] + spread * rng.normal(size=(n, dim)) / np.sqrt(dim)
    return x.astype(np.float32), labels


def close_to_true(k: int) -> bool:
    return abs(k - TRUE_K) <= 0.25 * TRUE_K


def test_auto_chooses_the_planted_number_through_the_api(tmp_path) -> None:
    vectors, labels = planted()
    out = tmp_path / "run"
    model = SMCluster("auto", out=out, **QUICK, **HEADS).fit(vectors, labels)
    chosen = model.n_clusters_
    assert close_to_true(chosen), chosen
    search = RunFolder(out).load_json("k_search")
    assert search["request"] == "auto" and search["range"] == [2, 1600 // 5]
    assert search["chosen"] == chosen and search["criterion"] == DEFAULT_CRITERION
    assert search["candidates"][0] == 2 and search["candidates"][-1] == 320
    assert len(search["scores"][DEFAULT_CRITERION]) == len(search["candidates"])
    assert search["images"] == len(vectors) and "probe score" in search["reading"]
    saved = Config.load(out / "config.yaml")
    assert saved.n_clusters == chosen
    # Stage 3 was sized for the range's top (batch 2 x 320); the chosen K resizes what auto
    # chose (the batch), never what was given (3 heads x 15 epochs).
    assert saved.clustering.batch_size == frozen_settings(1600, chosen)["clustering"]["batch_size"]
    assert (saved.clustering.heads, saved.clustering.epochs) == (3, 15)
    assert model.metrics_["n_clusters"] == chosen
    assert model.probabilities_.shape == (len(vectors), chosen)
    assert model.metrics_["timings"]["k_search_seconds"] > 0
    # Stage 3 learned at the chosen K: the clusters follow the planted ones (chance: 1/8).
    assert model.metrics_.get("acc_many_to_one", model.metrics_["acc"]) >= 0.75


def fit_range_from_the_command_line(tmp_path, seed: int, *flags: str) -> Path:
    """``smcluster fit`` on saved planted embeddings over 2:32, quiet; the run folder."""
    vectors, labels = planted(seed=seed)
    path = tmp_path / "features.npz"
    np.savez(path, embeddings=vectors, labels=labels)
    out = tmp_path / "run"
    args = ["fit", "--embeddings", str(path), "--clusters", "2:32", "--out", str(out), *flags]
    assert main([*args, "--quiet", "--no-report", "--cluster-epochs", "15", "--threads", "1"]) == 0
    return out


def test_a_range_through_the_command_line(tmp_path, capsys) -> None:
    out = fit_range_from_the_command_line(tmp_path, 1)
    printed = capsys.readouterr()
    chosen = Config.load(out / "config.yaml").n_clusters
    assert isinstance(chosen, int) and close_to_true(chosen), chosen
    assert f"number of clusters: {chosen}, chosen by {DEFAULT_CRITERION}" in printed.err
    assert "probe score" in printed.err
    assert "from 2 to 32" in printed.err
    assert "choosing K" in printed.out  # the time line


def test_the_command_line_chooses_the_criterion(tmp_path, capsys) -> None:
    out = fit_range_from_the_command_line(tmp_path, 3, "--k-criterion", "kmeans-coding")
    chosen = Config.load(out / "config.yaml").n_clusters
    assert close_to_true(chosen), chosen
    search = RunFolder(out).load_json("k_search")
    assert search["criterion"] == "kmeans-coding" and "kmeans-coding" in search["scores"]
    assert "chosen by kmeans-coding among" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("clusters", "message"),
    [
        ("20:10", "cluster range 20:10 is empty"),
        ("1:10", "at least 2"),
        ("ten", "'ten' is not understood"),
        ("2:5000", "more clusters than the 1600 images"),
    ],
)
def test_bad_ranges_are_refused_before_any_work(tmp_path, capsys, clusters, message) -> None:
    vectors, _ = planted()
    path = tmp_path / "features.npy"
    np.save(path, vectors)
    out = tmp_path / "run"
    code = main(["fit", "--embeddings", str(path), "--clusters", clusters, "--out", str(out)])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("smcluster: error: ")
    with pytest.raises(ValueError, match=message):
        SMCluster(clusters, out=out, **QUICK).fit(vectors)
    assert not out.exists()


def test_resume_reads_the_choice_instead_of_searching(tmp_path, monkeypatch) -> None:
    vectors, labels = planted(seed=2)
    out = tmp_path / "run"

    def killed(*args, **kwargs):
        raise RuntimeError("killed in stage 3")

    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "_stage_clustering", killed)
        with pytest.raises(RuntimeError, match="killed"):
            SMCluster("2:32", out=out, **QUICK, **HEADS).fit(vectors, labels)
    record = (out / "k-search.json").read_bytes()
    chosen = json.loads(record)["chosen"]
    assert Config.load(out / "config.yaml").n_clusters == chosen
    # A kill between k-search.json and the rewritten config.yaml leaves the range there.
    Config.load(out / "config.yaml").updated({"n_clusters": "2:32"}).save(out / "config.yaml")

    def no_search(*args, **kwargs):
        raise AssertionError("a resumed run searched again")

    monkeypatch.setattr(pipeline, "choose_n_clusters", no_search)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nor a warning that the given settings are ignored
        model = SMCluster("2:32", out=out, **QUICK, **HEADS).fit(vectors, labels, resume=True)
    assert model.n_clusters_ == chosen and model.probabilities_.shape[1] == chosen
    assert (out / "k-search.json").read_bytes() == record
    assert Config.load(out / "config.yaml").n_clusters == chosen
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # config.yaml holds the number, the range is given
        again = SMCluster("2:32", out=out, **QUICK, **HEADS).fit(vectors, labels, resume=True)
    np.testing.assert_array_equal(again.labels_, model.labels_)


def test_a_choice_at_the_end_of_the_range_warns(tmp_path, monkeypatch, capsys) -> None:
    """The warning is the pipeline's, whatever the criterion: the search is replaced by one
    whose best K is the range's upper end."""
    vectors, labels = planted(seed=3)
    path = tmp_path / "features.npz"
    np.savez(path, embeddings=vectors, labels=labels)

    def best_at_the_top(embeddings, neighbours, candidates, config, **kwargs) -> KSearch:
        ks = list(candidates)
        return KSearch(ks, {"scan-nmi": [float(k) for k in ks]}, "scan-nmi", ks[-1], 0.1)

    monkeypatch.setattr(pipeline, "choose_n_clusters", best_at_the_top)
    with pytest.warns(UserWarning, match=r"range's upper end 16; try a wider range"):
        model = SMCluster("4:16", out=tmp_path / "api", **QUICK, **HEADS).fit(vectors, labels)
    assert model.n_clusters_ == 16
    # More clusters than classes: the many-to-one scores sit beside the one-to-one ones.
    assert model.metrics_["acc_many_to_one"] > model.metrics_["acc"]
    assert "nmi_many_to_one" in model.metrics_
    args = ["fit", "--embeddings", str(path), "--clusters", "4:16", "--out", str(tmp_path / "cli")]
    assert main([*args, "--quiet", "--no-report", "--cluster-epochs", "15", "--threads", "1"]) == 0
    printed = capsys.readouterr()
    assert "smcluster: warning: the best number of clusters is the range's upper end 16" in (
        printed.err
    )
    assert "acc_many_to_one=" in printed.out


def test_a_fixed_number_does_not_search(tmp_path) -> None:
    vectors, labels = planted(seed=4)
    out = tmp_path / "run"
    model = SMCluster(TRUE_K, out=out, **QUICK, **HEADS).fit(vectors, labels)
    assert model.n_clusters_ == TRUE_K
    assert not (out / "k-search.json").exists()
    assert "k_search_seconds" not in model.metrics_["timings"]


def test_the_search_runs_before_three_view_mining_on_images(tmp_path) -> None:
    """With images, the weak-view mining head is built with the chosen K (stage 2 after the
    search)."""
    from smcluster.data import load_dataset

    data = load_dataset("digits")
    images = data.as_tensor()[:600, 0].numpy()
    settings = {
        "preset": "demo",
        "data__image_size": 8,
        "features__epochs": 1,
        "mining__warmup_epochs": 1,
        "clustering__epochs": 2,
        "clustering__feature_views": 1,
        **QUICK,
    }
    out = tmp_path / "run"
    model = SMCluster("4:16", out=out, method="paper", **settings).fit(images, data.labels[:600])
    chosen = model.n_clusters_
    assert 4 <= chosen <= 16
    heads = RunFolder(out).load_checkpoint("mining-head")["heads"]
    assert heads["bias"].shape[1] == chosen
    knn = np.load(out / "neighbours-knn.npy")
    assert knn.shape == (600, 10)
    assert SMCluster.from_run(out).n_clusters_ == chosen
