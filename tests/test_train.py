"""Tests of uepjax.datasets and uepjax.train: readers, models, training, the CLI.

The local-file readers are tested on tiny files in the standard formats written
here. Training runs on the digits that scikit-learn ships, with settings shared by
all tests (3 epochs, evaluations every 11 iterations) so that the compiled training
loop is reused.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import pickle
import struct
from pathlib import Path

import jax
import numpy as np
import pytest

from uepjax import cli, config, datasets, nn, train

EPOCHS = 3
EVAL_EVERY = 11
LEARNING_RATE = 0.05


def _write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += b"".join(struct.pack(">I", n) for n in array.shape)
    content = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as handle:
            handle.write(content)
    else:
        path.write_bytes(content)


def _mnist_folder(folder: Path, rng) -> dict:
    arrays = {
        "train_images": rng.integers(0, 256, size=(20, 28, 28)),
        "train_labels": rng.integers(0, 10, size=20),
        "test_images": rng.integers(0, 256, size=(10, 28, 28)),
        "test_labels": rng.integers(0, 10, size=10),
    }
    for i, (key, name) in enumerate(datasets.MNIST_FILES.items()):
        _write_idx(folder / name, arrays[key], compress=i % 2 == 0)
    return arrays


# --------------------------------------------------------------------------------
# Data sets.


def test_digits_ship_with_scikit_learn():
    data = datasets.load_dataset("digits")
    assert data.image_shape == (8, 8, 1) and data.num_classes == 10
    assert data.train_images.shape[0] + data.test_images.shape[0] == 1797
    assert data.test_images.shape[0] == 359
    assert 0.0 <= data.train_images.min() and data.train_images.max() == 1.0
    assert set(np.unique(data.train_labels)) == set(range(10))


def test_idx_files_plain_and_gzipped(tmp_path):
    array = np.arange(60, dtype=np.uint8).reshape(5, 4, 3)
    _write_idx(tmp_path / "plain", array)
    _write_idx(tmp_path / "packed", array, compress=True)
    np.testing.assert_array_equal(datasets.read_idx(tmp_path / "plain"), array)
    np.testing.assert_array_equal(datasets.read_idx(tmp_path / "packed.gz"), array)
    (tmp_path / "broken").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 12 + b"\x01")
    with pytest.raises(datasets.DatasetError, match="header promises shape"):
        datasets.read_idx(tmp_path / "broken")
    (tmp_path / "text").write_bytes(b"hello world")
    with pytest.raises(datasets.DatasetError, match="not an IDX file"):
        datasets.read_idx(tmp_path / "text")


def test_mnist_is_read_from_local_idx_files(tmp_path):
    arrays = _mnist_folder(tmp_path, np.random.default_rng(0))
    data = datasets.load_dataset("mnist", tmp_path)
    assert data.train_images.shape == (20, 28, 28, 1)
    assert data.test_images.shape == (10, 28, 28, 1)
    np.testing.assert_allclose(
        data.train_images[..., 0], arrays["train_images"] / 255.0, rtol=1e-6
    )
    np.testing.assert_array_equal(data.test_labels, arrays["test_labels"])


def test_a_missing_local_file_is_named_with_the_fix(tmp_path):
    _mnist_folder(tmp_path, np.random.default_rng(1))
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(
        datasets.DatasetError, match=r"t10k-labels-idx1-ubyte.*data-dir"
    ):
        datasets.load_dataset("mnist", tmp_path)
    with pytest.raises(datasets.DatasetError, match="does not exist"):
        datasets.load_dataset("mnist", tmp_path / "nowhere")
    with pytest.raises(
        datasets.DatasetError, match="pass their folder with --data-dir"
    ):
        datasets.load_dataset("mnist")
    with pytest.raises(datasets.DatasetError, match="dataset must be one of"):
        datasets.load_dataset("imagenet")


def _cifar_batches(rng, count):
    images = rng.integers(0, 256, size=(count, 3, 32, 32), dtype=np.uint8)
    return images, rng.integers(0, 10, size=count)


def test_cifar10_python_batches(tmp_path):
    rng = np.random.default_rng(2)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images, labels = _cifar_batches(rng, 3)
        batches[name] = images, labels
        with (folder / name).open("wb") as handle:
            record = {b"data": images.reshape(3, -1), b"labels": list(labels)}
            pickle.dump(record, handle)
    data = datasets.load_dataset("cifar10", tmp_path)
    assert data.train_images.shape == (15, 32, 32, 3)
    first, labels = batches["data_batch_1"]
    # Channel planes (R, G, B) become the last axis.
    np.testing.assert_allclose(
        data.train_images[0], first[0].transpose(1, 2, 0) / 255.0, rtol=1e-6
    )
    np.testing.assert_array_equal(data.train_labels[:3], labels)
    np.testing.assert_array_equal(data.test_labels, batches["test_batch"][1])


def test_cifar10_binary_batches_and_a_missing_one(tmp_path):
    rng = np.random.default_rng(3)
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for name in names:
        images, labels = _cifar_batches(rng, 2)
        rows = np.concatenate([labels[:, None], images.reshape(2, -1)], axis=1)
        rows.astype(np.uint8).tofile(folder / name)
    data = datasets.load_dataset("cifar10", folder)
    assert data.train_images.shape == (10, 32, 32, 3)
    assert data.test_images.shape == (2, 32, 32, 3)
    (folder / "data_batch_3.bin").unlink()
    with pytest.raises(datasets.DatasetError, match="data_batch_3.bin is missing"):
        datasets.load_dataset("cifar10", tmp_path)


# --------------------------------------------------------------------------------
# Models.


def _kernels(model, shape):
    images = jax.ShapeDtypeStruct((1, *shape), np.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), images)
    return [
        leaf.shape
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
        if "Dense" in jax.tree_util.keystr(path) and path[-1].key == "kernel"
    ]


def test_networks_adapt_their_input_size_to_the_data():
    mlp = train.make_model("mlp", 10, None)
    assert _kernels(mlp, (28, 28, 1)) == [(784, 100), (100, 200), (200, 10)]
    assert _kernels(mlp, (8, 8, 1))[0] == (64, 100)
    cnn = train.make_model("cnn", 10, nn.coding_setup("ew", "cxr"))
    assert _kernels(cnn, (32, 32, 3)) == [(7200, 512), (512, 256), (256, 10)]
    assert _kernels(cnn, (8, 8, 1))[0] == (288, 512)


# --------------------------------------------------------------------------------
# Training and the command line.


def _experiment_toml(path: Path) -> Path:
    path.write_text(
        f"""experiment = "paper-training"
