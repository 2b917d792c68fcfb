"""The time budget: duration parsing, who decides the epochs, the plan, the ETA, a real run."""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import pytest
import yaml

from smcluster.api import SMCluster, build_config
from smcluster.budget import (
    PLANNED_SHARE,
    Measured,
    later_seconds,
    parse_duration,
    plan_epochs,
    run_eta,
    settle_explicit_epochs,
)
from smcluster.cli import main
from smcluster.config import Config, method
from smcluster.data import load_dataset


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("20m", 1200), ("1.5h", 5400), ("1200", 1200), (" 2 min ", 120), (".5h", 1800)],
)
def test_durations_are_read_in_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "20 minutes", "0", "-5m", "0s", "", "1h30m", "m"])
def test_bad_durations_are_a_clear_error(text: str) -> None:
    with pytest.raises(ValueError, match="not a positive duration.*90s, 20m, 1.5h"):
        parse_duration(text)


def test_cli_refuses_a_bad_budget_and_a_budget_with_epochs(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["fit", "--data", "digits", "--clusters", "10", "--time-budget", "soon",
                 "--out", str(out)]) == 2  # fmt: skip
    assert "time budget 'soon' is not a positive duration" in capsys.readouterr().err
    assert main(["fit", "--data", "digits", "--clusters", "10", "--time-budget", "20m",
                 "--epochs", "5", "--out", str(out)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "run.time_budget (--time-budget) and features.epochs (--epochs)" in err
    assert not out.exists()


def test_explicit_epochs_win_over_a_budget_that_came_from_a_preset(tmp_path) -> None:
    from_preset = Config().updated({"run": {"time_budget": 1200.0}})
    assert settle_explicit_epochs(from_preset, [{}]).run.time_budget == 1200.0
    given = settle_explicit_epochs(from_preset, [{"features": {"epochs": 7}}])
    assert given.run.time_budget is None
    settings = tmp_path / "settings.yaml"
    settings.write_text("features:\n  epochs: 7\n")
    with pytest.raises(ValueError, match="both decide the stage-1 epochs"):
        build_config(10, config=settings, overrides={"run": {"time_budget": 60.0}})
    assert build_config(10, overrides={"run": {"time_budget": 60.0}}).run.time_budget == 60.0


def _measured(**changes: float) -> Measured:
    values = {
        "step_seconds": 0.2,
        "steps_per_epoch": 78,
        "epoch_overhead_seconds": 0.4,
        "pass_seconds": 5.0,
        "head_epoch_seconds": 1.0,
        "spent_seconds": 20.0,
        "images": 10_000,
        "clusters": 10,
    }
    return Measured(**{**values, **changes})


@pytest.mark.parametrize("budget", [120.0, 600.0, 1200.0, 3600.0])
def test_the_plan_fills_the_budget_without_passing_it(budget: float) -> None:
    config = Config()  # 300 stage-1 epochs at most, 100 stage-3 epochs
    measured = _measured()
    plan = plan_epochs(config, measured, budget)
    total = measured.spent_seconds + plan.stage1_seconds + plan.later_seconds
    one_more = total + measured.epoch_seconds
    planned = PLANNED_SHARE * budget  # a margin for what the timed steps miss
    assert 1 <= plan.features_epochs <= 300
    assert plan.clustering_epochs >= 10
    if plan.features_epochs > 1:
        assert total <= planned
    if plan.features_epochs < 300:
        assert one_more > planned
    assert plan.features_warmup_epochs < plan.features_epochs
    assert plan.later_seconds == later_seconds(config, measured, plan.clustering_epochs)


def test_stage_three_is_cut_to_half_the_budget_but_not_below_its_floor() -> None:
    config = Config()
    measured = _measured(head_epoch_seconds=10.0)  # 100 stage-3 epochs: over 1,000 s
    assert plan_epochs(config, measured, 20_000).clustering_epochs == 100
    cut = plan_epochs(config, measured, 1200)
    assert 10 <= cut.clustering_epochs < 100
    assert cut.later_seconds <= 0.5 * (PLANNED_SHARE * 1200 - measured.spent_seconds)
    assert plan_epochs(config, measured, 100).clustering_epochs == 10


def test_the_budget_never_goes_past_the_configured_epochs() -> None:
    config = Config().updated({"features": {"epochs": 30, "warmup_epochs": 2}})
    plan = plan_epochs(config, _measured(), 10 * 3600)
    assert plan.features_epochs == 30 and plan.features_warmup_epochs == 2
    short = plan_epochs(config, _measured(), 60)
    assert short.features_epochs == 1 and short.features_warmup_epochs == 0


def test_run_eta_adds_the_later_stages_to_the_remaining_epochs() -> None:
    now = datetime(2026, 12, 2, 10, 0, 0)
    left, end = run_eta(2, 10, [30.0, 34.0], 120.0, now)
    assert left == 8 * 32.0 + 120.0
    assert end == datetime(2026, 12, 2, 10, 6, 16)
    assert run_eta(10, 10, [30.0], 0.0, now) == (0.0, now)


def test_a_run_with_a_budget_records_its_choice_and_equals_the_run_given_that_choice(
    tmp_path,
) -> None:
    images = load_dataset("digits", image_size=16, channels=1).subset(np.arange(400))
    settings = {
        "preset": "demo",
        "features__batch_size": 64,
        "mining__warmup_epochs": 1,
        "clustering__epochs": 3,
        "clustering__heads": 2,
        "clustering__feature_views": 1,
        "run__report": False,
        "run__progress": False,
    }
    budgeted = SMCluster(10, out=tmp_path / "budget", run__time_budget=15.0, **settings).fit(images)
    folder = tmp_path / "budget"
    budget = json.loads((folder / "progress.json").read_text())["budget"]
    saved = yaml.safe_load((folder / "config.yaml").read_text())
    epochs = budget["features_epochs"]
    assert 1 <= epochs <= 40  # the demo preset's epochs are the ceiling
    assert saved["features"]["epochs"] == epochs
    assert saved["features"]["warmup_epochs"] == budget["features_warmup_epochs"] < epochs
    assert budget["step_seconds"] > 0 and budget["steps_per_epoch"] == 400 // 64
    rows = [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]
    assert sum(r["stage"] == "features" for r in rows) == epochs
    direct = SMCluster(
        10,
        out=tmp_path / "direct",
        **{
            **settings,
            "features__epochs": epochs,
            "features__warmup_epochs": budget["features_warmup_epochs"],
            "clustering__epochs": budget["clustering_epochs"],
        },
    ).fit(images)
    np.testing.assert_array_equal(budgeted.probabilities_, direct.probabilities_)


def test_the_plan_counts_the_longer_stage_three_of_the_best_method() -> None:
    best = Config().updated(method("best"))  # at least 1,600 stage-3 steps
    measured = _measured(images=4000, clusters=200)  # 7 steps an epoch: 60 epochs become 229
    plain = best.updated({"clustering": {"min_steps": 0}})
    extra = later_seconds(best, measured, 60) - later_seconds(plain, measured, 60)
    assert extra == pytest.approx((229 - 60) * measured.head_epoch_seconds)
    plan = plan_epochs(best, measured, 1200)
    assert plan.later_seconds == later_seconds(best, measured, plan.clustering_epochs)
    total = measured.spent_seconds + plan.stage1_seconds + plan.later_seconds
    assert total <= PLANNED_SHARE * 1200
