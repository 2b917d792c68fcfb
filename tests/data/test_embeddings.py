"""Precomputed embeddings: .npy (memory-mapped) and .npz readers and their checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from smcluster.data.embeddings import load_embeddings


def _vectors(n: int = 30, d: int = 5) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)


def test_npy_round_trip_is_memory_mapped_with_default_ids(tmp_path: Path) -> None:
    x = _vectors()
    np.save(tmp_path / "feats.npy", x)
    emb = load_embeddings(tmp_path / "feats.npy")
    assert emb.memory_mapped and isinstance(emb.vectors, np.memmap)
    np.testing.assert_array_equal(emb.vectors, x)
    assert emb.ids.tolist() == [str(i) for i in range(30)]
    assert emb.labels is None and emb.name == "feats" and len(emb) == 30
    loaded = load_embeddings(tmp_path / "feats.npy", mmap=False)
    assert not loaded.memory_mapped
    np.testing.assert_array_equal(loaded.vectors, x)


def test_npz_round_trip_with_ids_and_labels(tmp_path: Path) -> None:
    x = _vectors().astype(np.float64)
    ids = np.array([f"img-{i:03d}" for i in range(30)])
    labels = np.arange(30) % 3
    np.savez_compressed(tmp_path / "e.npz", embeddings=x, ids=ids, labels=labels)
    emb = load_embeddings(tmp_path / "e.npz")
    assert emb.vectors.dtype == np.float32 and not emb.memory_mapped
    np.testing.assert_allclose(emb.vectors, x, rtol=1e-6)
    assert emb.ids.tolist() == ids.tolist()
    np.testing.assert_array_equal(emb.labels, labels)
    np.savez(tmp_path / "n.npz", embeddings=x, ids=np.arange(100, 130))
    assert load_embeddings(tmp_path / "n.npz").ids[0] == "100"


def _bad(tmp_path: Path, name: str, **arrays: np.ndarray) -> Path:
    path = tmp_path / name
    if name.endswith(".npy"):
        np.save(path, arrays["embeddings"])
    else:
        np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("name", "arrays", "message"),
    [
        ("a.npy", {"embeddings": np.zeros((4, 3, 2), np.float32)}, "2-D array"),
        ("b.npy", {"embeddings": np.zeros((4, 0), np.float32)}, "D = 0"),
        ("c.npy", {"embeddings": np.zeros((1, 3), np.float32)}, "at least 2 rows"),
        ("d.npy", {"embeddings": np.array([["a", "b"], ["c", "d"]])}, "numeric"),
        ("e.npz", {"vectors": np.zeros((4, 3))}, r"no 'embeddings' array \(arrays found: vec"),
        ("f.npz", {"embeddings": np.zeros((4, 3)), "ids": np.arange(3)}, "3 ids for 4"),
        ("g.npz", {"embeddings": np.zeros((4, 3)), "labels": np.arange(5)}, "5 labels for 4"),
        ("h.npz", {"embeddings": np.zeros((4, 3)), "labels": -np.arange(4)}, "non-negative"),
        (
            "i.npz",
            {"embeddings": np.zeros((4, 3)), "ids": np.array(["a", "b", "a", "c"])},
            "'a' appears 2 times",
        ),
    ],
)
def test_bad_files_are_named_with_the_problem(
    tmp_path: Path, name: str, arrays: dict[str, np.ndarray], message: str
) -> None:
    path = _bad(tmp_path, name, **arrays)
    with pytest.raises(ValueError, match=message) as error:
        load_embeddings(path)
    assert str(path) in str(error.value)


def test_non_finite_values_are_found_in_a_late_chunk(tmp_path: Path) -> None:
    x = np.zeros((70_000, 2), np.float32)
    x[69_000, 1] = np.inf
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(ValueError, match="first at row 69000"):
        load_embeddings(tmp_path / "x.npy")
    x[69_000, 1] = np.nan
    np.savez(tmp_path / "x.npz", embeddings=x)
    with pytest.raises(ValueError, match="NaN or infinite"):
        load_embeddings(tmp_path / "x.npz")


def test_truncated_and_missing_files(tmp_path: Path) -> None:
    np.save(tmp_path / "t.npy", _vectors(100, 8))
    data = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="t.npy is not a readable"):
        load_embeddings(tmp_path / "t.npy")
    (tmp_path / "z.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="z.npz"):
        load_embeddings(tmp_path / "z.npz")
    with pytest.raises(FileNotFoundError, match="no embeddings file"):
        load_embeddings(tmp_path / "absent.npy")
