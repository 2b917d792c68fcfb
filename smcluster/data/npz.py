"""ImageSets from ``.npz`` files: ``images`` (required), ``labels`` and ``class_names`` (optional).

Files are read with ``allow_pickle=False``: nothing in a data file can run code. Store class
names as a unicode string array (``np.array(names, dtype=str)``), not as Python objects.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from smcluster.data.arrays import from_arrays
from smcluster.data.imageset import TensorImageSet

IMAGES, LABELS, CLASS_NAMES = "images", "labels", "class_names"

BROKEN_ARCHIVE = (OSError, EOFError, zipfile.BadZipFile, zlib.error)
"""What numpy and zipfile raise on a damaged or truncated archive."""


def load_npz(
    path: str | Path, *, image_size: int | None = None, channels: int | None = None
) -> TensorImageSet:
    """Load an ``.npz`` image set; other fields in the file are ignored.

    ``images``: uint8, grey ``N x H x W`` (or ``N x H x W x 1``) or RGB ``N x H x W x 3``.
    ``labels``: integer ``(N,)``, non-negative. ``class_names``: strings, index = label.
    Ids are ``str(index)`` in file order.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no .npz file at {path}")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, *BROKEN_ARCHIVE) as error:
        raise ValueError(f"{path} is not a readable .npz file: {error}") from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} holds a single array (.npy), not an .npz archive of fields")
    with archive:
        fields = sorted(archive.files)
        if IMAGES not in fields:
            raise ValueError(
                f"{path} has no '{IMAGES}' field (fields found: {', '.join(fields) or 'none'}); "
                f"an image .npz needs '{IMAGES}' and may have '{LABELS}' and '{CLASS_NAMES}'"
            )
        images = read_field(archive, IMAGES, path)
        labels = read_field(archive, LABELS, path) if LABELS in fields else None
        class_names = read_field(archive, CLASS_NAMES, path) if CLASS_NAMES in fields else None
    if class_names is not None and class_names.dtype.kind not in "US":
        raise ValueError(
            f"{path}: '{CLASS_NAMES}' must be an array of strings, got dtype {class_names.dtype}"
        )
    if class_names is not None and class_names.dtype.kind == "S":
        class_names = np.char.decode(class_names, "utf-8")
    return from_arrays(
        images,
        labels,
        class_names,
        name=path.stem,
        image_size=image_size,
        channels=channels,
    )


def npz_field_shape(path: str | Path, field: str) -> tuple[int, ...] | None:
    """The shape of one array of an ``.npz`` file, read from its header without loading the
    data; None when the header does not tell (the loader then says why)."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open(f"{field}.npy") as handle:
            version = np.lib.format.read_magic(handle)
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            return tuple(read(handle)[0])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def npz_image_shape(path: str | Path) -> tuple[int, int, int] | None:
    """``(width, height, channels)`` of the images in an ``.npz`` file, from the array's
    header (``npz_field_shape``); None when the header does not tell."""
    shape = npz_field_shape(path, IMAGES)
    if shape is None:
        return None
    if len(shape) == 3:
        return shape[2], shape[1], 1
    return (shape[2], shape[1], shape[3]) if len(shape) == 4 else None


def read_field(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    """One field of an open archive; a ValueError naming the file and field when it holds
    Python objects or cannot be read."""
    try:
        return archive[key]
    except (ValueError, *BROKEN_ARCHIVE) as error:
        if "allow_pickle" in str(error):
            raise ValueError(
                f"{path}: field '{key}' holds Python objects, which are not loaded (allow_pickle"
                "=False); save it as a plain numeric or string array"
            ) from error
        raise ValueError(
            f"{path}: field '{key}' cannot be read ({error}); the file is damaged or "
            "truncated: write it again"
        ) from error
