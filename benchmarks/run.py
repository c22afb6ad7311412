"""uepjax benchmarks: throughput and scaling against baselines and the machine's limit.

One command measures everything in a single run and writes ``report.md`` (tables),
``results.json`` (every timing) and ``scaling.png`` into ``--out``:

    python benchmarks/run.py --out benchmarks/results    # 40 min, busy 2-core CPU
    python benchmarks/run.py --quick --out /tmp/bench    # a smoke run, about 1 min
    python benchmarks/run.py --report-only --out benchmarks/results    # redraw
    python benchmarks/run.py --only decode --out /tmp/bench    # one section

Sections, in order: the elementwise limit of every field; batched rank against a
per-matrix galois loop and NumPy; progressive decoding against a plain vmapped
Gauss-Jordan in JAX, NumPy and galois at the paper's sizes and scaled up; scaling
with trials, sub-products and workers; the end-to-end time and peak memory of a
point of the paper's setting (one fresh process per field, increasing trials); the
end-to-end time of the main job (``uepjax sweep sweeps/paper-synthetic.toml``).
``benchmarks/gpu.py`` runs the same on one accelerator with larger sizes.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPOSITORY = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
# A machine without an installed uepjax (a fresh accelerator host) runs the checkout.
if str(REPOSITORY) not in sys.path:
    sys.path.append(str(REPOSITORY))

import report  # noqa: E402
import suite  # noqa: E402
from targets import targets  # noqa: E402
from timing import load_average  # noqa: E402

__all__ = ["PROFILES", "main", "run"]

MAIN_JOB = "sweeps/paper-synthetic.toml"

PROFILES = {
    "cpu": suite.Profile(name="cpu"),
    "quick": suite.Profile(
        name="quick",
        fields=(256,),
        sizes=((9, 30),),
        operations=2e5,
        min_trials=64,
        max_trials=512,
        repeats=1,
        rank_trials=256,
        loop_items=3,
        loop_seconds=0.05,
        limit_elements=2**14,
        limit_seconds=0.01,
        limit_variants=((4, 4, 1),),
        compiled_memory=False,
        scaling_trials=(64,),
        scaling_fields=(256,),
        scaling_subproducts=(9,),
        scaling_subproducts_workers=30,
        scaling_workers=(30,),
        point_fields=(256,),
        point_now_fields=(),
        point_multi_device_fields=(),
        point_trials=(1024, 2048),
        chunk_size=1024,
        main_job=False,
    ),
    "gpu": suite.Profile(
        name="gpu",
        operations=2e9,
        min_trials=4096,
        max_trials=2**20,
        repeats=3,
        rank_trials=2**20,
        loop_items=100,
        loop_seconds=0.5,
        limit_elements=2**26,
        limit_seconds=0.2,
        scaling_trials=(2**12, 2**14, 2**16, 2**18, 2**20),
        point_trials=(10**5, 10**6, 10**7),
        chunk_size=2**17,
        time_budget=270.0,
        main_job_seconds=75.0,
    ),
}
"""The sizes of a CPU run, of a smoke run and of a run on one accelerator."""

# ---------------------------------------------------------------------------------
# The end-to-end point, in a fresh process per field.


def _device_peak_bytes() -> int | None:
    import jax

    stats = jax.local_devices()[0].memory_stats()
    if not stats:
        return None
    return stats.get("peak_bytes_in_use")


def _point_child(spec: dict) -> dict:
    """Runs the paper's point for increasing trials in this (fresh) process."""
    import jax
    import numpy as np

    from uepjax import codes, simulate, sweep

    experiment = sweep.load_config(REPOSITORY / MAIN_JOB)
    key = jax.random.key(experiment.seed)
    key_rxc, key_cxr, key_trials = jax.random.split(key, 3)
    grams = np.stack(
        [
            sweep.PaperMatrices("rxc", key_rxc, experiment.matrices).gram,
            sweep.PaperMatrices("cxr", key_cxr, experiment.matrices).gram,
        ]
    )
    scheme = spec.get("scheme", "ew")
    code = codes.make_code(scheme, experiment.code.class_sizes, experiment.code.gamma)
    if scheme == "now":
        # Every call decodes class by class, as one of 10^6 trials does, so that
        # the warm-up compiles the program that the timed calls run.
        simulate.BLOCK_DECODING_TRIALS = 1
    arguments = dict(
        gram=grams,
        response_time=experiment.workers.model(),
        deadlines=experiment.deadlines.values(),
        chunk_size=spec["chunk_size"],
    )
    field, workers = spec["field"], experiment.workers.count
    started = time.perf_counter()
    warm = simulate.curves(
        jax.random.key(1), code, field, workers, spec["chunk_size"], **arguments
    )
    jax.block_until_ready(warm.by_deadline.mean)
    compile_seconds = time.perf_counter() - started
    warm_peak = suite.peak_rss_mib()
    # Runs of many chunks peaked 23-90 MiB above a first run of one or two, in
    # the same process, also with the chunks run one at a time: memory the
    # allocator keeps. The warm-up brings the process to that level, as it
    # brings the program to compiled.
    steady = simulate.curves(
        jax.random.key(2),
        code,
        field,
        workers,
        STEADY_CHUNKS * spec["chunk_size"],
        **arguments,
    )
    jax.block_until_ready(steady.by_deadline.mean)
    record = dict(
        field=suite.field_label(field),
        scheme=scheme,
        compile_seconds=compile_seconds,
        warm_peak_rss_mib=max(warm_peak, suite.peak_rss_mib()),
        deadlines=len(arguments["deadlines"]),
        chunk_size=spec["chunk_size"],
        devices=len(jax.local_devices()),
        runs=[],
    )
    for trials in spec["trials"]:
        # The peak of each run on its own, where Linux can restart the mark.
        reset = suite.reset_peak_rss()
        before = suite.rss_mib()
        wall, cpu = time.perf_counter(), time.process_time()
        result = simulate.curves(key_trials, code, field, workers, trials, **arguments)
        record["runs"].append(
            dict(
                trials=result.by_deadline.trials,
                seconds=time.perf_counter() - wall,
                cpu_seconds=time.process_time() - cpu,
                rss_before_mib=before,
                peak_rss_mib=suite.peak_rss_mib(),
                peak_is_per_run=reset,
                device_peak_bytes=_device_peak_bytes(),
                loss_at_t1_rxc=float(result.by_deadline.mean[0, 40]),
            )
        )
    return record


