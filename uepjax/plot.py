"""PNG figures drawn from a results folder of tidy CSV files.

Theory is drawn as lines, Monte Carlo as markers with error bars of two standard errors,
and small fields as thin dashed lines, so that the gap between a real field and the
large-field limit shows at a glance.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["read_csv", "synthetic_figures"]

SCHEME_COLORS = {"now": "#1b9e77", "ew": "#d95f02", "mds": "#7570b3"}
CLASS_COLORS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02")
SCHEME_NAMES = {"now": "NOW-UEP", "ew": "EW-UEP", "mds": "MDS"}


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """The rows of a CSV file as dicts of strings."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _series(rows, x: str, y: str, **match) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted `(x, y, standard_error)` of the rows whose columns equal `match`."""
    chosen = [r for r in rows if all(r.get(k) == str(v) for k, v in match.items())]
    chosen.sort(key=lambda r: float(r[x]))
    xs = np.array([float(r[x]) for r in chosen])
    ys = np.array([float(r[y]) for r in chosen])
    errors = np.array([float(r.get("standard_error") or 0.0) for r in chosen])
    return xs, ys, errors


def _fields(rows) -> list[str]:
    found = []
    for r in rows:
        if r["source"] == "monte_carlo" and r["field"] not in found:
            found.append(r["field"])
    return sorted(found, key=lambda f: -int(f[3:-1]))


def _mc(ax, xs, ys, errors, color, label, large: bool):
    if large:
        ax.errorbar(
            xs,
            ys,
            yerr=2 * errors,
            fmt="o",
            ms=3.5,
            color=color,
            mfc="white",
            mew=1.2,
            elinewidth=0.8,
            capsize=0,
            label=label,
        )
    else:
        ax.plot(xs, ys, "--", lw=1.0, color=color, alpha=0.7, label=label)


def _save(fig, path: Path) -> Path:
    temporary = path.with_name(f".{path.stem}.partial.png")
    fig.savefig(temporary, dpi=130, bbox_inches="tight")
    plt.close(fig)
    os.replace(temporary, path)
    return path


def _legend_note(ax, fields: list[str]) -> None:
    small = fields[1:]
    if small:
        ax.text(
            0.99,
            0.02,
            "dashed: Monte Carlo over " + ", ".join(small),
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=7,
            color="0.35",
        )


def _fig8(rows, path: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    fields = _fields(rows)
    classes = sorted({int(r["class_index"]) for r in rows})
    for ax, scheme in zip(axes, ("now", "ew"), strict=True):
        for c in classes:
            color = CLASS_COLORS[(c - 1) % len(CLASS_COLORS)]
            xs, ys, _ = _series(
                rows,
                "packets",
                "probability",
                scheme=scheme,
                class_index=c,
                source="theory",
            )
            ax.plot(xs, ys, "-", color=color, lw=1.6, label=f"class {c} (theory)")
            for i, f in enumerate(fields):
                xs, ys, es = _series(
                    rows,
                    "packets",
                    "probability",
                    scheme=scheme,
                    class_index=c,
                    source="monte_carlo",
                    field=f,
                )
                _mc(
                    ax, xs, ys, es, color, f"class {c}, {f}" if i == 0 else None, i == 0
                )
        ax.set_title(f"{SCHEME_NAMES[scheme]}: decoding probability")
        ax.set_xlabel("packets received")
        ax.grid(alpha=0.3)
        _legend_note(ax, fields)
    axes[0].set_ylabel("probability class decodes")
    axes[0].legend(fontsize=7, loc="lower right", bbox_to_anchor=(1.0, 0.08))
    return _save(fig, path)


def _loss_figure(rows, path: Path, x: str, xlabel: str, crossovers=None) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    fields = _fields(rows)
    for ax, kind in zip(axes, ("rxc", "cxr"), strict=True):
        for scheme, color in SCHEME_COLORS.items():
            xs, ys, _ = _series(
                rows, x, "loss", partition=kind, scheme=scheme, source="theory"
            )
            ax.plot(
                xs,
                ys,
                "-",
                color=color,
                lw=1.6,
                label=f"{SCHEME_NAMES[scheme]} (theory)",
            )
            for i, f in enumerate(fields):
                xs, ys, es = _series(
                    rows,
                    x,
                    "loss",
                    partition=kind,
                    scheme=scheme,
                    source="monte_carlo",
                    field=f,
                )
                if len(xs):
                    _mc(
                        ax,
                        xs,
                        ys,
                        es,
                        color,
                        f"{SCHEME_NAMES[scheme]}, {f}" if i == 0 else None,
                        i == 0,
                    )
        for row in crossovers or []:
            if row["partition"] == kind and row["source"] == "theory":
                t = float(row["crossover_t"])
                if np.isfinite(t):
                    color = SCHEME_COLORS[row["scheme"]]
                    ax.axvline(t, color=color, lw=0.8, ls=":")
                    ax.text(
                        t,
                        1.02,
                        f"{t:.2f}",
                        color=color,
                        fontsize=7,
                        ha="center",
                        transform=ax.get_xaxis_transform(),
                    )
        ax.set_title(f"{kind.replace('x', ' x ')}: normalised loss", pad=14)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        _legend_note(ax, fields)
    axes[0].set_ylabel("E[loss] / ||C||^2")
    axes[0].legend(fontsize=7, loc="upper right")
    return _save(fig, path)


def _fig11(rows, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.8))
    fields = _fields(rows)
    for scheme in ("now", "ew"):
        color = SCHEME_COLORS[scheme]
        xs, ys, _ = _series(rows, "t", "loss", scheme=scheme, source="bound")
        ax.plot(
            xs,
            ys,
            "--",
            color=color,
            lw=1.4,
            label=f"{SCHEME_NAMES[scheme]} bound (Thm. 2)",
        )
        xs, ys, _ = _series(rows, "t", "loss", scheme=scheme, source="theory")
        ax.plot(
            xs,
            ys,
            "-",
            color=color,
            lw=1.2,
            alpha=0.6,
            label=f"{SCHEME_NAMES[scheme]} exact (Assumption 1)",
        )
        if fields:
            xs, ys, es = _series(
                rows, "t", "loss", scheme=scheme, source="monte_carlo", field=fields[0]
            )
            _mc(ax, xs, ys, es, color, f"{SCHEME_NAMES[scheme]}, {fields[0]}", True)
    ax.set_title("c x r: Theorem 2 bound against Monte Carlo")
    ax.set_xlabel("deadline t")
    ax.set_ylabel("E[loss] / ||C||^2")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def synthetic_figures(folder: str | Path) -> dict[str, Path]:
    """Draws `fig8.png` .. `fig11.png` from the CSV files of the synthetic
    experiment."""
    folder = Path(folder)
    crossovers = None
    if (folder / "crossovers.csv").exists():
        crossovers = read_csv(folder / "crossovers.csv")
    made = {}
    drawers = {
        "fig8": lambda rows, p: _fig8(rows, p),
        "fig9": lambda rows, p: _loss_figure(rows, p, "t", "deadline t", crossovers),
        "fig10": lambda rows, p: _loss_figure(rows, p, "packets", "packets received"),
        "fig11": lambda rows, p: _fig11(rows, p),
    }
    for name, draw in drawers.items():
        source = folder / f"{name}.csv"
        if source.exists():
            made[name] = draw(read_csv(source), folder / f"{name}.png")
    return made
