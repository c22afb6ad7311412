"""Image classification data sets for the training experiments, read offline.

- `digits`: the 8x8 handwritten digits that scikit-learn ships (1797 images, 10
  classes), split once into train and test sets with a fixed seed. The default: it
  needs no download.
- `mnist` and `fashion-mnist`: the four IDX files of the standard distribution
  (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
  `t10k-labels-idx1-ubyte`, each optionally gzipped) in a local folder. Debian's
  `dataset-fashion-mnist` package installs Fashion-MNIST in
  `/usr/share/datasets/fashion-mnist`, the default folder of `fashion-mnist`.
- `cifar10`: the python version (`cifar-10-batches-py/`, pickled `data_batch_1..5`
  and `test_batch`) or the binary version (`cifar-10-batches-bin/`,
  `data_batch_1..5.bin` and `test_batch.bin`) in a local folder.

Images are returned as `[n, height, width, channels] float32` in `[0, 1]` and labels
as `[n] int32`.
"""

from __future__ import annotations

import gzip
import logging
import pickle
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = [
    "DATASETS",
    "DEFAULT_FOLDERS",
    "Dataset",
    "DatasetError",
    "load_dataset",
    "read_cifar10",
    "read_idx",
    "read_mnist",
]

logger = logging.getLogger(__name__)

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")
"""The data sets `load_dataset` knows."""

DEFAULT_FOLDERS = {"fashion-mnist": "/usr/share/datasets/fashion-mnist"}
"""Folders searched when no `data_dir` is given."""

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

_IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_CIFAR_SIDE = 32
_CIFAR_PIXELS = 3 * _CIFAR_SIDE * _CIFAR_SIDE


class DatasetError(ValueError):
    """A data set that is unknown, missing or malformed; the message says the fix."""


