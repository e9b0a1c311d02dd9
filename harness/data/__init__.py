"""Datasets: the registry, the sample format, the embedded ``cluttered-digits`` and the
datasets read from disk in their published layouts.

``build(name, split, ...)`` is the entry point; the registry (``DATASETS``) is the
only place dataset names are resolved. One module per dataset family registers its
entries on import.
"""

from harness.data import (  # noqa: F401  (register)
    caltech,
    celeba,
    cifar,
    compcars,
    cub,
    diagset,
    digits,
    folder,
    imagenet,
    stanford,
    svhn,
    voc,
)
from harness.data.core import (
    DATA_ENV,
    DATASETS,
    BatchRandomCrop,
    BoxedImages,
    DatasetInfo,
    Split,
    build,
    check_options,
    denormalize,
    loader,
    make_transform,
    moves_pixels,
    permuted_labels,
)
from harness.data.digits import (
    DIGITS_INFO,
    GENERATOR_VERSION,
    INK_THRESHOLD,
    TEST_SOURCES_PER_CLASS,
    _cached_digits,
    cluttered_digits,
    generate_digits,
    mnist_sources,
)
from harness.data.files import DataError, ImageFiles, PhotoTransforms, Record

__all__ = [
    "DATASETS", "DATA_ENV", "DIGITS_INFO", "GENERATOR_VERSION", "INK_THRESHOLD",
    "TEST_SOURCES_PER_CLASS", "BatchRandomCrop", "BoxedImages", "DataError", "DatasetInfo",
    "ImageFiles", "PhotoTransforms", "Record", "Split", "_cached_digits", "build",
    "check_options", "cluttered_digits", "denormalize", "generate_digits", "loader",
    "make_transform", "mnist_sources", "moves_pixels", "permuted_labels",
]
