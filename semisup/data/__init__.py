"""Datasets: the :class:`~semisup.data.dataset.Dataset` type and its sources, splits, streams and views.

Importing the package imports every reader module, so each has registered its sources in
``semisup.data.dataset.SOURCES`` before any name is looked up there.
"""
from . import cifar, folder, idx, in_memory, pool, stl10, svhn  # noqa: F401  (registration side effects)
