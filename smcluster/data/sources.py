"""``load_dataset``: one string names where the images come from.

Accepted forms, resolved through two small registries (``NAMED_SOURCES``, ``PATH_SOURCES``):
- ``"digits"``: the embedded default (scikit-learn's handwritten digits, no download);
- a benchmark name from ``benchmarks.BENCHMARKS`` (torchvision; train + test together);
- a path to an ``.npz`` file (fields ``images``, optional ``labels`` and ``class_names``);
- a path to a folder of images (class sub-folders, or flat and unlabelled).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from smcluster.data.benchmarks import BENCHMARKS, load_benchmark
from smcluster.data.digits import load_digits_set
from smcluster.data.folders import load_folder
from smcluster.data.imageset import ImageSet, check_image_size
from smcluster.data.npz import load_npz


@dataclass(frozen=True)
class LoadOptions:
    """The keyword arguments of ``load_dataset``, handed to whichever loader the source picks."""

    image_size: int | None = None
    channels: int | None = None
    root: str | None = None
    download: bool = False
    lazy: bool | None = None


def _digits(options: LoadOptions) -> ImageSet:
    return load_digits_set(image_size=options.image_size, channels=options.channels)


def _benchmark(name: str) -> Callable[[LoadOptions], ImageSet]:
    def load(options: LoadOptions) -> ImageSet:
        return load_benchmark(
            name,
            root=options.root,
            download=options.download,
            image_size=options.image_size,
            channels=options.channels,
        )

    return load


def _npz(path: Path, options: LoadOptions) -> ImageSet:
    return load_npz(path, image_size=options.image_size, channels=options.channels)


def _folder(path: Path, options: LoadOptions) -> ImageSet:
    return load_folder(
        path, image_size=options.image_size, channels=options.channels, lazy=options.lazy
    )


NAMED_SOURCES: dict[str, Callable[[LoadOptions], ImageSet]] = {
    "digits": _digits,
    **{name: _benchmark(name) for name in BENCHMARKS},
}
"""Source name -> loader."""

PATH_SOURCES: dict[str, Callable[[Path, LoadOptions], ImageSet]] = {
    ".npz": _npz,
    "folder": _folder,
}
"""Path kind (a file suffix, or "folder" for a directory) -> loader."""

LAZY_SOURCES = frozenset({"folder"})
"""Path kinds that can be read lazily from disk (``lazy=True``)."""


def load_dataset(
    source: str,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    root: str | None = None,
    download: bool = False,
    lazy: bool | None = None,
) -> ImageSet:
    """Load the images named by ``source`` (see the module docstring for the accepted forms).

    ``image_size``: side of the square images the networks see; None keeps the native size
    (an error when images differ in size or are not square). ``channels``: 1 or 3; None keeps
    the native count (folders: 3). ``root`` and ``download`` concern benchmark names only:
    where the local copy lives (default ``$SMCLUSTER_DATA`` or ``~/.cache/smcluster``) and
    whether a missing copy may be downloaded. ``lazy`` concerns folders only: True reads files
    on demand, False decodes them all now, None decides by size (``folders.LAZY_MIN_FILES``).
    """
    if image_size is not None:
        image_size = check_image_size(image_size, "load_dataset")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None, got {channels!r}")
    options = LoadOptions(image_size, channels, root, download, lazy)
    name = str(source).strip()
    if name.lower() in NAMED_SOURCES:
        if lazy:
            raise ValueError(f"{name!r} is held in memory; lazy=True applies to image folders")
        return NAMED_SOURCES[name.lower()](options)
    path = Path(name).expanduser()
    kind = "folder" if path.is_dir() else path.suffix.lower()
    if kind in PATH_SOURCES:
        if lazy and kind not in LAZY_SOURCES:
            raise ValueError(f"{path} is loaded into memory; lazy=True applies to image folders")
        return PATH_SOURCES[kind](path, options)
    raise ValueError(_unknown_source_message(name, path))


def _unknown_source_message(source: str, path: Path) -> str:
    names = ", ".join(NAMED_SOURCES)
    close = difflib.get_close_matches(source.lower(), list(NAMED_SOURCES), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    if path.exists():
        what = f"{source!r} is a file, but not an .npz file."
    elif os.sep in source or (os.altsep and os.altsep in source) or path.suffix:
        what = f"{source!r} does not exist."
    else:
        what = f"unknown data source {source!r}."
    return (
        f"{what}{hint} A data source is one of: a name ({names}); a path to an .npz file "
        "with an 'images' field; or a path to a folder of images (class sub-folders or flat)."
    )