MALLOC_ARENAS = 2
"""glibc malloc arenas of a point's process (``MALLOC_ARENA_MAX``).

With glibc's default (8 arenas per core) the RSS of a process creeps up while
XLA's threads grow arenas of their own, and then stays: on the paper's EW point
over GF(2^31 - 1), 573, 596 and 596 MiB after 10^6, 3 x 10^6 and 10^7 trials in
one process. With 2 arenas the peak was 538 MiB from 10^4 to 3 x 10^6 trials, at
the same speed. The flat-memory target is about the engine's buffers, so the
points run with 2 arenas, and each record says so.
"""


STEADY_CHUNKS = 16
"""Chunks a point's process runs after compiling and before the measured runs."""


def _in_child(flag: str, spec: dict, timeout: float, env=None) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), flag, json.dumps(spec)]
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
            env=env,
        )
    except subprocess.CalledProcessError as error:
        tail = (error.stderr or "").strip().splitlines()[-3:]
        return dict(error=" / ".join(tail) or f"exit status {error.returncode}")
    except subprocess.TimeoutExpired:
        return dict(error=f"did not finish within {timeout:.0f} s")
    return json.loads(done.stdout.strip().splitlines()[-1])


def points(
    profile: suite.Profile, time_left=lambda: math.inf, say=print
) -> tuple[list, list]:
    """The paper's point for every field of the profile, each in a fresh process.

    Returns:
        ``(records, skipped)``: one record per field measured, and the fields left
        out once ``time_left()`` is not positive.
    """
    import jax

    found, skipped = [], []
    one_device = dict(os.environ, MALLOC_ARENA_MAX=str(MALLOC_ARENAS))
    runs = [(q, one_device, "ew") for q in profile.point_fields]
    runs += [(q, one_device, "now") for q in profile.point_now_fields]
    cores = os.cpu_count() or 1
    if jax.default_backend() == "cpu" and cores > 1:
        # The engine splits each chunk over the local devices; on a CPU, XLA makes
        # one device per core only when asked to.
        flags = os.environ.get("XLA_FLAGS", "")
        env = dict(
            one_device,
            XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={cores}",
        )
        runs += [(q, env, "ew") for q in profile.point_multi_device_fields]
    for q, env, scheme in runs:
        several = env is not one_device
        label = suite.field_label(q) + (f", {cores} devices" if several else "")
        label += ", NOW" if scheme == "now" else ""
        if time_left() <= 0:
            skipped.append(f"the paper's point over {label}")
            continue
        spec = dict(
            field=q,
            scheme=scheme,
            trials=list(profile.point_trials),
            chunk_size=profile.chunk_size,
        )
        timeout = min(3600.0, max(60.0, time_left() + 60.0))
        say(f"  {label}: {', '.join(map(str, profile.point_trials))} trials")
        record = _in_child("--child-point", spec, timeout=timeout, env=env)
        record.setdefault("field", suite.field_label(q))
        record.setdefault("devices", cores if several else 1)
        record["malloc_arenas"] = MALLOC_ARENAS
        found.append(record)
    return found, skipped


