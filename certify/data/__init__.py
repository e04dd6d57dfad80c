"""Readers of the standard on-disk data set layouts (MNIST IDX, CIFAR-10 python batches,
TinyImageNet JPEG folders) into tensors, for evaluation and training.

What each data set is (shape, classes, normalization) lives in :mod:`certify.core.datasets`;
this package only reads files. Use :func:`load_split`; it raises
:class:`certify.core.errors.DataError` for every problem with the data.
"""

from certify.data.loader import SPLITS, ImageData, load_split

__all__ = ["SPLITS", "ImageData", "load_split"]
