"""Writes the benchmark's Markdown report and its scaling plot from ``results.json``.

The report is a pure function of the results dict, so it can be redrawn from a saved
``results.json`` without measuring anything again (``python benchmarks/run.py
--report-only --out DIR``).
"""

from __future__ import annotations

import math
from pathlib import Path

__all__ = ["SECTIONS", "render", "plot_scaling"]

SECTIONS = (
    "## Targets",
    "## The machine's limit",
    "## Batched rank against per-matrix loops",
    "## Decoding throughput",
    "## Decoding against the baselines",
    "## Fraction of the limit",
    "## Scaling",
    "## End to end",
)
"""The headings every report has, in order (the smoke test checks them)."""


def _si(value, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}".rstrip()
    return f"{value:.3g} {unit}".rstrip()


def _seconds(value) -> str:
    if value is None:
        return "n/a"
    if value >= 1:
        return f"{value:.3g} s"
    if value >= 1e-3:
        return f"{value * 1e3:.3g} ms"
    if value >= 1e-6:
        return f"{value * 1e6:.3g} us"
    return f"{value * 1e9:.3g} ns"


def _ratio(value) -> str:
    if value is None:
        return "n/a"
    if value >= 100:
        return f"{value:,.0f}x"
    return f"{value:.3g}x"


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.3g}%"


def _mib(value) -> str:
    return "n/a" if value is None else f"{value / 2**20:.3g} MiB"


def _load(value) -> str:
    return "n/a" if not isinstance(value, int | float) else f"{value:.2f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join(" --- " for _ in header) + "|")
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _agree(value) -> str:
    if value is None:
        return "n/a"
    return "yes" if value == 1.0 else f"{100 * value:.4g}%"


def _get(record: dict, *path):
    for key in path:
        if record is None or key not in record:
            return None
        record = record[key]
    return record


def _targets(results: dict) -> list[str]:
    rows = []
    for target in results.get("targets", []):
        verdict = {True: "holds", False: "**missed**", None: "not measured"}[
            target["holds"]
        ]
        rows.append(
            [
                target["name"],
                target["required"],
                target["measured"],
                verdict,
                target.get("note", ""),
            ]
        )
    return _table(["target", "required", "measured", "verdict", "how / why"], rows)


def _limits(results: dict) -> list[str]:
    rows = []
    for label, record in results["limits"].items():
        shapes = ", ".join(
            f"{name}: {_si(v['rate'])}" for name, v in record["variants"].items()
        )
        shape = record.get("shape", f"{record['chains']}x{record['unroll']}")
        rows.append(
            [
                label,
                _si(record["rate"], "op/s"),
                f"{shape}, {record['loops']} loops over {record['elements']:,} words",
                shapes,
            ]
        )
    return _table(
        [
            "field",
            "multiply-subtracts per second",
            "fastest shape",
            "every shape (chains x steps, width)",
        ],
        rows,
    )


def _rank(results: dict) -> list[str]:
    rows = []
    for r in results["rank"]:
        rows.append(
            [
                r["field"],
                f"{r['trials']:,}",
                _seconds(r["uepjax_seconds_per_item"]),
                _seconds(_get(r, "galois_loop", "seconds_per_item")),
                _seconds(r["numpy_loop"]["seconds_per_item"]),
                _seconds(
                    r.get(
                        "numpy_batched_seconds_per_item",
                        r["numpy_batched"]["wall"] / r["trials"],
                    )
                ),
                _ratio(r.get("speedup_galois")),
                _ratio(r["speedup_numpy_loop"]),
                _ratio(r["speedup_numpy_batched"]),
                _agree(r["agree"]),
            ]
        )
    header = [
        "field",
        "matrices",
        "uepjax per matrix",
        "galois loop",
        "NumPy loop",
        "NumPy batched",
        "vs galois",
        "vs NumPy loop",
        "vs NumPy batched",
        "same ranks",
    ]
    return _table(header, rows)