# ---------------------------------------------------------------------------------
# The main job.


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    return "[" + ", ".join(_toml_value(v) for v in value) + "]"


def _toml(table: dict, prefix: tuple[str, ...] = ()) -> str:
    """A TOML document for a table of scalars, lists and tables."""
    lines = [
        f"{k} = {_toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)
    ]
    for k, v in table.items():
        if isinstance(v, dict):
            lines += ["", f"[{'.'.join((*prefix, k))}]", _toml(v, (*prefix, k))]
    return "\n".join(lines)


def main_job(profile: suite.Profile) -> dict:
    """Wall and CPU time of ``uepjax sweep sweeps/paper-synthetic.toml``."""
    from uepjax import config

    table = config.load_toml(REPOSITORY / MAIN_JOB)
    with tempfile.TemporaryDirectory(prefix="uepjax-bench-") as folder:
        path = REPOSITORY / MAIN_JOB
        if profile.main_job_trials or profile.main_job_fields:
            if profile.main_job_trials:
                table["monte_carlo"]["trials"] = profile.main_job_trials
            if profile.main_job_fields:
                table["monte_carlo"]["fields"] = list(profile.main_job_fields)
            path = Path(folder) / "main-job.toml"
            path.write_text(_toml(table) + "\n")
        out = Path(folder) / "out"
        command = [
            sys.executable,
            "-m",
            "uepjax.cli",
            "sweep",
            str(path),
            "--out",
            str(out),
            "--quiet",
        ]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPOSITORY)
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        record = dict(
            config=MAIN_JOB
            if path == REPOSITORY / MAIN_JOB
            else f"{MAIN_JOB} (trials {table['monte_carlo']['trials']}, fields "
            f"{table['monte_carlo']['fields']})",
            trials=table["monte_carlo"]["trials"],
            fields=", ".join(
                suite.field_label(q) for q in table["monte_carlo"]["fields"]
            ),
            seconds=seconds,
            cpu_seconds=(after.ru_utime + after.ru_stime)
            - (before.ru_utime + before.ru_stime),
        )
        if done.returncode != 0:
            tail = done.stderr.strip().splitlines()[-3:]
            record["error"] = " / ".join(tail) or f"exit status {done.returncode}"
            return record
        run_record = out / "run.json"
        if run_record.is_file():
            record["job_seconds"] = json.loads(run_record.read_text()).get("seconds")
    return record


# ---------------------------------------------------------------------------------
# The run.


def _engine_snapshot() -> dict:
    """Which engine was measured: the commit and a digest of ``uepjax/*.py``.

    Other developers edit the engine while benchmarks run; the digest (of the files
    as they were when the run started) says exactly which sources the numbers
    belong to, uncommitted changes included.
    """
    import hashlib

    digest = hashlib.sha256()
    sources = sorted((REPOSITORY / "uepjax").glob("*.py"))
    for path in sources:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    commit = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=REPOSITORY,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    newest = max((p.stat().st_mtime for p in sources), default=0.0)
    return dict(
        commit=commit,
        sources_sha256=digest.hexdigest()[:16],
        newest_source=datetime.datetime.fromtimestamp(newest, datetime.UTC).strftime(
            "%Y-%m-%d %H:%M UTC"
        ),
    )


def _meta(profile: suite.Profile, command: str) -> dict:
    import jax

    return dict(
        engine=_engine_snapshot(),
        profile=profile.name,
        command=command,
        date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        machine=f"{platform.machine()} {platform.processor() or platform.system()}",
        cpus=os.cpu_count(),
        jax=jax.__version__,
        python=platform.python_version(),
        devices=", ".join(sorted({d.device_kind for d in jax.devices()})),
        load_start=load_average(),
    )


