"""PNG figures drawn from a results folder of tidy CSV files.

For the synthetic experiment (`fig8.csv` .. `fig11.csv`) theory is drawn as lines, Monte
Carlo as markers with error bars of two standard errors, and small fields as thin
dashed lines, so that the gap between a real field and the large-field limit shows at
a glance. For a grid sweep (`results.csv`) every recorded quantity gets one figure:
one line per point with its confidence band, and the large-field theory dashed.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["read_csv", "synthetic_figures", "grid_figures", "figures"]

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
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.partial.png")
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


_GRID_AXES = {
    "decoding_probability": (
        "packets",
        "packets received",
        "probability class decodes",
    ),
    "loss_by_arrivals": ("packets", "packets received", "E[loss] / ||C||^2"),
    "loss_by_deadline": ("t", "deadline t", "E[loss] / ||C||^2"),
}


def _number(text: str) -> float:
    return float(text) if text not in ("", None) else float("nan")


def _point_colors(count: int) -> list:
    if count <= len(CLASS_COLORS):
        return list(CLASS_COLORS[:count])
    colormap = matplotlib.colormaps["viridis"]
    return [colormap(i / max(count - 1, 1)) for i in range(count)]


def _grid_panel(ax, rows, x: str, points, labels, colors) -> None:
    for point, color in zip(points, colors, strict=True):
        chosen = sorted(
            (r for r in rows if r["point"] == point), key=lambda r: float(r[x])
        )
        xs = np.array([float(r[x]) for r in chosen])
        mean = np.array([float(r["mean"]) for r in chosen])
        low = np.array([float(r["ci_low"]) for r in chosen])
        high = np.array([float(r["ci_high"]) for r in chosen])
        ax.fill_between(xs, low, high, color=color, alpha=0.2, lw=0)
        ax.plot(xs, mean, "-", color=color, lw=1.4, label=labels.get(point, point))
        exact = np.array([_number(r.get("theory")) for r in chosen])
        if np.isfinite(exact).any():
            ax.plot(xs, exact, "--", color=color, lw=0.9, alpha=0.8)
        bound = np.array([_number(r.get("theory_bound")) for r in chosen])
        if np.isfinite(bound).any():
            ax.plot(xs, bound, ":", color=color, lw=0.9, alpha=0.8)
    ax.grid(alpha=0.3)


def grid_figures(folder: str | Path) -> dict[str, Path]:
    """Draws one PNG per recorded quantity of a grid sweep's `results.csv`.

    Each point is a line with its confidence band (`ci_low` .. `ci_high`), labelled
    by its axis values from `summary.csv`; the large-field theory is dashed and
    Theorem 2's bound dotted. The decoding probability gets one panel per class.

    Returns:
        The written files by quantity name.
    """
    folder = Path(folder)
    source = folder / "results.csv"
    if not source.exists():
        return {}
    rows = read_csv(source)
    labels = {}
    if (folder / "summary.csv").exists():
        labels = {r["point"]: r["label"] for r in read_csv(folder / "summary.csv")}
    made = {}
    for quantity, (x, xlabel, ylabel) in _GRID_AXES.items():
        chosen = [r for r in rows if r["quantity"] == quantity]
        if not chosen:
            continue
        points = sorted({r["point"] for r in chosen}, key=int)
        colors = _point_colors(len(points))
        if quantity == "decoding_probability":
            classes = sorted({int(r["class_index"]) for r in chosen})
        else:
            classes = [None]
        fig, axes = plt.subplots(
            1,
            len(classes),
            figsize=(4.2 * len(classes) + 1.8, 3.8),
            sharey=True,
            squeeze=False,
        )
        for ax, c in zip(axes[0], classes, strict=True):
            panel = chosen
            if c is not None:
                panel = [r for r in chosen if int(r["class_index"]) == c]
                ax.set_title(f"class {c}")
            _grid_panel(ax, panel, x, points, labels, colors)
            ax.set_xlabel(xlabel)
        axes[0][0].set_ylabel(ylabel)
        # Normalised losses and probabilities lie in [0, 1]; a bound above 1 is cut.
        axes[0][0].set_ylim(-0.03, 1.05)
        title = (
            f"{quantity.replace('_', ' ')}: lines Monte Carlo with "
            f"{float(chosen[0]['confidence']):.0%} band, dashed large-field theory"
        )
        if any(r.get("theory_bound") for r in chosen):
            title += ", dotted Theorem 2 bound"
        fig.suptitle(title, fontsize=9)
        axes[0][-1].legend(
            fontsize=7,
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            ncol=1 if len(points) <= 16 else 2,
        )
        made[quantity] = _save(fig, folder / f"{quantity}.png")
    return made


def figures(folder: str | Path) -> dict[str, Path]:
    """The standard figures of any results folder (grid or synthetic experiment)."""
    folder = Path(folder)
    if (folder / "results.csv").exists():
        return grid_figures(folder)
    return synthetic_figures(folder)