class Dataset(NamedTuple):
    """A classification data set split into training and test images.

    Attributes:
        name: the data set's name.
        train_images: `[n_train, height, width, channels] float32` in `[0, 1]`.
        train_labels: `[n_train] int32` in `0..num_classes-1`.
        test_images: `[n_test, height, width, channels] float32`.
        test_labels: `[n_test] int32`.
        num_classes: the number of classes.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, ...]:
        """`(height, width, channels)`."""
        return tuple(self.train_images.shape[1:])


def _open(path: Path):
    with path.open("rb") as handle:
        magic = handle.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb")
    return path.open("rb")


def read_idx(path: str | Path) -> np.ndarray:
    """Reads an IDX file (the MNIST format), plain or gzipped.

    The header is two zero bytes, a type code (0x08 unsigned byte, 0x09 signed byte,
    0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions,
    then each dimension as a big-endian uint32; the data follow in C order.

    Args:
        path: the file.

    Returns:
        The array, in native byte order.

    Raises:
        DatasetError: if the file is missing, truncated or not an IDX file.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"IDX file {str(path)!r} does not exist")
    try:
        with _open(path) as handle:
            content = handle.read()
    except (OSError, EOFError) as error:
        raise DatasetError(f"{path}: cannot be read ({error})") from None
    if len(content) < 4 or content[:2] != b"\x00\x00":
        raise DatasetError(
            f"{path}: not an IDX file (it must start with two zero bytes, a type "
            "code and the number of dimensions)"
        )
    code, ndim = content[2], content[3]
    if code not in _IDX_TYPES:
        raise DatasetError(f"{path}: unknown IDX type code {code:#04x}")
    header = 4 + 4 * ndim
    if len(content) < header:
        raise DatasetError(f"{path}: truncated IDX header")
    shape = tuple(
        int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)
    )
    dtype = _IDX_TYPES[code]
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(content) - header != expected:
        raise DatasetError(
            f"{path}: the header promises shape {shape} ({expected} bytes of data) "
            f"but the file holds {len(content) - header}"
        )
    data = np.frombuffer(content, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _find(folder: Path, name: str, dataset: str) -> Path:
    for candidate in (name, name + ".gz"):
        if (folder / candidate).is_file():
            return folder / candidate
    # The common alternative spelling t10k-images.idx3-ubyte.
    dotted = name.replace("-idx", ".idx")
    for candidate in (dotted, dotted + ".gz"):
        if (folder / candidate).is_file():
            return folder / candidate
    raise DatasetError(
        f"{dataset}: {name}[.gz] is missing from {str(folder)!r}; put the four IDX "
        f"files ({', '.join(MNIST_FILES.values())}) there or pass the folder that "
        "holds them with --data-dir"
    )


def _as_images(raw: np.ndarray, where: str) -> np.ndarray:
    if raw.ndim != 3:
        raise DatasetError(f"{where}: images must be [n, rows, cols] (got {raw.shape})")
    images = raw.astype(np.float32)
    top = 255.0 if raw.dtype == np.uint8 else max(float(images.max(initial=0)), 1.0)
    return (images / top)[..., None]


def _check_labels(labels: np.ndarray, images: np.ndarray, where: str) -> np.ndarray:
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DatasetError(
            f"{where}: {labels.shape[0] if labels.ndim else 0} labels for "
            f"{images.shape[0]} images; the label file must have one label per image"
        )
    return labels.astype(np.int32)


def read_mnist(folder: str | Path, name: str = "mnist") -> Dataset:
    """MNIST (or Fashion-MNIST) from the four IDX files in `folder`.

    Raises:
        DatasetError: naming the missing or malformed file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(
            f"{name}: data folder {str(folder)!r} does not exist; pass the folder "
            "that holds the IDX files with --data-dir"
        )
    arrays = {
        key: read_idx(_find(folder, file, name)) for key, file in MNIST_FILES.items()
    }
    train_images = _as_images(arrays["train_images"], f"{name} training images")
    test_images = _as_images(arrays["test_images"], f"{name} test images")
    train_labels = _check_labels(arrays["train_labels"], train_images, f"{name} train")
    test_labels = _check_labels(arrays["test_labels"], test_images, f"{name} test")
    classes = int(max(train_labels.max(initial=0), test_labels.max(initial=0))) + 1
    return Dataset(
        name, train_images, train_labels, test_images, test_labels, max(classes, 10)
    )


def _cifar_images(flat: np.ndarray, where: str) -> np.ndarray:
    if flat.ndim != 2 or flat.shape[1] != _CIFAR_PIXELS:
        raise DatasetError(
            f"{where}: CIFAR-10 rows must hold {_CIFAR_PIXELS} bytes (got shape "
            f"{flat.shape})"
        )
    planes = flat.reshape(-1, 3, _CIFAR_SIDE, _CIFAR_SIDE)
    return (planes.transpose(0, 2, 3, 1).astype(np.float32) / 255.0).copy()


def _read_pickle_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
    except (OSError, pickle.UnpicklingError, EOFError) as error:
        raise DatasetError(f"{path}: not a CIFAR-10 python batch ({error})") from None
    if not isinstance(batch, dict):
        raise DatasetError(f"{path}: not a CIFAR-10 python batch (no dict inside)")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise DatasetError(f"{path}: a CIFAR-10 batch needs 'data' and 'labels'")
    images = _cifar_images(np.asarray(data, np.uint8), str(path))
    return images, _check_labels(np.asarray(labels), images, str(path))


def _read_binary_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    record = 1 + _CIFAR_PIXELS
    if raw.size == 0 or raw.size % record:
        raise DatasetError(
            f"{path}: a CIFAR-10 binary batch is a sequence of {record}-byte records "
            f"(got {raw.size} bytes)"
        )
    rows = raw.reshape(-1, record)
    images = _cifar_images(rows[:, 1:], str(path))
    return images, rows[:, 0].astype(np.int32)


_CIFAR_LAYOUTS = (
    ("cifar-10-batches-py", "", _read_pickle_batch),
    ("cifar-10-batches-bin", ".bin", _read_binary_batch),
)


def read_cifar10(folder: str | Path) -> Dataset:
    """CIFAR-10 from its python or binary batches in `folder`.

    `folder` may be the batches folder itself or its parent.

    Raises:
        DatasetError: naming the missing or malformed file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(
            f"cifar10: data folder {str(folder)!r} does not exist; pass the folder "
            "that holds cifar-10-batches-py or cifar-10-batches-bin with --data-dir"
        )
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for subfolder, suffix, reader in _CIFAR_LAYOUTS:
        for base in (folder / subfolder, folder):
            if not (base / f"test_batch{suffix}").is_file():
                continue
            missing = [n + suffix for n in names if not (base / (n + suffix)).is_file()]
            if missing:
                raise DatasetError(
                    f"cifar10: {missing[0]} is missing from {str(base)!r}; it needs "
                    f"data_batch_1{suffix} .. data_batch_5{suffix} and "
                    f"test_batch{suffix}"
                )
            batches = [reader(base / (n + suffix)) for n in names]
            train_images = np.concatenate([b[0] for b in batches[:-1]])
            train_labels = np.concatenate([b[1] for b in batches[:-1]])
            test_images, test_labels = batches[-1]
            return Dataset(
                "cifar10", train_images, train_labels, test_images, test_labels, 10
            )
    raise DatasetError(
        f"cifar10: no CIFAR-10 batches in {str(folder)!r}; it needs "
        "cifar-10-batches-py/ (data_batch_1 .. data_batch_5, test_batch) or "
        "cifar-10-batches-bin/ (the same names with .bin); pass their folder with "
        "--data-dir"
    )


def _digits(test_fraction: float, split_seed: int) -> Dataset:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DatasetError(
            "digits: the 8x8 digits come with scikit-learn, which is not installed; "
            "install it (pip install scikit-learn) or pick another --dataset"
        ) from None
    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 16.0)[..., None]
    labels = bunch.target.astype(np.int32)
    order = np.random.default_rng(split_seed).permutation(len(labels))
    test = int(round(test_fraction * len(labels)))
    train_index, test_index = order[test:], order[:test]
    return Dataset(
        "digits",
        images[train_index],
        labels[train_index],
        images[test_index],
        labels[test_index],
        10,
    )


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    *,
    test_fraction: float = 0.2,
    split_seed: int = 0,
) -> Dataset:
    """Loads one of `DATASETS`.

    Args:
        name: `"digits"`, `"mnist"`, `"fashion-mnist"` or `"cifar10"`.
        data_dir: the folder of the local files (MNIST, Fashion-MNIST, CIFAR-10);
            Fashion-MNIST defaults to `DEFAULT_FOLDERS["fashion-mnist"]`.
        test_fraction: the share of the digits held out for testing (the other sets
            have their own test split).
        split_seed: the seed of the digits' train/test split.

    Returns:
        The `Dataset`.

    Raises:
        DatasetError: for an unknown name, a missing folder or file (named, with
            the fix), or a malformed file.

    Example:
        >>> data = load_dataset("digits")
        >>> data.image_shape, data.num_classes
        ((8, 8, 1), 10)
    """
    key = str(name).lower()
    if key not in DATASETS:
        raise DatasetError(
            f"dataset must be one of {', '.join(DATASETS)} (got {name!r})"
        )
    if key == "digits":
        if data_dir is not None:
            raise DatasetError(
                "digits ships with scikit-learn and reads no folder; drop --data-dir"
            )
        if not 0 < test_fraction < 1:
            raise DatasetError(
                f"test_fraction must be between 0 and 1 (got {test_fraction})"
            )
        return _digits(test_fraction, split_seed)
    if data_dir is None:
        if key not in DEFAULT_FOLDERS:
            raise DatasetError(
                f"{key}: the data set is read from local files; pass their folder "
                "with --data-dir (see uepjax.datasets for the expected file names)"
            )
        data_dir = DEFAULT_FOLDERS[key]
    logger.debug("reading %s from %s", key, data_dir)
    if key == "cifar10":
        return read_cifar10(data_dir)
    return read_mnist(data_dir, key)
