"""Image data: the ``ImageSet`` type and its loaders (digits, .npz, image folders, benchmarks).

Every loader returns uint8 images at one square size and channel count, so the stages never
see file formats: ``load_dataset(source)`` for a named or path source, ``from_arrays`` for
arrays already in memory, ``images_from_paths`` for a list of files (``smcluster predict``).
"""

from smcluster.data.arrays import from_arrays
from smcluster.data.benchmarks import BENCHMARKS, CIFAR100_COARSE, default_root, load_benchmark
from smcluster.data.digits import load_digits_set
from smcluster.data.embeddings import Embeddings, load_embeddings
from smcluster.data.folders import UnreadableImageWarning, images_from_paths, load_folder
from smcluster.data.imageset import FileImageSet, ImageSet, TensorImageSet
from smcluster.data.npz import load_npz
from smcluster.data.sources import NAMED_SOURCES, load_dataset

__all__ = [
    "BENCHMARKS",
    "CIFAR100_COARSE",
    "Embeddings",
    "NAMED_SOURCES",
    "FileImageSet",
    "ImageSet",
    "TensorImageSet",
    "UnreadableImageWarning",
    "default_root",
    "from_arrays",
    "images_from_paths",
    "load_benchmark",
    "load_dataset",
    "load_digits_set",
    "load_embeddings",
    "load_folder",
    "load_npz",
]
