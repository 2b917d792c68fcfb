"""Memory estimate, available memory and the check that names what to change."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from smcluster.autoconfig import AutoChoice
from smcluster.config import Config
from smcluster.data import from_arrays
from smcluster.memory import (
    LIMIT_ENV,
    available_memory,
    check_memory,
    estimate_memory,
    fit_batch_to_memory,
    format_bytes,
    image_model_terms,
    peak_memory,
)
from smcluster.pipeline import check_image_memory


@pytest.mark.parametrize("index", ["exact", "ivf", "hnsw"])
def test_estimate_grows_linearly_in_n(index: str) -> None:
    def total(n: int) -> int:
        return sum(t.nbytes for t in estimate_memory(n, 384, 20, 1000, heads=2, index=index))

    per_image = [(total(2 * n) - total(n)) / n for n in (10_000, 100_000, 1_000_000)]
    # Linear, less where IVF's training sample and centroids grow as sqrt(N).
    assert max(per_image) / min(per_image) < 1.25
    assert per_image[0] >= per_image[1] >= per_image[2]
    # The probabilities (N x C, memory-mapped) and the N x D index dominate at 10^6 x 384.
    assert per_image[-1] == pytest.approx(4 * 1000 + 2 * 4 * 384 + 20 * 8 + 21 * 12, rel=0.2)


def test_check_memory_names_the_biggest_term_and_its_setting() -> None:
    terms = estimate_memory(
        1_000_000, 384, 20, 1000, heads=2, embeddings_mapped=False, probabilities_in_memory=True
    )
    stage, need = check_memory(terms, available=64 << 30)
    assert stage == "outputs" and need > 4 << 30
    with pytest.raises(ValueError, match=r"probabilities \(N x C .* change write probabilities"):
        check_memory(terms, available=2 << 30)
    # Memory-mapped terms do not count against the check.
    assert peak_memory(terms)[1] == need
    mapped_peak = peak_memory(estimate_memory(1_000_000, 384, 20, 1000, heads=2))
    assert (
        mapped_peak[1]
        > peak_memory(estimate_memory(1_000_000, 384, 20, 1000, heads=2), reclaimable=False)[1]
    )
    mapped = estimate_memory(1_000_000, 384, 20, 1000, heads=2)
    stage, need = check_memory(mapped, available=3 << 30)
    assert stage == "neighbours" and need < 3 << 30
    with pytest.raises(ValueError, match=r"kNN index .* change mining.index"):
        check_memory(mapped, available=1 << 30)
    big_heads = estimate_memory(10_000, 64, 20, 10_000, heads=50, batch_size=1024)
    with pytest.raises(ValueError, match=r"head training batch .* clustering.batch_size"):
        check_memory(big_heads, available=2 << 30)
    assert check_memory(big_heads, available=0)[1] > 2 << 30  # unknown memory passes


def test_available_memory_takes_the_smaller_of_meminfo_and_cgroup(tmp_path: Path) -> None:
    proc, cgroup = tmp_path / "proc", tmp_path / "cg"
    proc.mkdir()
    cgroup.mkdir()
    (proc / "meminfo").write_text("MemTotal: 9000000 kB\nMemAvailable:    8000000 kB\n")
    assert available_memory(proc, cgroup) == 8000000 * 1024
    (cgroup / "memory.max").write_text("max\n")
    assert available_memory(proc, cgroup) == 8000000 * 1024
    (cgroup / "memory.max").write_text(f"{3 << 30}\n")
    (cgroup / "memory.current").write_text(f"{1 << 30}\n")
    assert available_memory(proc, cgroup) == 2 << 30
    (cgroup / "memory.max").unlink()
    (cgroup / "memory").mkdir()
    (cgroup / "memory" / "memory.limit_in_bytes").write_text(f"{5 << 30}\n")
    assert available_memory(proc, cgroup) == 5 << 30
    assert available_memory() > 0


def test_format_bytes() -> None:
    assert format_bytes(3 << 30) == "3.0 GB" and format_bytes(1536) == "1.5 kB"
    assert format_bytes(12) == "12 B"


def test_available_memory_honours_process_limits_and_the_override(tmp_path, monkeypatch) -> None:
    proc, cgroup = tmp_path / "proc", tmp_path / "cg"
    (proc / "self").mkdir(parents=True)
    cgroup.mkdir()
    (proc / "meminfo").write_text("MemAvailable:    8000000 kB\n")
    (proc / "self" / "status").write_text("VmSize:\t 2097152 kB\nVmData:\t 1048576 kB\n")
    assert available_memory(proc, cgroup, rlimits={}) == 8000000 * 1024
    # RLIMIT_AS counts against the virtual size, RLIMIT_DATA against the data size.
    assert available_memory(proc, cgroup, rlimits={"VmSize": 6 << 30}) == 4 << 30
    assert available_memory(proc, cgroup, rlimits={"VmData": 2 << 30}) == 1 << 30
    monkeypatch.setenv(LIMIT_ENV, "512M")
    assert available_memory(proc, cgroup, rlimits={}) == 512 << 20
    monkeypatch.setenv(LIMIT_ENV, "lots")
    with pytest.raises(ValueError, match=f"{LIMIT_ENV}='lots' is not a size"):
        available_memory(proc, cgroup)


def _config(**features) -> Config:
    settings = {"backbone": "resnet18", "epochs": 1, "batch_size": 256, **features}
    return Config().updated({"features": settings, "data": {"image_size": 32}})


def test_image_terms_grow_with_the_batch_and_the_backbone() -> None:
    def stage1(config: Config, size: int = 32) -> int:
        return peak_memory(image_model_terms(config, 5000, 3, size), reclaimable=False)[1]

    small = stage1(_config(batch_size=64))
    assert stage1(_config(batch_size=128)) > small
    assert stage1(_config(batch_size=64), size=64) > 2 * small - (1 << 30)
    assert stage1(_config(batch_size=64, backbone="small_cnn", width=16)) < small
    named = {t.name for t in image_model_terms(_config(), 5000, 3, 32)}
    assert any(n.startswith("activations") for n in named)
    assert any(n.startswith("queue") for n in named)
    assert any(n.startswith("BatchNorm groups") for n in named)


def test_the_guard_lowers_a_batch_auto_chose_and_refuses_one_the_user_set() -> None:
    config = _config()
    need = peak_memory(image_model_terms(config, 5000, 3, 32), reclaimable=False)[1]
    fits_64 = peak_memory(
        image_model_terms(_config(batch_size=64), 5000, 3, 32), reclaimable=False
    )[1]
    assert fits_64 < need
    lowered, line = fit_batch_to_memory(config, 5000, 3, 32, adjustable=True, available=fits_64)
    assert lowered.features.batch_size == 64 and "features.batch_size 256 -> 64" in line
    with pytest.raises(ValueError, match=r"features stage.*change features.batch_size") as error:
        fit_batch_to_memory(config, 5000, 3, 32, adjustable=False, available=fits_64)
    assert f"{format_bytes(need)}" in str(error.value)
    same, _ = fit_batch_to_memory(config, 5000, 3, 32, adjustable=False, available=need)
    assert same == config


def test_the_pipeline_guard_lowers_only_an_auto_batch(monkeypatch) -> None:
    images = from_arrays(np.zeros((300, 32, 32, 3), dtype=np.uint8))
    config = _config(batch_size=128)
    need = peak_memory(image_model_terms(_config(batch_size=32), 300, 3, 32), reclaimable=False)
    monkeypatch.setenv(LIMIT_ENV, str(need[1]))
    auto = AutoChoice({"features": {"batch_size": 128}}, ("auto: ...",))
    lowered, line = check_image_memory(config, images, torch.device("cpu"), auto)
    assert lowered.features.batch_size == 32 and "auto lowered" in line
    with pytest.raises(ValueError, match="change features.batch_size"):
        check_image_memory(config, images, torch.device("cpu"), None)


def test_an_oversized_run_under_a_memory_limit_gets_the_error_not_a_kill(tmp_path) -> None:
    """ResNet-50 at 224 px, batch 512, under RLIMIT_AS: the guard's message and exit 2."""
    images = np.random.default_rng(0).integers(0, 255, (40, 224, 224, 3), dtype=np.uint8)
    np.savez(tmp_path / "big.npz", images=images)
    limit = 6 << 30  # enough to import torch, far from the hundreds of GB this run needs

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))

    flags = "--clusters 2 --backbone resnet50 --image-size 224 --batch-size 512"
    command = [sys.executable, "-m", "smcluster.cli", "fit", "--data", str(tmp_path / "big.npz")]
    command += [*flags.split(), "--out", str(tmp_path / "run"), "--quiet", "--no-report"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(LIMIT_ENV, None)
    done = subprocess.run(command, preexec_fn=limited, capture_output=True, text=True, env=env)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("smcluster: error: this run needs about")
    assert "features stage" in last and "change features.batch_size" in last
    assert not (tmp_path / "run").exists()


def test_the_stage_three_terms_use_the_batch_the_schedule_trains_with() -> None:
    def head_batch(config: Config) -> int:
        terms = image_model_terms(config.updated({"n_clusters": 2000}), 5000, 3, 32)
        return next(t.nbytes for t in terms if t.name.startswith("head training batch"))

    scan = _config().updated({"clustering": {"batch_size": 512}})
    best = scan.updated({"clustering": {"batch_per_cluster": 2.0}})  # a batch of 4,000
    assert head_batch(best) > 7 * head_batch(scan)
