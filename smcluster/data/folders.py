"""ImageSets from image files: a folder (class sub-folders or flat) or a list of paths.

Layout of a folder:
- class sub-folders: every image lives under a sub-folder (at any depth below it, so
  ``train/<wnid>/images/*.JPEG`` works); the label is the index of the sub-folder's name in
  the sorted list of sub-folders that hold images. Images directly in the top folder as well
  are refused (ambiguous).
- flat: images directly in the folder, no labels.
Names starting with "." are skipped; files with other extensions are ignored silently.

Every file's header is read first (in threads). Files that cannot be opened, and in memory
files that cannot be decoded, are skipped and reported in one ``UnreadableImageWarning``.
``image_size=None`` keeps the native size only when every image has the same square size;
otherwise it is a ValueError asking for ``image_size`` (Decision: no silent median size, so a
run's input size is always a visible choice). Default ``channels`` for files: 3.

Sets with more than ``LAZY_MIN_FILES`` files, or whose decoded pixels would exceed
``LAZY_MIN_BYTES``, become a lazy ``FileImageSet``; smaller ones are decoded once into a
``TensorImageSet``. Both decode with ``pixels.read_image``, so they hold the same pixels.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from smcluster.data.imageset import FileImageSet, ImageSet, TensorImageSet, check_image_size
from smcluster.data.pixels import IMAGE_EXTENSIONS, is_image_file, probe_image, read_image

LAZY_MIN_FILES = 20_000
LAZY_MIN_BYTES = 4 * 2**30
DEFAULT_CHANNELS = 3
_CHUNK = 256
_EXAMPLES = 3

T = TypeVar("T")


class UnreadableImageWarning(UserWarning):
    """Some image files could not be read and were left out of the set."""


def load_folder(
    folder: str | os.PathLike[str],
    *,
    image_size: int | None = None,
    channels: int | None = None,
    lazy: bool | None = None,
) -> ImageSet:
    """Load a folder of images (see the module docstring for layout and defaults).

    Ids are absolute file paths, so a run's report and export work from any working folder.
    ``lazy=None`` chooses by size.
    """
    root = os.path.abspath(os.fspath(folder))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"no folder at {root}")
    paths, labels, class_names = scan_folder(root)
    name = Path(root).resolve().name or "images"
    return _from_files(paths, labels, class_names, name, image_size, channels, lazy)


def images_from_paths(
    paths: Sequence[str | os.PathLike[str]],
    *,
    image_size: int,
    channels: int,
    lazy: bool | None = None,
    name: str = "images",
) -> ImageSet:
    """An unlabelled ImageSet of the given image files, in order (for ``smcluster predict``).

    Files that are missing or unreadable are skipped (one warning); ids are the paths.
    """
    files = [os.fspath(p) for p in paths]
    if not files:
        raise ValueError(f"{name}: no image paths given (the data set would be empty)")
    return _from_files(files, None, None, name, image_size, channels, lazy)


def scan_folder(root: str) -> tuple[list[str], np.ndarray | None, list[str] | None]:
    """Image paths in sorted order, with labels and class names for a class-folder layout."""
    entries = sorted(
        (e for e in os.scandir(root) if not e.name.startswith(".")), key=lambda e: e.name
    )
    top_images = [e.path for e in entries if e.is_file() and is_image_file(e.name)]
    classes = {e.name: _images_below(e.path) for e in entries if e.is_dir()}
    classes = {name: files for name, files in classes.items() if files}
    if not classes:
        if not top_images:
            raise ValueError(
                f"no image files in {root} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}, "
                "directly or in class sub-folders)"
            )
        return top_images, None, None
    if top_images:
        raise ValueError(
            f"{root} has both class sub-folders ({len(classes)}) and {len(top_images)} images "
            f"directly inside it (e.g. {top_images[0]}); move those images into a class "
            "sub-folder, or into a folder of their own to load them unlabelled"
        )
    class_names = sorted(classes)
    paths = [p for c in class_names for p in classes[c]]
    labels = np.concatenate(
        [np.full(len(classes[c]), k, dtype=np.int64) for k, c in enumerate(class_names)]
    )
    return paths, labels, class_names


def _images_below(folder: str) -> list[str]:
    found: list[str] = []
    for here, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(
            os.path.join(here, f)
            for f in sorted(files)
            if not f.startswith(".") and is_image_file(f)
        )
    return found


def _from_files(
    paths: list[str],
    labels: np.ndarray | None,
    class_names: list[str] | None,
    name: str,
    image_size: int | None,
    channels: int | None,
    lazy: bool | None,
) -> ImageSet:
    channels = DEFAULT_CHANNELS if channels is None else channels
    if channels not in (1, 3):
        raise ValueError(f"{name}: channels must be 1 or 3, got {channels!r}")
    if image_size is not None:
        image_size = check_image_size(image_size, name)
    total = len(paths)
    sizes = _parallel(probe_image, paths)
    keep = [i for i, (size, _) in enumerate(sizes) if size is not None]
    failures = [(paths[i], error) for i, (size, error) in enumerate(sizes) if size is None]
    result: ImageSet | None = None
    if keep:
        if image_size is None:
            try:
                image_size = _native_size([sizes[i][0] for i in keep], name)
            except ValueError:
                _warn_skipped(failures, total, name)
                raise
        nbytes = len(keep) * channels * image_size**2
        if lazy is None:
            lazy = len(keep) > LAZY_MIN_FILES or nbytes > LAZY_MIN_BYTES
        kept_labels = None if labels is None else labels[keep]
        kept_paths = [paths[i] for i in keep]
        if lazy:
            result = FileImageSet(
                kept_paths,
                channels=channels,
                image_size=image_size,
                name=name,
                labels=kept_labels,
                class_names=class_names,
            )
        else:
            result, decode_failures = _decode_all(
                kept_paths, kept_labels, class_names, name, channels, image_size
            )
            failures += decode_failures
    _warn_skipped(failures, total, name)
    if result is None:
        raise ValueError(f"{name}: none of the {total} image files could be read")
    return result


def _warn_skipped(failures: list[tuple[str, str]], total: int, name: str) -> None:
    """One warning for all unreadable files: the count and a few examples with reasons."""
    if failures:
        examples = "; ".join(f"{p} ({e})" for p, e in failures[:_EXAMPLES])
        warnings.warn(
            f"{name}: skipped {len(failures)} of {total} image files that could not be read, "
            f"e.g. {examples}",
            UnreadableImageWarning,
            stacklevel=3,
        )


def _decode_all(
    paths: list[str],
    labels: np.ndarray | None,
    class_names: list[str] | None,
    name: str,
    channels: int,
    image_size: int,
) -> tuple[TensorImageSet | None, list[tuple[str, str]]]:
    out = torch.empty((len(paths), channels, image_size, image_size), dtype=torch.uint8)

    def decode(i: int) -> bool:
        out[i] = read_image(paths[i], channels, image_size)
        return True

    results = _parallel(decode, range(len(paths)))
    good = [i for i, (ok, _) in enumerate(results) if ok]
    failures = [(paths[i], error) for i, (ok, error) in enumerate(results) if not ok]
    if not good:
        return None, failures
    if len(good) < len(paths):
        out = out[torch.tensor(good)]
    images = TensorImageSet(
        out,
        name=name,
        labels=None if labels is None else labels[good],
        class_names=class_names,
        ids=[paths[i] for i in good],
    )
    return images, failures


def _native_size(sizes: list[tuple[int, int]], name: str) -> int:
    counts = Counter(sizes)
    if len(counts) == 1:
        (width, height), _ = counts.popitem()
        if width == height:
            return width
    shown = ", ".join(
        f"{w}x{h} ({n} file{'s' if n != 1 else ''})" for (w, h), n in counts.most_common(5)
    )
    more = f" and {len(counts) - 5} more sizes" if len(counts) > 5 else ""
    raise ValueError(
        f"{name}: the images are not all one square size ({shown}{more}); pass image_size "
        "(--image-size on the command line) to resize them to image_size x image_size"
    )


def _parallel(fn: Callable[[T], object], items: Sequence[T]) -> list[tuple[object, str]]:
    """``fn`` over ``items`` in threads; each result is ``(value, "")`` or ``(None, error)``.

    Pillow releases the GIL while reading and decoding, so threads overlap file I/O and
    decoding without copying anything between processes.
    """

    def attempt(chunk: Sequence[T]) -> list[tuple[object, str]]:
        done: list[tuple[object, str]] = []
        for item in chunk:
            try:
                done.append((fn(item), ""))
            except Exception as error:  # unreadable file: reported, never fatal
                done.append((None, f"{type(error).__name__}: {error}"))
        return done

    chunks = [items[i : i + _CHUNK] for i in range(0, len(items), _CHUNK)]
    workers = min(16, 2 * (os.cpu_count() or 1), max(1, len(chunks)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [result for part in pool.map(attempt, chunks) for result in part]