def _decode_throughput(results: dict) -> list[str]:
    rows = []
    for r in results["decode"]:
        rows.append(
            [
                r["field"],
                f"{r['subproducts']} x {r['workers']}",
                f"{r['trials']:,}",
                f"{r['rows_per_trial']:.3g}",
                _si(r["progressive"]["per_second"], "trials/s"),
                _si(r["progressive"]["per_cpu_second"]),
                _mib(r.get("memory_bytes")),
            ]
        )
    header = [
        "field",
        "K x W",
        "trials",
        "rows read a trial",
        "progressive (every prefix)",
        "trials per CPU-second",
        "compiled memory",
    ]
    return _table(header, rows)


def _now_blocks(results: dict) -> list[str]:
    rows = [
        [
            r["field"],
            f"{r['subproducts']} x {r['workers']}",
            f"{r['trials']:,}",
            _si(r["one_pass"]["per_second"], "trials/s"),
            _si(r["blocks"]["per_second"], "trials/s"),
            f"{r['speedup']:.2f}x",
            "yes" if r["agree"] else "**no**",
            {True: "blocks", False: "one pass"}.get(r.get("simulator_blocks"), ""),
        ]
        for r in results.get("now_blocks", [])
    ]
    header = [
        "field",
        "K x W",
        "trials",
        "one pass",
        "block by block",
        "speed-up",
        "same indices",
        "simulator uses",
    ]
    return _table(header, rows)


def _decode_baselines(results: dict) -> list[str]:
    rows = []
    for r in results["decode"]:
        progressive = r["progressive"]["per_second"]
        galois = _get(r, "galois_loop", "per_second")
        prefix = _get(r, "galois_prefix_loop", "per_second")
        agree = [
            r.get(k)
            for k in (
                "agree_plain",
                "agree_numpy",
                "agree_numpy_loop",
                "agree_galois",
                "agree_galois_prefix",
            )
        ]
        agree = [a for a in agree if a is not None]
        rows.append(
            [
                r["field"],
                f"{r['subproducts']} x {r['workers']}",
                _si(progressive),
                _si(r["plain"]["per_second"]),
                _si(r["numpy_batched"]["per_second"]),
                _si(r["numpy_loop"]["per_second"]),
                _si(galois),
                _si(prefix),
                _ratio(r["speedup_plain"]),
                _ratio(progressive / galois if galois else None),
                _ratio(progressive / prefix if prefix else None),
                _agree(min(agree) if agree else None),
            ]
        )
    header = [
        "field",
        "K x W",
        "progressive",
        "plain JAX (full set)",
        "NumPy batched (full set)",
        "NumPy loop (full set)",
        "galois loop (full set)",
        "galois loop (every prefix)",
        "vs plain JAX",
        "vs galois (full)",
        "vs galois (every prefix)",
        "same answers",
    ]
    return _table(header, rows)


def _point_label(point: dict) -> str:
    """A point's field, with its code where it is not EW and its devices."""
    label = point["field"]
    if point.get("scheme", "ew") != "ew":
        label += f", {point['scheme'].upper()} code"
    devices = point.get("devices", 1)
    return label if devices == 1 else f"{label} on {devices} XLA devices"


def _difference(seconds: float | None) -> str:
    """A per-trial time found as a difference of two timings; n/a below zero."""
    if seconds is not None and seconds < 0:
        return "n/a"
    return _seconds(seconds)


def _fractions(results: dict) -> list[str]:
    rows = []
    for r in results["rank"]:
        rows.append(
            [
                r["field"],
                f"{r.get('elimination', 'Gauss-Jordan')} rank (`fields.rank`)",
                "15 x 9",
                _si(r["useful_per_second"], "op/s"),
                _si(r["limit_rate"], "op/s"),
                _percent(r["fraction_of_limit"]),
                _percent(r["fraction_of_limit_cpu"]),
            ]
        )
    for r in results["decode"]:
        size = f"{r['workers']} x {r['subproducts']}"
        rows.append(
            [
                r["field"],
                "progressive (`decode.recovery_index`)",
                size,
                _si(r["useful_per_second"], "op/s"),
                _si(r["limit_rate"], "op/s"),
                _percent(r["fraction_of_limit"]),
                _percent(r["fraction_of_limit_cpu"]),
            ]
        )
        rows.append(
            [
                r["field"],
                "plain vmapped Gauss-Jordan (baseline)",
                size,
                _si(r["plain_fraction_of_limit"] * r["limit_rate"], "op/s"),
                _si(r["limit_rate"], "op/s"),
                _percent(r["plain_fraction_of_limit"]),
                "n/a",
            ]
        )
    return _table(
        [
            "field",
            "elimination",
            "W x K",
            "useful operations",
            "limit alongside",
            "fraction of the limit",
            "same, by CPU time",
        ],
        rows,
    )


