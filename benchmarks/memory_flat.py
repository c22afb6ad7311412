"""Peak memory of a Monte Carlo point does not grow with its number of trials.

Runs one small point (EW-UEP, k = (3, 3, 3), W = 30, GF(2^8), 41 deadlines, a
diagonal Gram matrix) for each requested number of trials, each in a fresh process,
and prints the wall time, the throughput and the peak resident set size of that
process (`resource.getrusage`, which covers the Python heap, JAX's buffers and the
compiled program). Trials run in chunks and every block of 1024 trials is reduced on
its device, so the peak depends on the chunk size, not on the number of trials: what
holds for 10^6 and 10^7 trials holds for 10^8 (a run 10 times longer at the same
peak).

    python benchmarks/memory_flat.py                      # 10^5, 10^6 and 10^7 trials
    python benchmarks/memory_flat.py --trials 1000000 --chunk-size 16384
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _child(trials: int, chunk_size: int) -> None:
    import jax
    import numpy as np

    from uepjax import codes, latency, simulate

    code = codes.ew((3, 3, 3), (0.40, 0.35, 0.25))
    energies = np.array([100.0, 10.0, 10.0, 1.0, 1.0, 1.0, 0.1, 0.1, 0.01])
    arguments = dict(
        gram=energies,
        response_time=latency.Exponential(1.0),
        deadlines=np.linspace(0.0, 2.0, 41),
        chunk_size=chunk_size,
    )
    # Compile on a small run first, so that the timing is the steady state.
    simulate.curves(jax.random.key(1), code, 256, 30, chunk_size, **arguments)
    started = time.perf_counter()
    result = simulate.curves(jax.random.key(0), code, 256, 30, trials, **arguments)
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            dict(
                trials=result.by_deadline.trials,
                seconds=seconds,
                peak_mib=peak_kib / 1024,
                loss_at_1=float(result.by_deadline.mean[20]),
                standard_error_at_1=float(result.by_deadline.standard_error[20]),
                devices=[str(d) for d in jax.local_devices()],
            )
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--trials", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000]
    )
    parser.add_argument("--chunk-size", type=int, default=8192)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        _child(args.child, args.chunk_size)
        return 0
    print(f"{'trials':>12} {'seconds':>9} {'trials/s':>10} {'peak RSS':>10}  loss(t=1)")
    for trials in args.trials:
        command = [
            sys.executable,
            __file__,
            "--child",
            str(trials),
            "--chunk-size",
            str(args.chunk_size),
        ]
        output = subprocess.run(command, capture_output=True, text=True, check=True)
        row = json.loads(output.stdout.strip().splitlines()[-1])
        print(
            f"{row['trials']:>12} {row['seconds']:>9.1f} "
            f"{row['trials'] / row['seconds']:>10.0f} {row['peak_mib']:>7.0f} MiB  "
            f"{row['loss_at_1']:.5f} +- {row['standard_error_at_1']:.1e}",
            flush=True,
        )
    print(f"devices: {', '.join(row['devices'])}; chunk size {args.chunk_size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
