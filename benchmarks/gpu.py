"""The benchmark suite on one accelerator: larger sizes, the same report, < 5 minutes.

    python benchmarks/gpu.py --out benchmarks/results-gpu

Runs ``benchmarks/run.py`` with the ``gpu`` profile: batches of up to 2^20 trials,
a 2^26-word elementwise limit, points of 10^5, 10^6 and 10^7 trials in chunks of
2^17, and the main job. The profile has a time budget of 270 seconds: once it is
spent, the remaining decoding and scaling cases and points are left out (the report
lists them), and the main job runs only if a minute is left for it. The per-matrix
loops (galois, NumPy) run on the host's CPU, as they would for a researcher; galois
rows say n/a where galois is not installed.

It refuses to run without an accelerator, unless ``--allow-cpu`` is given (which
checks the script itself, on the ``quick`` profile, on any machine).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=HERE / "results-gpu",
        help="folder for report.md, results.json and scaling.png",
    )
    parser.add_argument(
        "--allow-cpu",
        action="store_true",
        help="run the quick profile where no accelerator is found",
    )
    args = parser.parse_args(argv)

    import jax

    platforms = {d.platform for d in jax.devices()}
    profile = "gpu"
    if platforms <= {"cpu"}:
        if not args.allow_cpu:
            print(
                "benchmarks/gpu.py: no accelerator found (JAX sees only "
                f"{', '.join(str(d) for d in jax.devices())}); run "
                "benchmarks/run.py on a CPU, or pass --allow-cpu to check this "
                "script on the quick profile",
                file=sys.stderr,
            )
            return 2
        profile = "quick"
    shown = sys.argv[1:] if argv is None else argv
    return run.main(
        ["--profile", profile, "--out", str(args.out)],
        command=" ".join(["python", "benchmarks/gpu.py", *shown]),
    )


if __name__ == "__main__":
    sys.exit(main())