def _scaling(results: dict) -> list[str]:
    lines = ["### With trials (K = 9, W = 30)", ""]
    rows = [
        [
            r["field"],
            f"{r['trials']:,}",
            _si(r["progressive"]["per_second"], "trials/s"),
            _mib(r.get("memory_bytes")),
        ]
        for r in results["scaling"]["trials"]
    ]
    lines += _table(["field", "trials per call", "throughput", "compiled memory"], rows)
    for name, title in (
        ("subproducts", "With sub-products"),
        ("workers", "With workers"),
    ):
        entries = results["scaling"][name]
        fixed = (
            (
                f"W = {entries[0]['workers']}"
                if name == "subproducts"
                else f"K = {entries[0]['subproducts']}"
            )
            if entries
            else ""
        )
        lines += ["", f"### {title} ({fixed})", ""]
        rows = [
            [
                r["field"],
                f"{r['subproducts']} x {r['workers']}",
                f"{r['trials']:,}",
                f"{r['rows_per_trial']:.3g}",
                _si(r["progressive"]["per_second"], "trials/s"),
                _si(r["useful_per_second"], "op/s"),
                _mib(r.get("memory_bytes")),
            ]
            for r in entries
        ]
        lines += _table(
            [
                "field",
                "K x W",
                "trials",
                "rows read a trial",
                "throughput",
                "useful operations",
                "compiled memory",
            ],
            rows,
        )
    return lines


def _end_to_end(results: dict) -> list[str]:
    lines = [
        "### A point of the paper's setting (EW, K = 9, W = 30, 81 deadlines, two "
        "Gram matrices)",
        "",
    ]
    rows = []
    for point in results.get("point", []):
        if "error" in point:
            rows.append([_point_label(point), "failed", point["error"], *[""] * 5])
            continue
        for run in point["runs"]:
            rows.append(
                [
                    _point_label(point),
                    f"{run['trials']:,}",
                    _seconds(run["seconds"]),
                    _seconds(run["cpu_seconds"]),
                    _si(run["trials"] / run["seconds"], "trials/s"),
                    "n/a"
                    if run.get("rss_before_mib") is None
                    else f"{run['rss_before_mib']:.0f} MiB",
                    f"{run['peak_rss_mib']:.0f} MiB",
                    _mib(run.get("device_peak_bytes")),
                ]
            )
    lines += _table(
        [
            "field",
            "trials",
            "wall",
            "CPU",
            "throughput",
            "RSS before",
            "peak RSS during the run",
            "device peak",
        ],
        rows,
    )
    compiles = [
        f"{_point_label(p)}: {_seconds(p['compile_seconds'])}, peak RSS after it "
        f"{p['warm_peak_rss_mib']:.0f} MiB"
        for p in results.get("point", [])
        if "compile_seconds" in p
    ]
    if compiles:
        lines += [
            "",
            "Compilation and a first chunk, before the timed runs: "
            + "; ".join(compiles)
            + ".",
        ]
    breakdown = results.get("breakdown", [])
    if breakdown:
        lines += [
            "",
            "### Where a trial's time goes (K = 9, W = 30)",
            "",
            "CPU seconds per trial (all threads), the steadier measure of work on a "
            "shared machine. Decoding: `decode.recovery_index` on drawn rows; "
            "drawing: `simulate.sample_recovery` (keys, windows, coefficients, "
            "decoding) minus decoding; the rest of a trial of the paper's point "
            "(losses at 81 deadlines for two Gram matrices, block statistics, "
            "chunks): its largest run minus both. A difference below zero is "
            "shown as n/a: the parts, timed on their own in one large batch, then "
            "took longer than the whole trial in chunks.",
            "",
        ]
        rows = []
        for b in breakdown:
            whole = None
            for point in results.get("point", []):
                if (
                    point["field"] == b["field"]
                    and point.get("runs")
                    and point.get("devices", 1) == 1
                    and point.get("scheme", "ew") == "ew"
                ):
                    run = point["runs"][-1]
                    whole = run["cpu_seconds"] / run["trials"]
            both = b.get("draw_and_decode_cpu_per_trial")
            decode = b.get("decode_cpu_per_trial")
            draw = both - decode if None not in (both, decode) else None
            rest = whole - both if None not in (whole, both) else None
            rows.append(
                [
                    b["field"],
                    _seconds(decode),
                    _difference(draw),
                    _difference(rest),
                    _seconds(whole),
                ]
            )
        lines += _table(
            [
                "field",
                "decoding",
                "drawing keys and rows",
                "losses, deadlines, chunks",
                "whole trial",
            ],
            rows,
        )
    job = results.get("main_job")
    lines += ["", "### The main job", ""]
    if job is None:
        lines.append("Not run in this profile.")
    elif "error" in job:
        lines.append(f"Failed: {job['error']}")
    else:
        lines += _table(
            [
                "config",
                "trials per curve",
                "fields",
                "wall",
                "CPU",
                "inside the job (run.json)",
            ],
            [
                [
                    f"`{job['config']}`",
                    f"{job['trials']:,}",
                    job["fields"],
                    _seconds(job["seconds"]),
                    _seconds(job["cpu_seconds"]),
                    _seconds(job.get("job_seconds")),
                ]
            ],
        )
    return lines


