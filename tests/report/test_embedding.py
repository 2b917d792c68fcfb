"""The embedding's cache: reused when current, made again when stale or unreadable."""

from __future__ import annotations

import numpy as np
import pytest

from smcluster.report.embedding import embed


@pytest.fixture
def blobs() -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=6.0, size=(4, 16))
    return (centres.repeat(60, axis=0) + rng.normal(size=(240, 16))).astype(np.float32)


@pytest.mark.parametrize("keep", [0.0, 0.3, 0.9])
def test_truncated_cache_is_made_again(blobs, tmp_path, keep) -> None:
    cache = tmp_path / "report" / "embedding.npz"
    first = embed(blobs, cache=cache, stamp="a")
    assert first.method == "PaCMAP" and cache.exists()
    cache.write_bytes(cache.read_bytes()[: int(cache.stat().st_size * keep)])
    again = embed(blobs, cache=cache, stamp="a")
    assert again.method == "PaCMAP" and np.array_equal(again.indices, first.indices)
    assert again.xy.shape == (240, 2) and np.isfinite(again.xy).all()
    cached = embed(blobs, cache=cache, stamp="a")  # the rewritten cache is whole
    assert np.array_equal(cached.xy, again.xy)
    assert not list(cache.parent.glob(".*.tmp"))


def test_cache_is_reused_only_for_the_same_features(blobs, tmp_path) -> None:
    cache = tmp_path / "embedding.npz"
    first = embed(blobs, cache=cache, stamp="a")
    tampered = np.load(cache)
    np.savez(cache, **{**tampered, "xy": np.zeros_like(first.xy)})
    assert not embed(blobs, cache=cache, stamp="a").xy.any()
    assert embed(blobs, cache=cache, stamp="b").xy.any()
