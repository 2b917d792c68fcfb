"""Memory estimate, available memory and the check that names what to change."""

from __future__ import annotations

from pathlib import Path

import pytest

from smcluster.memory import (
    available_memory,
    check_memory,
    estimate_memory,
    format_bytes,
    peak_memory,
)


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
