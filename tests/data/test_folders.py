"""ImageSets from image folders and path lists (smcluster.data.folders)."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from smcluster.data import (
    FileImageSet,
    TensorImageSet,
    UnreadableImageWarning,
    images_from_paths,
    load_dataset,
    load_npz,
)


def _save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array, mode) if mode else Image.fromarray(array)
    image.save(path)
    return path


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    """Two classes, mixed sizes and modes, one corrupt image, one non-image file."""
    rng = np.random.default_rng(1)
    root = tmp_path / "pets"
    _save(root / "cat" / "rgb.png", rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
    _save(root / "cat" / "grey.JPG", rng.integers(0, 256, (30, 30), dtype=np.uint8))
    _save(root / "dog" / "alpha.png", rng.integers(0, 256, (20, 60, 4), dtype=np.uint8), "RGBA")
    palette = Image.fromarray(rng.integers(0, 256, (33, 33, 3), dtype=np.uint8)).convert("P")
    (root / "dog" / "deeper").mkdir(parents=True)
    palette.save(root / "dog" / "deeper" / "palette.gif")
    (root / "dog" / "corrupt.png").write_bytes(rng.bytes(500))
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    _save(root / ".hidden" / "skip.png", np.zeros((4, 4), np.uint8))
    (root / "empty").mkdir()
    return root


def test_class_folders_load_with_one_warning_for_the_corrupt_file(class_folder: Path) -> None:
    with pytest.warns(UnreadableImageWarning, match=r"skipped 1 of 5 .*corrupt\.png") as record:
        data = load_dataset(str(class_folder), image_size=16)
    assert len(record) == 1
    assert isinstance(data, TensorImageSet) and data.name == "pets"
    assert len(data) == 4 and data.channels == 3 and data.image_size == 16
    assert data.class_names == ["cat", "dog"] and data.labels.tolist() == [0, 0, 1, 1]
    names = [Path(i).relative_to(class_folder).as_posix() for i in data.ids]
    assert names == ["cat/grey.JPG", "cat/rgb.png", "dog/alpha.png", "dog/deeper/palette.gif"]
    grey, _ = data[0]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[0], grey[2])


def test_lazy_and_in_memory_give_the_same_tensors(class_folder: Path) -> None:
    with pytest.warns(UnreadableImageWarning):
        memory = load_dataset(str(class_folder), image_size=12, channels=1, lazy=False)
    with pytest.warns(UnreadableImageWarning):
        lazy = load_dataset(str(class_folder), image_size=12, channels=1, lazy=True)
    assert isinstance(lazy, FileImageSet) and lazy.as_tensor() is None
    assert lazy.ids == memory.ids and lazy.labels.tolist() == memory.labels.tolist()
    for i in range(len(memory)):
        assert lazy[i][0].shape == (1, 12, 12)
        assert torch.equal(lazy[i][0], memory[i][0])
    assert torch.equal(lazy.subset([3, 1])[0][0], memory[3][0])


def test_mixed_sizes_need_image_size(class_folder: Path) -> None:
    with pytest.warns(UnreadableImageWarning), pytest.raises(ValueError, match="image_size"):
        load_dataset(str(class_folder))


def test_flat_folder_is_unlabelled_and_keeps_native_square_size(tmp_path: Path) -> None:
    for k in range(3):
        _save(tmp_path / f"img{k}.bmp", np.full((9, 9), 50 * k, np.uint8))
    (tmp_path / "README.md").write_text("notes")
    data = load_dataset(str(tmp_path), channels=1)
    assert data.labels is None and data.class_names is None and data.num_classes is None
    assert data.image_size == 9 and len(data) == 3
    assert [int(data[k][0].max()) for k in range(3)] == [0, 50, 100]


def test_folder_of_npz_images_matches_the_npz_loader(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "cifar10_lossless_subset.npz"
    with np.load(source) as raw:
        images = raw["images"][:12]
    for k, image in enumerate(images):
        _save(tmp_path / "set" / f"{k:02d}.png", image)
    folder = load_dataset(str(tmp_path / "set"))
    assert torch.equal(folder.as_tensor(), torch.from_numpy(images).permute(0, 3, 1, 2))
    resized = load_dataset(str(tmp_path / "set"), image_size=20, channels=1).as_tensor()
    expected = load_npz(source, image_size=20, channels=1).as_tensor()[:12]
    assert torch.equal(resized, expected)


def test_bad_folders(tmp_path: Path) -> None:
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="no image files"):
        load_dataset(str(tmp_path / "nothing"))
    mixed = tmp_path / "mixed"
    _save(mixed / "loose.png", np.zeros((4, 4), np.uint8))
    _save(mixed / "class" / "a.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="both class sub-folders"):
        load_dataset(str(mixed))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.jpg").write_bytes(b"garbage")
    with pytest.warns(UnreadableImageWarning), pytest.raises(ValueError, match="none of the 1"):
        load_dataset(str(broken), image_size=8)


def test_images_from_paths_skips_missing_files(tmp_path: Path) -> None:
    a = _save(tmp_path / "a.png", np.full((6, 8, 3), 200, np.uint8))
    b = _save(tmp_path / "b.webp", np.full((5, 5, 3), 10, np.uint8))
    with pytest.warns(UnreadableImageWarning, match="skipped 1 of 3"):
        data = images_from_paths([b, tmp_path / "missing.png", a], image_size=4, channels=3)
    assert data.ids == [str(b), str(a)] and data.labels is None
    assert data.as_tensor().shape == (2, 3, 4, 4)
    assert int(data[1][0].min()) == 200
    lazy = images_from_paths([a, b], image_size=4, channels=1, lazy=True)
    assert isinstance(lazy, FileImageSet) and lazy[0][0].shape == (1, 4, 4)
    with pytest.raises(ValueError, match="no image paths"):
        images_from_paths([], image_size=4, channels=3)


FUZZ = settings(max_examples=50, deadline=None, database=None, derandomize=True)
ENCODINGS = [
    ("L", "PNG"),
    ("RGB", "PNG"),
    ("RGBA", "PNG"),
    ("LA", "PNG"),
    ("I;16", "PNG"),
    ("P", "GIF"),
    ("1", "BMP"),
    ("L", "JPEG"),
    ("RGB", "JPEG"),
    ("RGB", "WEBP"),
    ("RGB", "TIFF"),
]


def _encode(size: tuple[int, int], encoding: tuple[str, str], seed: int) -> bytes:
    mode, file_format = encoding
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, file_format)
    return buffer.getvalue()


def _truncated(pair: tuple[bytes, float]) -> bytes:
    data, fraction = pair
    return data[: int(len(data) * fraction)]


VALID_IMAGE = st.builds(
    _encode,
    st.tuples(st.integers(1, 12), st.integers(1, 12)),
    st.sampled_from(ENCODINGS),
    st.integers(0, 9),
)
IMAGE_BYTES = st.one_of(
    st.binary(max_size=200),
    VALID_IMAGE,
    st.tuples(VALID_IMAGE, st.floats(0, 1)).map(_truncated),
)
FILES = st.lists(
    st.tuples(
        st.sampled_from(["", "a", "b/c", ".hidden"]),
        st.sampled_from([".png", ".jpg", ".gif", ".tif", ".webp", ".txt"]),
        IMAGE_BYTES,
    ),
    max_size=6,
)


def _write_files(root: Path, files: list[tuple[str, str, bytes]]) -> list[Path]:
    paths = []
    for i, (folder, suffix, content) in enumerate(files):
        path = root / folder / f"{i}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        paths.append(path)
    return paths


@FUZZ
@given(
    files=FILES,
    image_size=st.sampled_from([None, 4, 8]),
    channels=st.sampled_from([None, 1, 3]),
    lazy=st.sampled_from([None, False, True]),
)
def test_fuzz_image_folders(
    clean_outcome,
    files: list[tuple[str, str, bytes]],
    image_size: int | None,
    channels: int | None,
    lazy,
) -> None:
    def load_and_read() -> None:
        data = load_dataset(str(root), image_size=image_size, channels=channels, lazy=lazy)
        for i in range(len(data)):
            assert data[i][0].shape == (data.channels, data.image_size, data.image_size)

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "set"
        root.mkdir()
        _write_files(root, files)
        clean_outcome(load_and_read)


@FUZZ
@given(files=FILES, channels=st.sampled_from([1, 3]))
def test_fuzz_image_paths(
    clean_outcome, files: list[tuple[str, str, bytes]], channels: int
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        paths = _write_files(Path(folder), files)
        clean_outcome(lambda: images_from_paths(paths, image_size=8, channels=channels))
