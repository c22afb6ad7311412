"""The `uepjax` command: run sweeps, draw their figures, tune and train.

uepjax sweep sweeps/paper-synthetic.toml --out results/paper-synthetic
uepjax sweep sweeps/field-gap.toml --out results/field-gap      # resumes if killed
uepjax sweep sweeps/field-gap.toml --out results/field-gap \\
    --coordinator 10.0.0.1:8476 --num-processes 2 --process-id 0
uepjax plot results/field-gap
uepjax tune sweeps/tune-paper.toml --out results/tune
uepjax train --config sweeps/train-digits.toml --out results/train
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

__all__ = ["main", "build_parser", "sweep_crossovers"]

# The subcommands that live in their own modules, imported only when they run. Each
# module has `add_arguments(parser)` and `run(args, say) -> int`; `say` (below) is
# how they print.
EXTERNAL = {
    "tune": (
        ("uepjax.tune_report", "uepjax.tune"),
        "tune window probabilities against the paper's",
    ),
    "train": (("uepjax.train",), "train a network with coded matrix products"),
}


def _split_the_cpu(count: int | None) -> None:
    """Makes XLA show the CPU as `count` devices; before anything touches a device."""
    if count is None:
        return
    if count < 1:
        raise ValueError(f"--cpu-devices must be a positive integer (got {count})")
    import jax

    jax.config.update("jax_num_cpu_devices", count)


def _initialize_distributed(args) -> None:
    from uepjax import distributed

    manual = (args.coordinator, args.num_processes, args.process_id)
    if any(v is not None for v in manual) or args.cluster:
        distributed.initialize(*manual, timeout_seconds=args.distributed_timeout)


def _devices(args):
    if args.devices is None:
        return None
    import jax

    local = jax.local_devices()
    if not 1 <= args.devices <= len(local):
        raise ValueError(
            f"--devices must lie in [1, {len(local)}], the local devices "
            f"(got {args.devices})"
        )
    return local[: args.devices]


def _sweep(args) -> int:
    # The CPU's devices and jax.distributed must be set up before anything touches a
    # device, and importing uepjax.sweep builds default configs on the device.
    _split_the_cpu(args.cpu_devices)
    _initialize_distributed(args)
    from uepjax import config, distributed, simulate, sweep

    try:
        experiment = sweep.load_config(args.config)
    except config.ConfigError as error:
        print(f"uepjax sweep: {error}", file=sys.stderr)
        return 2
    if args.chunk_size is not None and (
        args.chunk_size < 1 or args.chunk_size % simulate.BLOCK_TRIALS
    ):
        raise ValueError(
            f"--chunk-size must be a positive multiple of {simulate.BLOCK_TRIALS} "
            f"(got {args.chunk_size})"
        )
    quiet = args.quiet or not distributed.is_main_process()
    if isinstance(experiment, sweep.SyntheticExperiment):
        return _synthetic(args, experiment, quiet)
    return _grid(args, experiment, quiet)


def _synthetic(args, experiment, quiet: bool) -> int:
    import dataclasses

    from tqdm import tqdm

    from uepjax import sweep

    if args.chunk_size is not None:
        trials = dataclasses.replace(experiment.monte_carlo, chunk_size=args.chunk_size)
        experiment = dataclasses.replace(experiment, monte_carlo=trials)
    started = time.perf_counter()
    total = sweep.total_trials(experiment)
    with tqdm(
        total=total,
        unit="trial",
        unit_scale=True,
        desc=Path(args.config).stem,
        disable=quiet,
        dynamic_ncols=True,
    ) as bar:

        def announce(message: str) -> None:
            if not quiet:
                bar.write(f"  {message}")

        files = sweep.run_synthetic(
            experiment, args.out, bar.update, announce, devices=_devices(args)
        )
    if not quiet:
        print(
            f"wrote {len(files)} files to {args.out} in "
            f"{time.perf_counter() - started:.1f} s"
        )
        crossovers = sweep_crossovers(files.get("crossovers"))
        if crossovers:
            print(crossovers)
    return 0


def _progress_bar(name: str, quiet: bool):
    """A `runner.Events` that draws one bar: trials, points done, time left."""
    from tqdm import tqdm

    from uepjax import runner

    class Bar(runner.Events):
        def __init__(self):
            self.bar = None
            self.points = 0
            self.done = 0
            self.used = 0
            self.budget = 0

        def sweep_started(self, total, reused, budget):
            self.points, self.done = total, reused
            self.budget = budget // max(total - reused, 1)
            self.bar = tqdm(
                total=budget,
                unit="trial",
                unit_scale=True,
                disable=quiet,
                dynamic_ncols=True,
                desc=f"{name} {reused}/{total} points",
            )

        def point_started(self, point):
            self.used = 0
            self.bar.set_postfix_str(point.label, refresh=True)

        def trials(self, count):
            self.used += count
            self.bar.update(count)

        def point_finished(self, point, record, computed):
            self.done += 1
            # A point that stopped on confidence leaves budget unused: drop it from
            # the total so that the time left stays an honest upper bound.
            unused = max(self.budget - self.used, 0)
            self.bar.total = max(self.bar.total - unused, self.bar.n)
            self.bar.set_description_str(f"{name} {self.done}/{self.points} points")
            if not quiet:
                error = record.get("largest_standard_error")
                error = "" if error is None else f", largest s.e. {error:.2g}"
                self.bar.write(
                    f"  point {point.index} ({point.label}): {record['trials']} "
                    f"trials, stopped on {record['stop_reason']}{error}, "
                    f"{record['seconds']:.1f} s"
                )

        def message(self, text):
            if not quiet:
                self.bar.write(f"  {text}")

        def close(self):
            if self.bar is not None:
                self.bar.close()

    return Bar()


def _grid(args, experiment, quiet: bool) -> int:
    from uepjax import runner

    bar = _progress_bar(experiment.name, quiet)
    try:
        result = runner.run_grid(
            experiment,
            args.out,
            bar,
            devices=_devices(args),
            chunk_size=args.chunk_size,
        )
    finally:
        bar.close()
    if not quiet:
        print(
            f"computed {len(result.computed)} point(s), reused {len(result.reused)}; "
            f"wrote {len(result.files)} files to {args.out} in {result.seconds:.1f} s"
        )
    return 0


def sweep_crossovers(path) -> str:
    """A short table of the crossover times against MDS, for the terminal."""
    if path is None:
        return ""
    from uepjax import plot

    rows = plot.read_csv(path)
    lines = ["crossover with MDS (time after which MDS has the lower loss):"]
    lines.append(f"  {'partition':<9} {'scheme':<6} {'source':<12} {'field':<18} t")
    for r in rows:
        lines.append(
            f"  {r['partition']:<9} {r['scheme']:<6} {r['source']:<12} "
            f"{r['field']:<18} {float(r['crossover_t']):.3f}"
        )
    return "\n".join(lines)


def _plot(args) -> int:
    from uepjax import plot

    folder = Path(args.folder)
    if not folder.is_dir():
        print(f"uepjax plot: {folder} is not a results folder", file=sys.stderr)
        return 2
    made = plot.figures(folder)
    if not made:
        print(
            f"uepjax plot: no results.csv or figure CSV files in {folder}",
            file=sys.stderr,
        )
        return 2
    for path in made.values():
        print(path)
    return 0


def say(message: str, error: bool = False) -> None:
    """Prints one message of a subcommand, to stderr if `error`, else to stdout."""
    print(message, file=sys.stderr if error else sys.stdout, flush=True)


def _external(command: str, extra: list[str]) -> int:
    """Runs a subcommand whose module is imported only now."""
    candidates, _ = EXTERNAL[command]
    module = None
    for name in candidates:
        try:
            found = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:
                raise
            continue
        if hasattr(found, "add_arguments") and hasattr(found, "run"):
            module = found
            break
    if module is None:
        print(
            f"uepjax {command}: this installation has no {command} command yet (looked "
            f"for add_arguments and run in {', '.join(candidates)})",
            file=sys.stderr,
        )
        return 2
    parser = argparse.ArgumentParser(prog=f"uepjax {command}")
    module.add_arguments(parser)
    return module.run(parser.parse_args(extra), say)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `uepjax` command."""
    parser = argparse.ArgumentParser(
        prog="uepjax",
        description="Straggler-tolerant distributed matrix products with UEP codes.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    sweep = commands.add_parser(
        "sweep",
        help="run a sweep config from sweeps/",
        description="Run a sweep config. A grid sweep resumes in --out: started "
        "again with the same command, it skips the points already done.",
    )
    sweep.add_argument(
        "config", help="a TOML sweep config, e.g. sweeps/paper-synthetic.toml"
    )
    sweep.add_argument("--out", required=True, help="folder for the results")
    sweep.add_argument("--quiet", action="store_true", help="no progress output")
    sweep.add_argument(
        "--devices",
        type=int,
        help="use the first N local devices (default: all of them)",
    )
    sweep.add_argument(
        "--cpu-devices",
        type=int,
        help="split the CPU into N XLA devices, each taking a share of every chunk "
        "(one per core is fastest; same numbers)",
    )
    sweep.add_argument(
        "--chunk-size",
        type=int,
        help="trials decoded at once by each process (memory; same numbers)",
    )
    group = sweep.add_argument_group(
        "many processes or hosts (jax.distributed; run the same command on each)"
    )
    group.add_argument("--coordinator", help="host:port of process 0")
    group.add_argument("--num-processes", type=int, help="the number of processes")
    group.add_argument("--process-id", type=int, help="this process's index")
    group.add_argument(
        "--cluster",
        action="store_true",
        help="let JAX detect the cluster (SLURM, Open MPI, ...) instead",
    )
    group.add_argument(
        "--distributed-timeout",
        type=int,
        default=300,
        help="seconds to wait for the other processes (default 300)",
    )
    sweep.set_defaults(run=_sweep)

    plot = commands.add_parser("plot", help="draw the figures of a results folder")
    plot.add_argument("folder", help="a folder written by `uepjax sweep`")
    plot.set_defaults(run=_plot)

    for command, (_, help_text) in EXTERNAL.items():
        # Their own parsers read the rest of the line once their module is imported.
        external = commands.add_parser(command, help=help_text, add_help=False)
        external.set_defaults(run=None)
    return parser


def main(argv=None) -> int:
    """Entry point of the `uepjax` console script."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        if args.command in EXTERNAL:
            return _external(args.command, extra)
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return args.run(args)
    except ValueError as error:
        print(f"uepjax {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