seed = 0
[data]
dataset = "digits"
[training]
epochs = {EPOCHS}
eval_every = {EVAL_EVERY}
learning_rate = {LEARNING_RATE}
seeds = 1
[comparison]
schemes = ["centralized", "uncoded"]
partitions = ["rxc"]
deadlines = [0.0, 1e9]
"""
    )
    return path


def _rows(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_training_depends_on_the_stragglers(tmp_path):
    # One comparison: no stragglers, and uncoded computation with a deadline at
    # which nothing arrives and one at which everything does.
    experiment = train.load_experiment(_experiment_toml(tmp_path / "tiny.toml"))
    files = train.run_comparison(experiment, tmp_path / "out")
    for name in ("curves", "final", "table", "plot", "run"):
        assert files[name].is_file()
    assert files["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curves = _rows(files["curves"])

    def curve(scheme, deadline):
        rows = [
            r for r in curves if r["scheme"] == scheme and r["deadline"] == deadline
        ]
        return np.array([float(r["accuracy"]) for r in rows])

    centralized = curve("centralized", "")
    nothing = curve("uncoded", "0.0")
    everything = curve("uncoded", "1000000000.0")
    assert centralized[-1] - centralized[0] > 0.3  # training works
    assert abs(nothing[-1] - nothing[0]) < 0.05  # nothing arrives, nothing learned
    assert abs(everything[-1] - centralized[-1]) < 0.03  # all arrive: as centralized
    table = files["table"].read_text()
    assert "| uncoded | rxc |" in table and "T_max = 1e+09" in table


def _parse(argv):
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_writes_accuracy_csv_and_plot(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--scheme", "centralized", "--epochs", str(EPOCHS), "--seed", "0"]
    argv += ["--eval-every", str(EVAL_EVERY), "--learning-rate", str(LEARNING_RATE)]
    assert train.run(_parse(argv + ["--out", str(out)]), cli.say) == 0
    rows = _rows(out / "accuracy.csv")
    assert {"iteration", "accuracy"} <= set(rows[0])
    assert [int(r["iteration"]) for r in rows] == list(range(0, 67, 11))
    assert float(rows[-1]["accuracy"]) > float(rows[0]["accuracy"]) + 0.3
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert "final test accuracy" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--scheme", "fountain"], "scheme must be one of centralized, uncoded"),
        (["--dataset", "imagenet"], "dataset must be one of digits, mnist"),
        (["--partition", "diagonal"], "partition must be one of rxc, cxr"),
        (["--deadline", "-1"], "deadline must be a non-negative"),
        (["--mode", "faithful"], "needs field='real'"),
        (["--model", "transformer"], "model must be one of"),
    ],
)
def test_bad_arguments_get_a_clear_error(tmp_path, argv, message):
    with pytest.raises(ValueError, match=message):
        train.run(_parse(argv + ["--out", str(tmp_path)]), cli.say)


def test_a_missing_data_file_and_a_partition_that_does_not_fit(tmp_path):
    argv = ["--dataset", "mnist", "--data-dir", str(tmp_path)]
    argv += ["--out", str(tmp_path / "x")]
    with pytest.raises(datasets.DatasetError, match="train-images-idx3-ubyte"):
        train.run(_parse(argv), cli.say)
    # A batch of 2 cannot be cut into N = 3 row blocks for G V^T (eq. 26).
    argv = ["--scheme", "ew", "--partition", "rxc", "--batch-size", "2"]
    with pytest.raises(ValueError, match=r"G V\^T \(eq\. 26\).*N=3"):
        train.run(
            _parse(argv + ["--epochs", "1", "--out", str(tmp_path / "o")]), cli.say
        )


def test_the_comparison_sweep_config_is_valid():
    experiment = train.load_experiment("sweeps/train-digits.toml")
    assert experiment.comparison.deadlines == (0.25, 0.5, 1.0, 2.0)
    assert experiment.comparison.schemes == (
        "centralized",
        "uncoded",
        "repetition",
        "now",
        "ew",
    )
    assert experiment.stragglers.workers("repetition") == 18


def test_a_bad_comparison_config_names_the_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('experiment = "paper-training"\n[comparison]\nschemes = ["zip"]\n')
    with pytest.raises(config.ConfigError, match="schemes"):
        train.load_experiment(path)
