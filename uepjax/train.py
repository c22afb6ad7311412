"""Training with coded back-propagation (Sec. VII): models, loop, comparison.

The networks of Sec. VII-A, with every dense layer a `uepjax.nn.CodedDense`:

- `mlp`: the MNIST network of Fig. 12, dense 100-200-classes with ReLU, on the
  flattened image (784 inputs for MNIST, 64 for the 8x8 digits).
- `cnn`: the CIFAR-10 network of Table V, two 3x3 convolutions with 32 channels (same,
  then valid padding), 2x2 max pooling and dense 512-256-classes; the first dense
  layer's input size follows from the image size (7200 for 32x32 images). The
  convolutions are computed exactly (Remark 5).

Training follows Table IV: SGD with learning rate 0.01, batch 64, categorical cross
entropy, test accuracy against the mini-batch iteration. The schemes are
`centralized` (exact back-propagation, no stragglers) and the codes of
`uepjax.nn.coding_setup` with the workers of Table VII, exponential response times
(`lambda = 0.5`) scaled by `Omega = K / W`, and a deadline `T_max`.

Several runs that share a model and a scheme (different seeds, different deadlines)
are trained at once with `jax.vmap`, and all the steps between two evaluations run in
one `lax.scan`, so a comparison compiles once per scheme and partition. Run `r` with
seed `s` draws its initial parameters from `fold_in(key(s), 0)`, the straggler
realization of step `t` from `fold_in(fold_in(key(s), 1), t)`, and its batches from
`numpy.random.default_rng(s)`: runs with the same seed start from the same network and
see the same batches whatever their scheme.

Command line (wired into `uepjax train` by `add_arguments` and `run`):

    uepjax train --dataset digits --scheme ew --partition cxr --deadline 1 \\
        --epochs 10 --seed 0 --out results/ew-cxr
    uepjax train --config sweeps/train-digits.toml --out results/train-digits
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import optax

from uepjax import config as config_lib
from uepjax import datasets, nn
from uepjax import latency as latency_lib

__all__ = [
    "MODELS",
    "SCHEMES",
    "CNN",
    "MLP",
    "ComparisonConfig",
    "DataConfig",
    "History",
    "StragglerConfig",
    "TrainConfig",
    "TrainState",
    "TrainingConfig",
    "TrainingExperiment",
    "add_arguments",
    "coding_for",
    "fit",
    "init_state",
    "load_experiment",
    "make_model",
    "make_train_step",
    "paper_optimizer",
    "plot_comparison",
    "plot_history",
    "run",
    "run_comparison",
    "run_training",
]

logger = logging.getLogger(__name__)

SCHEMES = ("centralized", "uncoded", "repetition", "now", "ew", "mds")
"""Training schemes: exact back-propagation, or a code of `uepjax.codes`."""

MODELS = ("auto", "mlp", "cnn")
"""Networks: `auto` is the paper's choice for the data set (CNN for CIFAR-10)."""

PARTITIONS = ("rxc", "cxr")

SCHEME_COLORS = {
    "centralized": "#d62728",
    "uncoded": "#1f77b4",
    "repetition": "#9467bd",
    "now": "#2ca02c",
    "ew": "#e6b800",
    "mds": "#7f7f7f",
}
"""The colors of Fig. 16: red, blue, purple, green and yellow."""

SCHEME_NAMES = {
    "centralized": "no stragglers",
    "uncoded": "uncoded",
    "repetition": "2-block repetition",
    "now": "NOW-UEP",
    "ew": "EW-UEP",
    "mds": "MDS",
}

PARTITION_STYLES = {"rxc": "-", "cxr": ":"}
"""Continuous lines for rxc, dotted for cxr (Fig. 16)."""


def _choice(value: Any, allowed: Sequence[str], name: str, hint: str = "") -> str:
    text = str(value).lower()
    if text not in allowed:
        raise ValueError(
            f"{name} must be one of {', '.join(allowed)} (got {value!r}){hint}"
        )
    return text


def _positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum} (got {value!r})")
    return value


def _positive_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a positive number (got {value!r})")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number (got {value!r})")
    return float(value)


def _field_value(field: Any) -> str | int:
    """`"large"`, `"real"` or an int order from a string or int."""
    if isinstance(field, str) and field.strip().isdigit():
        return int(field)
    return field


class MLP(linen.Module):
    """The MNIST network of Fig. 12: dense layers with ReLU on the flat image.

    Attributes:
        num_classes: output classes.
        hidden: widths of the hidden layers, (100, 200) in the paper.
        coding: the `CodingSetup` of every dense layer, None for exact gradients.
    """

    num_classes: int = 10
    hidden: tuple[int, ...] = (100, 200)
    coding: nn.CodingSetup | None = None

    @linen.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        """`[batch, ...]` images to `[batch, num_classes]` logits."""
        x = images.reshape(images.shape[0], -1)
        for width in self.hidden:
            x = linen.relu(nn.CodedDense(width, self.coding)(x))
        return nn.CodedDense(self.num_classes, self.coding)(x)


