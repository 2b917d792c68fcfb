"""The benchmark harness's pure parts: variant order, seed aggregation, tables (no training)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from smcluster.config import Config

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


quality = _load("quality")
scaling = _load("scaling")


def test_variant_list_covers_the_issue_and_trains_each_stage_one_before_reuse() -> None:
    keys = [v.key for v in quality.VARIANTS]
    assert (
        sorted(keys)
        == sorted(quality.VARIANT_ORDER)
        == sorted(["a", "a2", "b", "c", "d", "e", "f", "g", "h"])
    )
    for i, v in enumerate(quality.VARIANTS):
        if v.features_from:
            assert v.features_from in keys[:i], f"{v.key} reuses a stage 1 trained later"
    trainers = [v.key for v in quality.VARIANTS if v.kind == "cli" and not v.features_from]
    assert trainers == ["f", "c"]  # two feature models per data set and seed
    args = {v.key: v.args for v in quality.VARIANTS}
    assert args["f"] == ("--method", "paper") and args["c"] == ("--method", "scan")
    assert args["h"] == () and quality.VARIANTS[keys.index("h")].features_from == "c"
    assert "--self-label" in args["g"]


def test_select_variants_adds_the_run_whose_stage_one_is_reused() -> None:
    assert [v.key for v in quality.select_variants(["e"])] == ["c", "e"]
    assert [v.key for v in quality.select_variants(["b", "a"])] == ["a", "f", "b"]
    with pytest.raises(ValueError, match="unknown variants"):
        quality.select_variants(["z"])


def test_mean_std_uses_the_sample_std_and_drops_nans() -> None:
    mean, std = quality.mean_std([0.5, 0.7, 0.9])
    assert mean == pytest.approx(0.7)
    assert std == pytest.approx(0.2)
    assert quality.mean_std([0.4]) == (0.4, 0.0)
    assert quality.mean_std([0.4, float("nan")]) == (0.4, 0.0)
    assert all(math.isnan(v) for v in quality.mean_std([]))


def _record(dataset: str, variant: str, seed: int, acc: float, **extra) -> dict:
    return {"dataset": dataset, "variant": variant, "seed": seed, "metrics": {"acc": acc, **extra}}


def test_aggregate_groups_seeds_per_dataset_and_variant_and_skips_failures() -> None:
    records = [
        _record("omni", "f", 0, 0.6, nmi=0.8),
        _record("omni", "f", 1, 0.8, nmi=0.9),
        _record("omni", "c", 0, 0.5),
        {"dataset": "omni", "variant": "c", "seed": 1, "error": "exit 1"},
        _record("mnist", "a", 0, 0.55),
    ]
    rows = quality.aggregate(records)
    assert [(r["dataset"], r["variant"]) for r in rows] == [
        ("mnist", "a"),
        ("omni", "c"),
        ("omni", "f"),
    ]
    full = rows[2]
    assert full["seeds"] == 2
    assert full["acc"][0] == pytest.approx(0.7)
    assert full["acc"][1] == pytest.approx(math.sqrt(0.02))
    assert rows[1]["seeds"] == 1 and "nmi" not in rows[1]


def test_table_shows_percent_mean_and_std_and_prf_only_for_many_classes() -> None:
    rows = quality.aggregate(
        [
            _record(
                "omni", "f", 0, 0.6, weighted_f=0.5, weighted_precision=0.4, weighted_recall=0.6
            ),
            _record(
                "omni", "f", 1, 0.8, weighted_f=0.5, weighted_precision=0.4, weighted_recall=0.6
            ),
            _record("mnist", "f", 0, 0.9, weighted_f=0.9),
        ]
    )
    table = quality.render_table(rows, {"omni": True, "mnist": False})
    lines = table.splitlines()
    assert len(lines) == 4
    assert len({line.count("|") for line in lines}) == 1
    omni = next(line for line in lines if line.startswith("| omni"))
    assert "70.0 ± 14.1" in omni
    assert "40.0 / 60.0 / 50.0" in omni
    mnist = next(line for line in lines if line.startswith("| mnist"))
    assert "| 90.0 |" in mnist and "90.0 / " not in mnist


def test_markdown_report_names_command_machine_and_failures(tmp_path: Path) -> None:
    doc = {
        "suite": "cpu",
        "date": "2026-01-01",
        "commands": ["python benchmarks/quality.py --suite cpu --threads 2"],
        "machine": {
            "cpu_cores": 2,
            "processor": "x86_64",
            "platform": "Linux",
            "python": "3.12",
            "torch": "2.4",
            "cuda": None,
        },
        "threads": 2,
        "settings": {},
        "notes": ["stage 1 reused from an earlier run"],
        "runs": [
            _record("omni", "f", 0, 0.6),
            {"dataset": "omni", "variant": "c", "seed": 0, "error": "exit 1: boom"},
        ],
    }
    quality.write_results(doc, tmp_path / "cpu-x", {"omni": True})
    md = (tmp_path / "cpu-x.md").read_text()
    assert "--suite cpu --threads 2" in md and "2 CPU cores" in md and "torch 2.4" in md
    assert "omni seed 0 (c): exit 1: boom" in md
    assert "- stage 1 reused from an earlier run" in md
    saved = json.loads((tmp_path / "cpu-x.json").read_text())
    assert saved["summary"][0]["acc"] == [0.6, 0.0]
    quality.write_results(doc, tmp_path / "cpu-momentum-0.99", {"omni": True})  # a dotted tag
    assert {p.name for p in tmp_path.glob("cpu-momentum-*")} == {
        "cpu-momentum-0.99.json",
        "cpu-momentum-0.99.md",
    }


def test_suites_match_the_issue() -> None:
    cpu = {s.name: s for s in quality.SUITES["cpu"].data}
    assert set(cpu) == {
        "mnist-10k",
        "cifar10-test",
        "omniglot-100",
        "omniglot-200",
        "omniglot-964",
        "tinyimagenet-200",
    }
    assert all(s.preset.startswith("cpu-") for s in cpu.values())
    assert cpu["omniglot-964"].clusters == 964 and cpu["omniglot-100"].classes_kept == 100
    assert all(s.preset.startswith("paper-") for s in quality.SUITES["paper"].data)
    assert [s.name for s in quality.SUITES["smoke"].data] == ["digits"]


def test_fit_command_uses_the_suite_budget_unless_overridden(tmp_path: Path) -> None:
    spec = {s.name: s for s in quality.SUITES["cpu"].data}["omniglot-964"]
    variant = {v.key: v for v in quality.VARIANTS}["f"]

    def command(*argv: str) -> list[str]:
        opts = quality.build_parser().parse_args(["--suite", "cpu", *argv])
        return quality.fit_command(spec, "d.npz", tmp_path / "f", 0, variant, opts, None)

    def value(cmd: list[str], flag: str) -> str:
        return cmd[cmd.index(flag) + 1]

    default = command()
    assert (value(default, "--epochs"), value(default, "--cluster-epochs")) == ("8", "20")
    assert value(command("--epochs", "30"), "--epochs") == "30"
    assert spec.seeds == 1


def test_prepare_data_keeps_the_first_classes_and_train_images(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    labels = np.repeat(np.arange(5), 4)
    np.savez(
        shared / "toy.npz",
        images=np.arange(20 * 4, dtype=np.uint8).reshape(20, 2, 2),
        labels=labels,
        class_names=np.asarray([f"c{i}" for i in range(5)]),
        split=(np.arange(20) >= 16).astype(np.int64),
    )
    spec = quality.DataSpec("toy-3", "toy.npz", "cpu-omniglot", 3, classes_kept=3)
    path = quality.prepare_data(spec, shared, tmp_path / "cache")
    with np.load(path) as f:
        assert f["labels"].tolist() == labels[labels < 3].tolist()
        assert f["class_names"].tolist() == ["c0", "c1", "c2"]
    spec = quality.DataSpec("toy-sub", "toy.npz", "cpu-mnist", 5, subset=10)
    with np.load(quality.prepare_data(spec, shared, tmp_path / "cache")) as f:
        assert len(f["labels"]) == 10
    with pytest.raises(FileNotFoundError, match="SMCLUSTER_SHARED_DATA"):
        quality.prepare_data(
            quality.DataSpec("x", "missing.npz", "cpu-mnist", 2), shared, tmp_path / "cache"
        )


def test_shared_data_dir_prefers_argument_then_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SMCLUSTER_SHARED_DATA", str(tmp_path))
    assert quality.shared_data_dir(None) == tmp_path
    assert quality.shared_data_dir("elsewhere") == Path("elsewhere")
    monkeypatch.delenv("SMCLUSTER_SHARED_DATA")
    assert quality.shared_data_dir(None) == quality.REPO.parent / "shared" / "data"


def test_scaling_fit_recovers_a_power_law() -> None:
    xs = [2000, 4000, 8000, 16000]
    assert scaling.loglog_slope(xs, [3.0 * x for x in xs]) == pytest.approx(1.0)
    assert scaling.loglog_slope(xs, [x**2 for x in xs]) == pytest.approx(2.0)
    table = scaling.render_rows(
        [{"n": 2000, "features_seconds": 1.5, "peak_rss_mb": 300.0}],
        ["n", "features_seconds", "peak_rss_mb"],
    )
    assert table.splitlines()[0] == "| n | features_seconds | peak_rss_mb |"
    assert "| 2000 | 1.50 | 300.0 |" in table


def test_stage1_source_names_the_earlier_run_or_says_what_is_missing(tmp_path: Path) -> None:
    run = tmp_path / "omniglot-964" / "seed0" / "f"
    with pytest.raises(SystemExit, match="no finished run at .*omniglot-964/seed0/f"):
        quality.stage1_source(tmp_path, "omniglot-964", 0, "f")
    run.mkdir(parents=True)
    (run / "metrics.json").write_text("{}")
    assert quality.stage1_source(tmp_path, "omniglot-964", 0, "f") == run


def test_stage1_cost_prefers_the_record_of_the_run_that_copied_it_too(tmp_path: Path) -> None:
    # (f) copied its stage 1 from an earlier run: its metrics.json holds only the copying time,
    # its record the cost of the run that trained it. (g), copying from (f), must get the latter.
    f_run = tmp_path / "f"
    f_run.mkdir()
    copying = {"features_seconds": 0.05, "features_images_per_s": 1e6}
    (f_run / "metrics.json").write_text(json.dumps({"acc": 0.5, "timings": copying}))
    trained = {"features_seconds": 458.5, "features_images_per_s": 659.3}
    record = {"dataset": "mnist-10k", "seed": 0, "variant": "f", "metrics": {**trained, "acc": 0.5}}
    assert quality.stage1_cost(f_run, record) == trained
    assert quality.stage1_cost(f_run, None) == copying
    g_run = tmp_path / "g"
    g_run.mkdir()
    (g_run / "metrics.json").write_text(json.dumps({"acc": 0.6, "timings": copying}))
    metrics = quality.read_metrics(g_run, quality.stage1_cost(f_run, record))
    assert metrics["features_seconds"] == 458.5 and metrics["acc"] == 0.6


def test_probes_reproduce_the_runs_stage_three_and_leave_the_run_alone(
    brief_run, tmp_path: Path
) -> None:
    probes = _load("probes")
    run = Path(brief_run.run_dir_)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    argv = [str(run), "--fusion", "1,1,1", "--strong-views", "2", "--entropy-weights", "2", "5"]
    assert probes.main([*argv, "--threads", "1", "--results", str(tmp_path), "--tag", "t"]) == 0
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before
    result = json.loads((tmp_path / "probes-t.json").read_text())["results"][0]
    assert set(result["mining"]) == {"knn", "three-view", "fused", "fused-weighted"}
    assert all(0 <= m["purity"] <= 1 for m in result["mining"].values())
    own = Config.load(run / "config.yaml").mining.method
    kept = result["clustering"][own]  # the run's own mining and head selection
    assert kept["acc"]["loss"] == pytest.approx(brief_run.metrics_["acc"])
    assert kept["picks"]["loss"] == brief_run.metrics_["best_head"]
    assert [e["entropy_weight"] for e in result["entropy"]] == [2.0, 5.0]
    hits = probes.best_head_hits([result])
    assert all(total == 4 + 1 for _, total in hits.values())  # weight 5 is knn's own
    assert "| run | K | q | mining | purity" in (tmp_path / "probes-t.md").read_text()


def test_stage3_sweep_reproduces_the_runs_stage_three_and_varies_it(
    brief_run, tmp_path: Path
) -> None:
    sweep = _load("stage3_sweep")
    run = Path(brief_run.run_dir_)
    assert Config.load(run / "config.yaml").mining.method == "knn"  # what the sweep mines
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    trials = ["{}", '{"frozen_lr": 0.1, "q": 3}']
    argv = [str(run), "--trials", *trials, "--purity", "--threads", "1"]
    assert sweep.main([*argv, "--results", str(tmp_path), "--tag", "t"]) == 0
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before
    result = json.loads((tmp_path / "stage3-sweep-t.json").read_text())["results"][0]
    own, varied = result["trials"]
    assert own["acc"]["loss"] == pytest.approx(brief_run.metrics_["acc"])
    assert varied["trial"] == {"frozen_lr": 0.1, "q": 3}
    assert own["acc"] != varied["acc"]
    assert {p["q"] for p in result["purity"]} == {5, 10, 20}
    assert all(0 <= p["purity"] <= 1 for p in result["purity"])
    assert result["run"] == "/".join(run.parts[-3:])  # no machine path in the results


def test_stage1_budget_reads_steps_and_metrics_of_each_finished_run(tmp_path: Path) -> None:
    budget = _load("stage1_budget")
    for variant, epochs in (("c", 8), ("d", 8)):
        run = tmp_path / "mnist-10k" / "seed0" / variant
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(f"features:\n  epochs: {epochs}\n  batch_size: 256\n")
        (run / "metrics.json").write_text(json.dumps({"n_images": 1000}))
    metrics = {"knn_accuracy": 0.9, "acc": 0.8, "nmi": 0.7, "features_seconds": 12.0}
    doc = {
        "runs": [
            {"dataset": "mnist-10k", "seed": 0, "variant": "c", "metrics": metrics},
            {"dataset": "mnist-10k", "seed": 0, "variant": "d", "error": "exit 1"},
            {"dataset": "mnist-10k", "seed": 0, "variant": "a", "metrics": metrics},
        ]
    }
    rows = budget.curve_rows(doc, tmp_path, 8)
    assert [(r["model"], r["steps"]) for r in rows] == [("SimCLR", 8 * (1000 // 256))]
    table = budget.markdown(rows, "python benchmarks/stage1_budget.py ...")
    assert "| mnist-10k | SimCLR | c | 8 | 24 | 90.0 | 80.0 | 70.0 | 12 |" in table


def test_supervised_features_keep_the_classes_asked_for_and_train_on_others(
    tmp_path: Path,
) -> None:
    supervised = _load("supervised_features")
    images = np.zeros((12, 8, 8), np.uint8)
    images[:, :4] = 255
    labels = np.repeat(np.arange(6), 2)
    np.savez(tmp_path / "set.npz", images=images, labels=labels)
    part = supervised.Part("set.npz", first=2, stop=5, size=4, invert=True)
    x, y = supervised.load_part(part, tmp_path)
    assert x.shape == (6, 1, 4, 4) and y.tolist() == [0, 0, 1, 1, 2, 2]
    assert x[:, :, :2].max() == 0.0 and x[:, :, 2:].min() == 1.0
    for pair in supervised.PAIRS.values():
        train = set(range(pair.train.first, pair.train.stop or 10**6))
        for target in pair.targets.values():
            if target.file == pair.train.file:
                assert not train & set(range(target.first, target.stop or 10**6))
