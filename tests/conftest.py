"""Shared test fixtures.

The real image sets live in a `shared/data` folder beside the repository (a developer's and
CI's checkout has one; a user's clone does not). Tests that need them ask for `shared_data` and
are skipped, with the reason, when it is missing. `SMCLUSTER_SHARED_DATA` points elsewhere.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import event

from smcluster.api import SMCluster

REPO = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    env = os.environ.get("SMCLUSTER_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of the shared labelled `.npz` sets; skips the test when it is absent."""
    folder = _shared_data_dir()
    if not (folder / "mnist.npz").exists():
        pytest.skip(
            f"shared data sets not found at {folder} (set SMCLUSTER_SHARED_DATA to the folder "
            "holding mnist.npz etc. to run this test)"
        )
    return folder


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> SMCluster:
    """The demo preset on the embedded digits, exactly as `make demo` runs it."""
    out = tmp_path_factory.mktemp("demo") / "run"
    return SMCluster(10, preset="demo", out=out, run__report=False, run__progress=False).fit(
        "digits"
    )


@pytest.fixture(scope="session")
def brief_run(tmp_path_factory) -> SMCluster:
    """The demo preset's run with an untrained feature model and one epoch of stages 2 and 3
    (seconds): for tests that need a finished run of 16 x 16 grey digits, not a good one."""
    out = tmp_path_factory.mktemp("brief") / "run"
    return SMCluster(
        10,
        preset="demo",
        out=out,
        features__epochs=0,
        mining__warmup_epochs=1,
        clustering__epochs=1,
        clustering__feature_views=1,
        run__report=False,
        run__progress=False,
    ).fit("digits")


def _clean_outcome(load: Callable[[], object]) -> None:
    """Any input gives a result or a ValueError/FileNotFoundError with a message; any other
    exception fails the test (the fuzz tests' check)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load()
        event("loaded")
    except (ValueError, FileNotFoundError) as error:
        event(type(error).__name__)
        assert str(error).strip()


@pytest.fixture(scope="session")
def clean_outcome() -> Callable[[Callable[[], object]], None]:
    """The fuzz tests' check, shared (session-scoped, so hypothesis may use it)."""
    return _clean_outcome