class CNN(linen.Module):
    """The CIFAR-10 network of Table V; only the dense layers are coded.

    Attributes:
        num_classes: output classes.
        dense: widths of the hidden dense layers, (512, 256) in the paper.
        coding: the `CodingSetup` of the dense layers, None for exact gradients.
    """

    num_classes: int = 10
    dense: tuple[int, ...] = (512, 256)
    coding: nn.CodingSetup | None = None

    @linen.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        """`[batch, height, width, channels]` images to `[batch, classes]` logits."""
        x = linen.relu(linen.Conv(32, (3, 3), padding="SAME")(images))
        x = linen.relu(linen.Conv(32, (3, 3), padding="VALID")(x))
        x = linen.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        for width in self.dense:
            x = linen.relu(nn.CodedDense(width, self.coding)(x))
        return nn.CodedDense(self.num_classes, self.coding)(x)


def _resolve_model(model: str, dataset: str) -> str:
    model = _choice(model, MODELS, "model")
    if model == "auto":
        return "cnn" if dataset == "cifar10" else "mlp"
    return model


def make_model(
    name: str, num_classes: int, coding: nn.CodingSetup | None
) -> linen.Module:
    """The network `name` ("mlp" or "cnn") with every dense layer coded by `coding`.

    Raises:
        ValueError: for an unknown name.
    """
    name = _choice(name, MODELS[1:], "model")
    if name == "mlp":
        return MLP(num_classes=num_classes, coding=coding)
    return CNN(num_classes=num_classes, coding=coding)


def paper_optimizer(learning_rate: float = 0.01) -> optax.GradientTransformation:
    """Plain SGD, the optimizer of Table IV.

    The same learning rate returns the same object, so `fit` reuses its compiled
    training loop.
    """
    return _sgd(_positive_float(learning_rate, "learning_rate"))


@functools.lru_cache(maxsize=32)
def _sgd(learning_rate: float) -> optax.GradientTransformation:
    return optax.sgd(learning_rate)


class TrainState(NamedTuple):
    """Parameters and optimizer state of one network."""

    params: Any
    opt_state: Any


def init_state(
    key: jax.Array,
    model: linen.Module,
    image_shape: Sequence[int],
    optimizer: optax.GradientTransformation,
) -> TrainState:
    """Initial parameters (from `key`) and optimizer state."""
    params = model.init(key, jnp.zeros((1, *image_shape), jnp.float32))
    return TrainState(params, optimizer.init(params))


