"""Readers of the standard on-disk data set layouts (MNIST IDX, CIFAR-10 python batches,
TinyImageNet JPEG folders) into tensors, for evaluation and training.

What each data set is (shape, classes, normalization) lives in :mod:`certify.core.datasets`;
this package reads files and, in :mod:`certify.data.download`, fetches the official
archives into those layouts. Use :func:`load_split`; it raises
:class:`certify.core.errors.DataError` for every problem with the data.
:func:`default_data_dir` is the folder to use when none is given.
"""

from certify.data._common import default_data_dir
from certify.data.download import DownloadResult, Source, download_dataset
from certify.data.loader import SPLITS, ImageData, load_split

__all__ = [
    "SPLITS",
    "DownloadResult",
    "ImageData",
    "Source",
    "default_data_dir",
    "download_dataset",
    "load_split",
]