def render(results: dict) -> str:
    """The Markdown report of one run."""
    meta = {"load_end": "n/a", "seconds": None, **results["meta"]}
    lines = [
        "# uepjax benchmarks",
        "",
        f"Profile `{meta['profile']}`, run with `{meta['command']}` on {meta['date']}.",
        f"Machine: {meta['machine']}; JAX {meta['jax']} on {meta['devices']}; "
        f"{meta['cpus']} CPUs; load average {_load(meta['load_start'])} at the start "
        f"and {_load(meta['load_end'])} at the end; the run took "
        f"{_seconds(meta['seconds'])}.",
        "",
        "Throughputs are medians of repeated, warmed-up calls (block_until_ready); "
        "rivals are timed in alternation on the same inputs. The machine is shared: "
        "absolute numbers are illustrative, ratios within this run are the result. "
        "`results.json` holds every timing (wall and CPU, median and minimum).",
        "",
    ]
    engine = meta.get("engine")
    if engine:
        lines[-1:-1] = [
            f"Engine: commit {engine['commit']}, `uepjax/*.py` sha256 "
            f"{engine['sources_sha256']} (newest file {engine['newest_source']}; "
            "uncommitted changes included).",
        ]
    if results.get("skipped"):
        lines += [
            "Left out to keep within the profile's time budget: "
            + "; ".join(results["skipped"])
            + ".",
            "",
        ]
    lines += [SECTIONS[0], ""]
    lines += _targets(results)
    lines += [
        "",
        SECTIONS[1],
        "",
        "A jitted, fused chain of the elimination's multiply-subtract `y - x z` "
        "(the engine's own field arithmetic) over large arrays: what the machine "
        "does when only arithmetic counts. GF(2) counts 32 elements per `uint32` "
        "word (`y ^ ((x >> 1) & z)`: the shift keeps the compiler from folding the "
        "chain). The fastest of several kernel shapes is the limit; sections below "
        "time it again alongside what they measure.",
        "",
    ]
    lines += _limits(results)
    lines += [
        "",
        SECTIONS[2],
        "",
        "Random `15 x 9` matrices; the loops run on a subset and are scaled per "
        "matrix (galois: `np.linalg.matrix_rank` of a galois array).",
        "",
    ]
    lines += _rank(results)
    lines += [
        "",
        SECTIONS[3],
        "",
        "Rows of the paper's EW code (three classes, gamma = (0.40, 0.35, 0.25)), "
        "in arrival order; the progressive decoder gives the recovered set after "
        "every prefix of arrivals. A trial reads only the rows whose support is "
        "not inside the set it has recovered (the others are in its row space), "
        "and it is done when none is left; once a quarter of a batch (of 1024 or "
        "more) is left, the pass goes on with only those trials. 'Rows read a "
        "trial' counts the inserts done, divided by the trials.",
        "",
    ]
    lines += _decode_throughput(results)
    if results.get("now_blocks"):
        lines += [
            "",
            "Rows of the NOW code (same classes and gamma) lie each in one class, so "
            "the classes can be decoded apart, at `k_l^2` an insert instead of "
            "`K^2`. The simulator does so in calls of 10^6 trials or more, over "
            "every field but GF(2), whose packed words hold all `K` coordinates "
            "(last column). The gain depends on the batch, so the rows here are "
            "batches of the simulator's chunk.",
            "",
        ]
        lines += _now_blocks(results)
    lines += [
        "",
        SECTIONS[4],
        "",
        "Trials per second, same rows. The baselines answer only which sub-products "
        "the full set of arrivals recovers, except the last galois loop, which "
        "row-reduces every prefix (what the progressive decoder answers); it runs "
        "for W up to "
        f"{results['profile']['prefix_max_workers']}.",
        "",
    ]
    lines += _decode_baselines(results)
    lines += [
        "",
        SECTIONS[5],
        "",
        "Useful operations: `R C^2` multiply-subtracts for the Gauss-Jordan "
        "elimination of an `R x C` matrix (the GF(2) rank and the plain baseline); "
        "`R C (C + 1) / 2` for the forward elimination of the other fields' rank "
        "(step `c` updates the `C - c` columns not yet eliminated); `2 K^2` per "
        "processed arrival for the progressive decoder. Divided by the limit of the "
        "same field.",
        "",
    ]
    lines += _fractions(results)
    lines += ["", SECTIONS[6], ""]
    lines += _scaling(results)
    lines += ["", "![scaling](scaling.png)", "", SECTIONS[7], ""]
    lines += _end_to_end(results)
    return "\n".join(lines) + "\n"