def _loss(model: linen.Module, params, images, labels, key) -> jax.Array:
    logits = model.apply(params, images, rngs={nn.STREAM: key})
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_train_step(model: linen.Module, optimizer: optax.GradientTransformation):
    """A pure step `(state, images, labels, key) -> (state, loss)`.

    The key feeds the `"stragglers"` stream of the coded layers; any optax optimizer
    works.
    """

    def step(state: TrainState, images, labels, key):
        loss, grads = jax.value_and_grad(functools.partial(_loss, model))(
            state.params, images, labels, key
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return TrainState(optax.apply_updates(state.params, updates), opt_state), loss

    return step


def _accuracy(model, params, images, labels, chunk: int) -> jax.Array:
    n = images.shape[0]
    pad = (-n) % chunk
    padded = jnp.concatenate([images, jnp.zeros((pad, *images.shape[1:]))], axis=0)
    chunks = padded.reshape(-1, chunk, *images.shape[1:])
    logits = jax.lax.map(lambda x: model.apply(params, x), chunks)
    predicted = jnp.argmax(logits.reshape(-1, logits.shape[-1])[:n], axis=-1)
    return jnp.mean((predicted == labels).astype(jnp.float32))


class History(NamedTuple):
    """Test accuracy during training, for a batch of runs.

    Attributes:
        iteration: `[E] int` mini-batch iterations of the evaluations (0 first).
        epoch: `[E] float` the same in epochs.
        accuracy: `[runs, E]` test accuracy.
        train_loss: `[runs, E]` mean training loss over the steps since the previous
            evaluation (NaN at iteration 0).
    """

    iteration: np.ndarray
    epoch: np.ndarray
    accuracy: np.ndarray
    train_loss: np.ndarray


class _Plan(NamedTuple):
    order: np.ndarray  # [runs, intervals, eval_every, batch] training indices
    valid: np.ndarray  # [intervals, eval_every] bool
    step: np.ndarray  # [intervals, eval_every] int32 step index
    iteration: np.ndarray  # [intervals + 1]
    steps_per_epoch: int


def _plan(seeds, n_train, epochs, batch_size, eval_every) -> _Plan:
    steps_per_epoch = n_train // batch_size
    if steps_per_epoch < 1:
        raise ValueError(
            f"batch_size must be at most the {n_train} training images "
            f"(got {batch_size})"
        )
    total = epochs * steps_per_epoch
    intervals = -(-total // eval_every)
    slots = intervals * eval_every
    orders = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        epochs_order = [
            rng.permutation(n_train)[: steps_per_epoch * batch_size]
            for _ in range(epochs)
        ]
        flat = np.concatenate(epochs_order).reshape(total, batch_size)
        flat = np.concatenate([flat, np.zeros((slots - total, batch_size), int)])
        orders.append(flat.reshape(intervals, eval_every, batch_size))
    step = np.arange(slots, dtype=np.int32).reshape(intervals, eval_every)
    iteration = np.minimum(np.arange(intervals + 1) * eval_every, total)
    return _Plan(
        np.stack(orders).astype(np.int32),
        step < total,
        step,
        iteration,
        steps_per_epoch,
    )


def _stack(codings: Sequence[nn.CodingSetup | None]):
    if all(c is None for c in codings):
        return None
    if any(c is None for c in codings):
        raise ValueError("codings must be all None or all CodingSetups in one fit")
    structures = {jax.tree_util.tree_structure(c) for c in codings}
    if len(structures) != 1:
        raise ValueError(
            "the codings of one fit must differ only in their array leaves (deadline, "
            "gamma, latency parameters); fit other schemes or sizes separately"
        )
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *codings)


def _fit_runs(
    order,
    valid,
    step_index,
    seed_keys,
    codings,
    train_images,
    train_labels,
    test_images,
    test_labels,
    *,
    model_name: str,
    num_classes: int,
    optimizer: optax.GradientTransformation,
    warmup_steps: int,
    eval_chunk: int,
):
    evaluator = make_model(model_name, num_classes, None)
    exact_step = make_train_step(evaluator, optimizer)

    def one_run(order, seed_key, coding):
        model = make_model(model_name, num_classes, coding)
        coded_step = make_train_step(model, optimizer)
        init_key = jax.random.fold_in(seed_key, 0)
        straggler_key = jax.random.fold_in(seed_key, 1)
        state = init_state(init_key, model, train_images.shape[1:], optimizer)

        def step(state, xs):
            index, ok, t = xs
            images, labels = train_images[index], train_labels[index]
            key = jax.random.fold_in(straggler_key, t)
            if coding is None:
                new, loss = exact_step(state, images, labels, key)
            elif warmup_steps:
                new, loss = jax.lax.cond(
                    t < warmup_steps,
                    exact_step,
                    coded_step,
                    state,
                    images,
                    labels,
                    key,
                )
            else:
                new, loss = coded_step(state, images, labels, key)
            state = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, state)
            return state, jnp.where(ok, loss, 0.0)

        def interval(state, xs):
            index, ok, t = xs
            state, losses = jax.lax.scan(step, state, (index, ok, t))
            accuracy = _accuracy(
                evaluator, state.params, test_images, test_labels, eval_chunk
            )
            mean_loss = jnp.sum(losses) / jnp.maximum(jnp.sum(ok), 1)
            return state, (accuracy, mean_loss)

        start = _accuracy(evaluator, state.params, test_images, test_labels, eval_chunk)
        _, (accuracy, loss) = jax.lax.scan(interval, state, (order, valid, step_index))
        return jnp.concatenate([start[None], accuracy]), loss

    return jax.vmap(one_run)(order, seed_keys, codings)


@functools.lru_cache(maxsize=16)
def _fit_function(model_name, num_classes, optimizer, warmup_steps, eval_chunk):
    """The jitted training loop; jit caches its compilations per input structure."""
    return jax.jit(
        functools.partial(
            _fit_runs,
            model_name=model_name,
            num_classes=num_classes,
            optimizer=optimizer,
            warmup_steps=warmup_steps,
            eval_chunk=eval_chunk,
        )
    )