def run(
    profile: suite.Profile, out: Path, sections: set[str], say, command: str
) -> dict:
    """Measures every requested section and writes the report into ``out``.

    Args:
        profile: the sizes of the run.
        out: the folder for ``report.md``, ``results.json`` and ``scaling.png``.
        sections: the sections to measure (the limits always run).
        say: prints a line of progress.
        command: the command line, for the report.
    """
    started = time.perf_counter()
    budget = math.inf if profile.time_budget is None else profile.time_budget
    reserve = profile.main_job_seconds if "main" in sections else 0.0

    def time_left(keep: float = reserve) -> float:
        return budget - keep - (time.perf_counter() - started)

    results = dict(
        meta=_meta(profile, command), profile=dataclasses.asdict(profile), skipped=[]
    )
    say("elementwise limits")
    results["limits"], kernels = suite.elementwise_limits(profile)
    results["rank"], results["decode"], results["breakdown"] = [], [], []
    results["scaling"] = dict(trials=[], subproducts=[], workers=[])
    out.mkdir(parents=True, exist_ok=True)

    def checkpoint() -> None:
        # An interrupted run keeps what it measured (redraw with --report-only).
        (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")

    if "rank" in sections:
        say("batched rank against galois and NumPy")
        results["rank"] = suite.rank_comparison(profile, kernels)
        checkpoint()
    if "decode" in sections:
        say("decoding throughput against the baselines")
        results["decode"], skipped = suite.decoding(profile, kernels, time_left, say)
        results["skipped"] += skipped
        results["breakdown"] = suite.trial_breakdown(profile, results["decode"])
        results["now_blocks"], skipped = suite.now_blocks(profile, time_left, say)
        results["skipped"] += skipped
        checkpoint()
    if "scaling" in sections:
        say("scaling with trials, sub-products and workers")
        results["scaling"], skipped = suite.scaling(
            profile, kernels, results["decode"], time_left, say
        )
        results["skipped"] += skipped
        checkpoint()
    if "point" in sections:
        say("the paper's point end to end, one process per field")
        results["point"], skipped = points(profile, time_left, say)
        results["skipped"] += skipped
        checkpoint()
    if "main" in sections and profile.main_job:
        if time_left(0.0) >= profile.main_job_seconds:
            say("the main job")
            results["main_job"] = main_job(profile)
        else:
            results["skipped"].append("the main job")
    if results["skipped"]:
        say(f"skipped for the time budget: {', '.join(results['skipped'])}")
    results["targets"] = targets(results)
    results["meta"]["load_end"] = load_average()
    results["meta"]["seconds"] = time.perf_counter() - started
    write(results, out)
    return results


def write(results: dict, out: Path) -> None:
    """Writes ``results.json``, ``report.md`` and ``scaling.png`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    report.plot_scaling(results, out / "scaling.png")
    (out / "report.md").write_text(report.render(results))


SECTION_NAMES = ("rank", "decode", "scaling", "point", "main")


def main(argv: list[str] | None = None, command: str | None = None) -> int:
    """The command line; ``command`` is what the report says was run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, help="folder for report.md, results.json and scaling.png"
    )
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default=None,
        help="sizes of the run (default cpu)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the small smoke-test profile (same as --profile quick)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SECTION_NAMES,
        help="measure only these sections (limits always run)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="redraw report.md and scaling.png from results.json",
    )
    parser.add_argument("--child-point", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_point is not None:
        print(json.dumps(_point_child(json.loads(args.child_point))))
        return 0
    if args.out is None:
        parser.error("--out is required")
    if args.report_only:
        results = json.loads((args.out / "results.json").read_text())
        results["targets"] = targets(results)
        write(results, args.out)
        return 0
    if args.quick and args.profile not in (None, "quick"):
        parser.error("--quick and --profile disagree")
    name = "quick" if args.quick else (args.profile or "cpu")
    sections = set(args.only or SECTION_NAMES)

    def say(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    if command is None:
        shown = sys.argv[1:] if argv is None else argv
        command = " ".join(["python", "benchmarks/run.py", *shown])
    results = run(PROFILES[name], args.out, sections, say, command)
    for target in results["targets"]:
        verdict = {True: "holds", False: "MISSED", None: "n/a"}[target["holds"]]
        print(
            f"  {verdict:>6}  {target['name']}: {target['measured']} "
            f"(required {target['required']})"
        )
    print(f"wrote {args.out / 'report.md'} in {results['meta']['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