def plot_scaling(results: dict, path: Path) -> None:
    """Throughput against trials, sub-products and workers, and peak memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(11, 8))
    panels = (
        (axes[0, 0], "trials", "trials", "trials per call (K = 9, W = 30)"),
        (axes[0, 1], "subproducts", "subproducts", "sub-products K"),
        (axes[1, 0], "workers", "workers", "workers W (K = 9)"),
    )
    for axis, name, key, label in panels:
        entries = results["scaling"][name]
        for field in dict.fromkeys(r["field"] for r in entries):
            mine = [r for r in entries if r["field"] == field]
            axis.loglog(
                [r[key] for r in mine],
                [r["progressive"]["per_second"] for r in mine],
                marker="o",
                label=field,
            )
        axis.set_xlabel(label)
        axis.set_ylabel("trials per second")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    if results["scaling"]["subproducts"]:
        axes[0, 1].set_title(
            f"W = {results['scaling']['subproducts'][0]['workers']}", fontsize=9
        )
    axis = axes[1, 1]
    for point in results.get("point", []):
        runs = point.get("runs") or []
        if runs:
            axis.semilogx(
                [r["trials"] for r in runs],
                [r["peak_rss_mib"] for r in runs],
                marker="o",
                label=f"{_point_label(point)} peak RSS",
            )
    axis.set_xlabel("trials of a paper point (uepjax.simulate.curves)")
    axis.set_ylabel("peak memory (MiB)")
    axis.set_ylim(bottom=0)
    axis.grid(True, which="both", alpha=0.3)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=8)
    figure.suptitle(
        f"uepjax progressive decoding, profile {results['meta']['profile']} "
        f"({results['meta']['devices']})"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