def fit(
    dataset: datasets.Dataset,
    model_name: str,
    codings: Sequence[nn.CodingSetup | None],
    seeds: Sequence[int],
    *,
    epochs: int,
    batch_size: int = 64,
    optimizer: optax.GradientTransformation | None = None,
    eval_every: int = 10,
    warmup_epochs: int = 0,
    eval_chunk: int = 1000,
) -> History:
    """Trains one run per `(coding, seed)` pair at once and records test accuracy.

    Args:
        dataset: the data.
        model_name: `"mlp"` or `"cnn"`.
        codings: one `CodingSetup` per run (all None for centralized training); they
            must share everything but their array leaves (e.g. differ in deadline).
        seeds: one integer seed per run.
        epochs: passes over the training set (the last partial batch of each epoch
            is dropped).
        batch_size: images per mini-batch.
        optimizer: any optax optimizer; default `paper_optimizer()` (SGD, 0.01).
        eval_every: mini-batch iterations between two evaluations.
        warmup_epochs: epochs trained without stragglers before the coded gradients
            start (the CIFAR-10 protocol of Sec. VII-C uses 30).
        eval_chunk: test images per evaluation batch.

    Returns:
        The `History` of the runs, in the order given.
    """
    if len(codings) != len(seeds) or not seeds:
        raise ValueError(
            f"codings and seeds must have one entry per run (got {len(codings)} "
            f"codings and {len(seeds)} seeds)"
        )
    epochs = _positive_int(epochs, "epochs")
    batch_size = _positive_int(batch_size, "batch_size")
    eval_every = _positive_int(eval_every, "eval_every")
    warmup_epochs = _positive_int(warmup_epochs, "warmup_epochs", 0)
    optimizer = paper_optimizer() if optimizer is None else optimizer
    n_train = dataset.train_images.shape[0]
    plan = _plan(seeds, n_train, epochs, batch_size, eval_every)
    stacked = _stack(codings)
    seed_keys = jnp.stack([jax.random.key(int(s)) for s in seeds])
    chunk = max(1, min(eval_chunk, dataset.test_images.shape[0]))
    run = _fit_function(
        _choice(model_name, MODELS[1:], "model_name"),
        dataset.num_classes,
        optimizer,
        warmup_epochs * plan.steps_per_epoch,
        chunk,
    )
    accuracy, loss = run(
        jnp.asarray(plan.order),
        jnp.asarray(plan.valid),
        jnp.asarray(plan.step),
        seed_keys,
        stacked,
        jnp.asarray(dataset.train_images),
        jnp.asarray(dataset.train_labels),
        jnp.asarray(dataset.test_images),
        jnp.asarray(dataset.test_labels),
    )
    loss = np.asarray(loss, np.float64)
    nan = np.full((loss.shape[0], 1), np.nan)
    return History(
        iteration=plan.iteration,
        epoch=plan.iteration / plan.steps_per_epoch,
        accuracy=np.asarray(accuracy, np.float64),
        train_loss=np.concatenate([nan, loss], axis=1),
    )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run of `uepjax train`.

    Attributes:
        dataset: one of `datasets.DATASETS`.
        data_dir: the folder of local data files (MNIST, Fashion-MNIST, CIFAR-10).
        model: `auto`, `mlp` or `cnn`.
        scheme: one of `SCHEMES`.
        partition: `rxc` or `cxr`.
        deadline: `T_max`.
        rate: `lambda` of the exponential response times.
        workers: `W`; None for Table VII.
        field: `large`, `real` or a field order.
        mode: `fast` or `faithful`.
        epochs, batch_size, learning_rate, eval_every, warmup_epochs: training.
        seed: the run's seed.
    """

    dataset: str = "digits"
    data_dir: str | None = None
    model: str = "auto"
    scheme: str = "ew"
    partition: str = "cxr"
    deadline: float = 1.0
    rate: float = nn.DEFAULT_RATE
    workers: int | None = None
    field: str | int = "large"
    mode: str = "fast"
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 0.01
    eval_every: int = 10
    warmup_epochs: int = 0
    seed: int = 0

    def __post_init__(self):
        _choice(
            self.dataset,
            datasets.DATASETS,
            "dataset",
            "; digits needs no download, the others read local files (--data-dir)",
        )
        _choice(self.scheme, SCHEMES, "scheme")
        _choice(self.partition, PARTITIONS, "partition")
        _resolve_model(self.model, self.dataset)
        if isinstance(self.deadline, bool) or not isinstance(
            self.deadline, int | float
        ):
            raise ValueError(f"deadline must be a number (got {self.deadline!r})")
        if math.isnan(self.deadline) or self.deadline < 0:
            raise ValueError(
                f"deadline must be a non-negative time T_max (got {self.deadline!r})"
            )
        _positive_float(self.rate, "rate")
        _positive_float(self.learning_rate, "learning_rate")
        for name in ("epochs", "batch_size", "eval_every"):
            _positive_int(getattr(self, name), name)
        _positive_int(self.warmup_epochs, "warmup_epochs", 0)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an integer (got {self.seed!r})")
        self.coding()

    @property
    def model_name(self) -> str:
        """`mlp` or `cnn`."""
        return _resolve_model(self.model, self.dataset)

    def coding(self) -> nn.CodingSetup | None:
        """The `CodingSetup` of the dense layers, None for `centralized`."""
        return coding_for(
            self.scheme,
            self.partition,
            self.deadline,
            rate=self.rate,
            workers=self.workers,
            field=self.field,
            mode=self.mode,
        )


def coding_for(
    scheme: str,
    partition: str,
    deadline: float,
    *,
    rate: float = nn.DEFAULT_RATE,
    workers: int | None = None,
    field: str | int = "large",
    mode: str = "fast",
    gamma: Sequence[float] = nn.TABLE_III_GAMMA,
) -> nn.CodingSetup | None:
    """The setup of Sec. VII-C for a training scheme; None for `centralized`."""
    scheme = _choice(scheme, SCHEMES, "scheme")
    if scheme == "centralized":
        return None
    return nn.coding_setup(
        scheme,
        _choice(partition, PARTITIONS, "partition"),
        deadline=deadline,
        workers=workers,
        latency=latency_lib.Exponential(rate=rate),
        gamma=gamma,
        field=_field_value(field),
        mode=mode,
    )


def _write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    from uepjax import sweep

    sweep.write_csv(path, rows, columns)


def _write_json(path: Path, record: dict) -> None:
    temporary = path.with_name(f".{path.name}.partial")
    temporary.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(temporary, path)


def _versions() -> dict[str, str]:
    import importlib.metadata as metadata

    found = {}
    for name in ("uepjax", "jax", "jaxlib", "flax", "optax", "numpy"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    found["python"] = platform.python_version()
    return found


def plot_history(path: Path, history: History, title: str) -> Path:
    """A PNG of test accuracy against the mini-batch iteration, mean over runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    mean = history.accuracy.mean(axis=0)
    axis.plot(history.iteration, mean, color="#1f77b4")
    if history.accuracy.shape[0] > 1:
        spread = history.accuracy.std(axis=0)
        axis.fill_between(history.iteration, mean - spread, mean + spread, alpha=0.2)
    axis.set_xlabel("mini-batch iteration")
    axis.set_ylabel("test accuracy")
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3)
    axis.set_title(title, fontsize=10)
    figure.tight_layout()
    temporary = path.with_name(f".{path.stem}.partial.png")
    figure.savefig(temporary, dpi=120)
    plt.close(figure)
    os.replace(temporary, path)
    return path


