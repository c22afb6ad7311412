"""The `uepjax` command: run sweeps and draw their figures.

uepjax sweep sweeps/paper-synthetic.toml --out results/paper-synthetic
uepjax plot results/paper-synthetic
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["main"]


def _sweep(args) -> int:
    from tqdm import tqdm

    from uepjax import config, sweep

    try:
        experiment = sweep.load_config(args.config)
    except config.ConfigError as error:
        print(f"uepjax sweep: {error}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    total = sweep.total_trials(experiment)
    with tqdm(
        total=total,
        unit="trial",
        unit_scale=True,
        desc=Path(args.config).stem,
        disable=args.quiet,
        dynamic_ncols=True,
    ) as bar:

        def announce(message: str) -> None:
            if not args.quiet:
                bar.write(f"  {message}")

        files = sweep.run_synthetic(experiment, args.out, bar.update, announce)
    if not args.quiet:
        print(
            f"wrote {len(files)} files to {args.out} in "
            f"{time.perf_counter() - started:.1f} s"
        )
        crossovers = sweep_crossovers(files.get("crossovers"))
        if crossovers:
            print(crossovers)
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
    made = plot.synthetic_figures(folder)
    if not made:
        print(f"uepjax plot: no figure CSV files in {folder}", file=sys.stderr)
        return 2
    for path in made.values():
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="uepjax",
        description="Straggler-tolerant distributed matrix products with UEP codes.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    sweep = commands.add_parser("sweep", help="run a sweep config from sweeps/")
    sweep.add_argument(
        "config", help="a TOML sweep config, e.g. sweeps/paper-synthetic.toml"
    )
    sweep.add_argument("--out", required=True, help="folder for the results")
    sweep.add_argument("--quiet", action="store_true", help="no progress output")
    sweep.set_defaults(run=_sweep)

    plot = commands.add_parser("plot", help="draw the figures of a results folder")
    plot.add_argument("folder", help="a folder written by `uepjax sweep`")
    plot.set_defaults(run=_plot)
    return parser


def main(argv=None) -> int:
    """Entry point of the `uepjax` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ValueError as error:
        print(f"uepjax {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
