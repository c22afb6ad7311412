"""How long `uepjax.tune.optimize_gamma` takes for 5 classes and 100 workers.

The exact sum over window counts has C(105, 5) ~ 9.6e7 terms here, so the default
method is the Monte Carlo score-function estimator. The target is under a minute per
tuning on a 2-core CPU, compilation included (a fresh process, default settings).

    python benchmarks/tune_speed.py

Prints one line per scheme and writes nothing.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from uepjax import latency, tune

CLASS_SIZES = (4, 4, 4, 4, 4)
WORKERS = 100
DEADLINE = 1.5


def main() -> None:
    # Class l carries 10^-l of the energy of class 1; Remark 1's load K / W.
    energies = 10.0 ** -np.arange(len(CLASS_SIZES))
    model = latency.with_load(latency.Exponential(1.0), sum(CLASS_SIZES) / WORKERS)
    for scheme in ("ew", "now"):
        started, cpu = time.perf_counter(), time.process_time()
        result = tune.optimize_gamma(
            scheme,
            CLASS_SIZES,
            energies,
            workers=WORKERS,
            deadline=DEADLINE,
            latency=model,
        )
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
        uniform = np.full(len(CLASS_SIZES), 1.0 / len(CLASS_SIZES))
        baseline = tune.estimate_loss(
            jax.random.key(1), result.problem, uniform, 16_384
        )
        print(
            f"{scheme}: {seconds:.1f} s ({cpu:.1f} s of CPU; {result.method}, "
            f"{result.history.loss.size} steps, {result.starts.shape[0]} starts); "
            f"gamma = {np.array2string(result.gamma, precision=3)}, loss = "
            f"{result.loss:.4g} +- {result.loss_standard_error:.1g} "
            f"(uniform gamma: {float(baseline.value):.4g})"
        )


if __name__ == "__main__":
    main()