def _title(config: TrainConfig) -> str:
    if config.scheme == "centralized":
        return f"{config.dataset}, {config.model_name}: no stragglers"
    return (
        f"{config.dataset}, {config.model_name}: {SCHEME_NAMES[config.scheme]} "
        f"{config.partition}, T_max = {config.deadline:g}"
    )


def run_training(config: TrainConfig, out: str | Path) -> dict[str, Path]:
    """Trains one network and writes `accuracy.csv`, `accuracy.png` and `run.json`.

    `accuracy.csv` has the columns `iteration`, `epoch`, `accuracy` (test accuracy)
    and `train_loss`.

    Returns:
        The written files by name.
    """
    started = time.perf_counter()
    data = datasets.load_dataset(config.dataset, config.data_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    history = fit(
        data,
        config.model_name,
        [config.coding()],
        [config.seed],
        epochs=config.epochs,
        batch_size=config.batch_size,
        optimizer=paper_optimizer(config.learning_rate),
        eval_every=config.eval_every,
        warmup_epochs=config.warmup_epochs,
    )
    rows = [
        dict(
            iteration=int(i),
            epoch=float(e),
            accuracy=float(a),
            train_loss="" if np.isnan(loss) else float(loss),
        )
        for i, e, a, loss in zip(
            history.iteration,
            history.epoch,
            history.accuracy[0],
            history.train_loss[0],
            strict=True,
        )
    ]
    files = {"accuracy": out / "accuracy.csv", "plot": out / "accuracy.png"}
    _write_csv(
        files["accuracy"], rows, ["iteration", "epoch", "accuracy", "train_loss"]
    )
    plot_history(files["plot"], history, _title(config))
    files["run"] = out / "run.json"
    _write_json(
        files["run"],
        dict(
            config=dataclasses.asdict(config),
            final_accuracy=float(history.accuracy[0, -1]),
            versions=_versions(),
            devices=[str(d) for d in jax.devices()],
            seconds=round(time.perf_counter() - started, 3),
        ),
    )
    return files


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The data set and network of a comparison."""

    dataset: str = "digits"
    data_dir: str = ""
    model: str = "auto"

    def __post_init__(self):
        _choice(self.dataset, datasets.DATASETS, "dataset")
        _resolve_model(self.model, self.dataset)


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Table IV's training settings, the evaluation interval and the seeds."""

    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 0.01
    eval_every: int = 11
    warmup_epochs: int = 0
    seeds: int = 5

    def __post_init__(self):
        for name in ("epochs", "batch_size", "eval_every", "seeds"):
            _positive_int(getattr(self, name), name)
        _positive_int(self.warmup_epochs, "warmup_epochs", 0)
        _positive_float(self.learning_rate, "learning_rate")


@dataclasses.dataclass(frozen=True)
class ComparisonConfig:
    """The schemes, partitions and deadlines compared (Figs. 13-15)."""

    schemes: tuple[str, ...] = ("centralized", "uncoded", "repetition", "now", "ew")
    partitions: tuple[str, ...] = PARTITIONS
    deadlines: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)

    def __post_init__(self):
        for scheme in self.schemes:
            _choice(scheme, SCHEMES, "schemes[...]")
        for kind in self.partitions:
            _choice(kind, PARTITIONS, "partitions[...]")
        for deadline in self.deadlines:
            if not deadline >= 0:
                raise ValueError(
                    f"deadlines must be non-negative times (got {deadline!r})"
                )


