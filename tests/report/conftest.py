"""One small real run for every report test: the digits, briefly trained through the API.

Training is cut to an epoch or two on 8-pixel images (about half a minute on 2 cores); the
report does not care how good the clusters are, only that every run-folder file is real.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from smcluster.api import SMCluster


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run folder (digits, 10 clusters) made by ``SMCluster.fit``."""
    out = tmp_path_factory.mktemp("report") / "run"
    SMCluster(
        10,
        preset="demo",
        out=out,
        data__image_size=8,
        features__epochs=1,
        mining__warmup_epochs=1,
        clustering__epochs=2,
        clustering__feature_views=1,
        run__report=False,
        run__progress=False,
    ).fit("digits")
    return out


@pytest.fixture(scope="session")
def demo_report(demo_run: Path) -> Path:
    """``index.html`` of the demo run, written once (the embedding on a 1,000-image sample)."""
    from smcluster.report import write_report

    return write_report(demo_run, embedding_sample=1000)


@pytest.fixture
def run_copy(demo_run: Path, tmp_path: Path) -> Path:
    """A fresh copy of the demo run without its report, for tests that change its files."""
    to = tmp_path / "run"
    shutil.copytree(demo_run, to, ignore=shutil.ignore_patterns("report", "checkpoints"))
    return to