@dataclasses.dataclass(frozen=True)
class StragglerConfig:
    """Table VII's workers, the response times and the decoder."""

    uncoded_workers: int = 9
    repetition_workers: int = 18
    coded_workers: int = 15
    rate: float = nn.DEFAULT_RATE
    gamma: tuple[float, ...] = nn.TABLE_III_GAMMA
    field: str = "large"
    mode: str = "fast"

    def __post_init__(self):
        for name in ("uncoded_workers", "repetition_workers", "coded_workers"):
            _positive_int(getattr(self, name), name)
        _positive_float(self.rate, "rate")
        nn.coding_setup(
            "ew",
            "cxr",
            gamma=self.gamma,
            field=_field_value(self.field),
            mode=self.mode,
        )

    def workers(self, scheme: str) -> int:
        """`W` of the scheme."""
        if scheme == "uncoded":
            return self.uncoded_workers
        if scheme == "repetition":
            return self.repetition_workers
        return self.coded_workers


@dataclasses.dataclass(frozen=True)
class TrainingExperiment:
    """The training comparison of Sec. VII-C (Figs. 13-15) on any data set."""

    experiment: str = "paper-training"
    seed: int = 0
    data: DataConfig = DataConfig()
    training: TrainingConfig = TrainingConfig()
    comparison: ComparisonConfig = ComparisonConfig()
    stragglers: StragglerConfig = StragglerConfig()

    def __post_init__(self):
        if self.experiment != "paper-training":
            raise ValueError(
                f"experiment must be 'paper-training' (got {self.experiment!r})"
            )

    def seeds(self) -> list[int]:
        """The seeds of the repeated runs."""
        return [self.seed + i for i in range(self.training.seeds)]


def load_experiment(path: str | Path) -> TrainingExperiment:
    """Reads and validates a training comparison config (TOML).

    Raises:
        config.ConfigError: naming the file, the key and what is allowed.
    """
    table = config_lib.load_toml(path)
    if table.get("experiment") != "paper-training":
        raise config_lib.ConfigError(
            f"{path}: experiment must be 'paper-training' for uepjax train --config "
            f"(got {table.get('experiment')!r})"
        )
    return config_lib.from_table(TrainingExperiment, table, str(path))


def _summary(history: History) -> tuple[np.ndarray, np.ndarray]:
    """Per run: the final accuracy and the mean accuracy over the evaluations."""
    return history.accuracy[:, -1], history.accuracy.mean(axis=1)


def run_comparison(
    experiment: TrainingExperiment,
    out: str | Path,
    announce: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Trains every scheme, partition and deadline and writes the comparison.

    Files: `curves.csv` (one row per run and evaluation), `final_accuracy.csv`
    (mean and standard deviation over the seeds of the final test accuracy and of
    the mean accuracy over training, a measure of training speed),
    `final_accuracy.md` (the same as a table), `comparison.png` (Figs. 13-15 in one
    figure) and `run.json`.

    Returns:
        The written files by name.
    """
    started = time.perf_counter()
    say = announce or logger.info
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data_config = experiment.data
    data = datasets.load_dataset(data_config.dataset, data_config.data_dir or None)
    model_name = _resolve_model(data_config.model, data_config.dataset)
    training = experiment.training
    stragglers = experiment.stragglers
    seeds = experiment.seeds()
    deadlines = list(experiment.comparison.deadlines)
    fit_options = dict(
        epochs=training.epochs,
        batch_size=training.batch_size,
        optimizer=paper_optimizer(training.learning_rate),
        eval_every=training.eval_every,
        warmup_epochs=training.warmup_epochs,
    )

    results = {}
    for scheme in experiment.comparison.schemes:
        if scheme == "centralized":
            say(f"training {len(seeds)} runs without stragglers")
            results["centralized", "-", None] = fit(
                data, model_name, [None] * len(seeds), seeds, **fit_options
            )
            continue
        for kind in experiment.comparison.partitions:
            codings, run_seeds = [], []
            for deadline in deadlines:
                for seed in seeds:
                    codings.append(
                        coding_for(
                            scheme,
                            kind,
                            deadline,
                            rate=stragglers.rate,
                            workers=stragglers.workers(scheme),
                            field=stragglers.field,
                            mode=stragglers.mode,
                            gamma=stragglers.gamma,
                        )
                    )
                    run_seeds.append(seed)
            say(
                f"training {len(codings)} runs: {SCHEME_NAMES[scheme]} {kind}, "
                f"deadlines {', '.join(f'{d:g}' for d in deadlines)}"
            )
            history = fit(data, model_name, codings, run_seeds, **fit_options)
            for d, deadline in enumerate(deadlines):
                rows = slice(d * len(seeds), (d + 1) * len(seeds))
                results[scheme, kind, deadline] = History(
                    history.iteration,
                    history.epoch,
                    history.accuracy[rows],
                    history.train_loss[rows],
                )

    curves, finals = [], []
    for (scheme, kind, deadline), history in results.items():
        final, mean = _summary(history)
        finals.append(
            dict(
                scheme=scheme,
                partition=kind,
                deadline="" if deadline is None else deadline,
                final_accuracy=float(final.mean()),
                final_std=float(final.std()),
                mean_accuracy=float(mean.mean()),
                mean_std=float(mean.std()),
                seeds=len(final),
            )
        )
        for r, seed in enumerate(seeds):
            for e, iteration in enumerate(history.iteration):
                loss = history.train_loss[r, e]
                curves.append(
                    dict(
                        scheme=scheme,
                        partition=kind,
                        deadline="" if deadline is None else deadline,
                        seed=seed,
                        iteration=int(iteration),
                        epoch=float(history.epoch[e]),
                        accuracy=float(history.accuracy[r, e]),
                        train_loss="" if np.isnan(loss) else float(loss),
                    )
                )
    files = {
        "curves": out / "curves.csv",
        "final": out / "final_accuracy.csv",
        "table": out / "final_accuracy.md",
        "plot": out / "comparison.png",
        "run": out / "run.json",
    }
    _write_csv(
        files["curves"],
        curves,
        [
            "scheme",
            "partition",
            "deadline",
            "seed",
            "iteration",
            "epoch",
            "accuracy",
            "train_loss",
        ],
    )
    _write_csv(
        files["final"],
        finals,
        [
            "scheme",
            "partition",
            "deadline",
            "final_accuracy",
            "final_std",
            "mean_accuracy",
            "mean_std",
            "seeds",
        ],
    )
    table = final_accuracy_table(finals, deadlines)
    temporary = files["table"].with_name(f".{files['table'].name}.partial")
    temporary.write_text(table)
    os.replace(temporary, files["table"])
    say("drawing the comparison")
    title = (
        f"{data_config.dataset}, {model_name}, {len(seeds)} seeds, "
        f"{training.epochs} epochs"
    )
    plot_comparison(files["plot"], results, deadlines, title)
    _write_json(
        files["run"],
        dict(
            config=config_lib.to_table(experiment),
            versions=_versions(),
            devices=[str(d) for d in jax.devices()],
            seconds=round(time.perf_counter() - started, 3),
        ),
    )
    return files


def final_accuracy_table(finals: Sequence[dict], deadlines: Sequence[float]) -> str:
    """A Markdown table: final test accuracy (mean +- std) per scheme and deadline."""
    header = "| scheme | partition | " + " | ".join(f"T_max = {d:g}" for d in deadlines)
    lines = [header + " |", "|---|---|" + "---:|" * len(deadlines)]
    by_key = {(r["scheme"], r["partition"], r["deadline"]): r for r in finals}
    keys = []
    for row in finals:
        if (row["scheme"], row["partition"]) not in keys:
            keys.append((row["scheme"], row["partition"]))
    for scheme, kind in keys:
        cells = []
        for deadline in deadlines:
            row = by_key.get((scheme, kind, deadline)) or by_key.get((scheme, kind, ""))
            if row is None:
                cells.append("")
                continue
            cells.append(f"{row['final_accuracy']:.3f} ± {row['final_std']:.3f}")
        lines.append(f"| {SCHEME_NAMES[scheme]} | {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_comparison(
    path: Path,
    results: dict,
    deadlines: Sequence[float],
    title: str,
) -> Path:
    """Figs. 13-15 in one PNG: accuracy curves per deadline, and accuracy at the end
    against the deadline. Colors and line styles follow Fig. 16."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 3
    panels = len(deadlines) + 1
    rows = -(-panels // columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False
    )
    flat = axes.reshape(-1)
    for d, deadline in enumerate(deadlines):
        axis = flat[d]
        for (scheme, kind, key_deadline), history in results.items():
            if key_deadline not in (None, deadline):
                continue
            axis.plot(
                history.iteration,
                history.accuracy.mean(axis=0),
                color=SCHEME_COLORS[scheme],
                linestyle=PARTITION_STYLES.get(kind, "-"),
                linewidth=1.4,
            )
        axis.set_title(f"T_max = {deadline:g}", fontsize=10)
        axis.set_xlabel("mini-batch iteration")
        axis.set_ylabel("test accuracy")
        axis.set_ylim(0, 1)
        axis.grid(alpha=0.3)

    axis = flat[len(deadlines)]
    series = {}
    for (scheme, kind, deadline), history in results.items():
        series.setdefault((scheme, kind), {})[deadline] = history.accuracy[:, -1]
    for (scheme, kind), values in series.items():
        if None in values:
            axis.axhline(
                values[None].mean(), color=SCHEME_COLORS[scheme], linewidth=1.4
            )
            continue
        xs = [d for d in deadlines if d in values]
        axis.errorbar(
            xs,
            [values[d].mean() for d in xs],
            yerr=[values[d].std() for d in xs],
            color=SCHEME_COLORS[scheme],
            linestyle=PARTITION_STYLES[kind],
            marker="o",
            markersize=3,
            capsize=2,
            linewidth=1.4,
        )
    axis.set_xscale("log", base=2)
    axis.set_xticks(list(deadlines), [f"{d:g}" for d in deadlines])
    axis.set_title("final test accuracy (mean ± std)", fontsize=10)
    axis.set_xlabel("deadline T_max")
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3)

    for extra in flat[panels:]:
        extra.axis("off")
    legend_axis = flat[panels] if panels < len(flat) else flat[-1]
    handles = []
    for scheme in SCHEMES:
        if any(key[0] == scheme for key in results):
            (line,) = legend_axis.plot([], [], color=SCHEME_COLORS[scheme])
            line.set_label(SCHEME_NAMES[scheme])
            handles.append(line)
    for kind, style in PARTITION_STYLES.items():
        (line,) = legend_axis.plot([], [], color="black", linestyle=style)
        line.set_label(kind)
        handles.append(line)
    legend_axis.legend(handles=handles, loc="center", frameon=False)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    temporary = path.with_name(f".{path.stem}.partial.png")
    figure.savefig(temporary, dpi=120)
    plt.close(figure)
    os.replace(temporary, path)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the flags of `uepjax train` to `parser`."""
    defaults = TrainConfig()
    parser.add_argument(
        "--config",
        help="a training comparison config, e.g. sweeps/train-digits.toml; the other "
        "training flags are then ignored",
    )
    parser.add_argument("--out", required=True, help="folder for the results")
    parser.add_argument(
        "--dataset",
        default=defaults.dataset,
        help=f"one of {', '.join(datasets.DATASETS)} (default digits, which ships "
        "with scikit-learn)",
    )
    parser.add_argument(
        "--data-dir", help="folder of the local MNIST / Fashion-MNIST / CIFAR-10 files"
    )
    parser.add_argument(
        "--model", default=defaults.model, help="auto (default), mlp or cnn"
    )
    parser.add_argument(
        "--scheme", default=defaults.scheme, help=f"one of {', '.join(SCHEMES)}"
    )
    parser.add_argument(
        "--partition", default=defaults.partition, help="rxc or cxr (default cxr)"
    )
    parser.add_argument(
        "--deadline", type=float, default=defaults.deadline, help="T_max (default 1)"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=defaults.rate,
        help="rate of the exponential response times (default 0.5)",
    )
    parser.add_argument(
        "--workers", type=int, help="number of workers (default: Table VII)"
    )
    parser.add_argument(
        "--field",
        default=defaults.field,
        help="decoder: large (default), real, or a field order such as 256",
    )
    parser.add_argument(
        "--mode", default=defaults.mode, help="fast (default) or faithful"
    )
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument(
        "--eval-every",
        type=int,
        default=defaults.eval_every,
        help="mini-batch iterations between evaluations",
    )
    parser.add_argument(
        "--warmup-epochs",
        type=int,
        default=defaults.warmup_epochs,
        help="epochs without stragglers before the coded gradients start",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def run(args: argparse.Namespace, say: Callable[[str], None]) -> int:
    """Runs `uepjax train` from parsed arguments; returns the exit status.

    `say` prints a line (the CLI's `uepjax.cli.say`); `--quiet` silences it.

    Raises:
        ValueError: for bad arguments (the CLI prints the message and exits with
            status 2), including `datasets.DatasetError` and `config.ConfigError`.
    """

    def show(message: str) -> None:
        if not args.quiet:
            say(message)

    started = time.perf_counter()
    if args.config:
        experiment = load_experiment(args.config)
        files = run_comparison(experiment, args.out, announce=show)
        show(Path(files["table"]).read_text().rstrip())
    else:
        config = TrainConfig(
            dataset=args.dataset,
            data_dir=args.data_dir,
            model=args.model,
            scheme=args.scheme,
            partition=args.partition,
            deadline=args.deadline,
            rate=args.rate,
            workers=args.workers,
            field=args.field,
            mode=args.mode,
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            eval_every=args.eval_every,
            warmup_epochs=args.warmup_epochs,
            seed=args.seed,
        )
        files = run_training(config, args.out)
        record = json.loads(Path(files["run"]).read_text())
        show(f"final test accuracy {record['final_accuracy']:.4f}")
    show(
        f"wrote {len(files)} files to {args.out} in "
        f"{time.perf_counter() - started:.1f} s"
    )
    return 0
