"""Smoke test of the benchmark suite: the quick profile writes a complete report.

Runs ``python benchmarks/run.py --quick`` into a temporary folder (in a fresh
process, as a user would) and checks what it wrote: every section of the report
with its tables, a parseable ``results.json`` whose baselines gave the same answers
as uepjax on the same matrices, and a PNG plot. Timings vary with the machine and
its load, so nothing here asserts on them.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
BENCHMARKS = REPOSITORY / "benchmarks"


def _load(name: str):
    """A module of benchmarks/ (a folder of scripts, not a package), by path."""
    spec = importlib.util.spec_from_file_location(
        f"uepjax_benchmarks_{name}", BENCHMARKS / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = _load("report")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "run.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=REPOSITORY,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return out, done.stdout


def test_report_has_every_section_and_table(quick_run):
    out, _ = quick_run
    text = (out / "report.md").read_text()
    positions = [text.index(heading) for heading in report.SECTIONS]
    assert positions == sorted(positions)
    for header in (
        "| target | required | measured | verdict |",
        "| field | multiply-subtracts per second |",
        "| field | matrices | uepjax per matrix | galois loop |",
        "| field | K x W | trials | rows read a trial |",
        "| field | K x W | progressive | plain JAX (full set) |",
        "| field | K x W | trials | one pass | block by block |",
        "| field | elimination | W x K | useful operations |",
        "| field | trials per call | throughput |",
        "| field | trials | wall | CPU | throughput | RSS before |",
    ):
        assert header in text, header
    assert "| GF(2^8) | 9 x 30 |" in text
    assert "![scaling](scaling.png)" in text


def test_results_record_agreeing_baselines(quick_run):
    out, _ = quick_run
    results = json.loads((out / "results.json").read_text())
    assert set(results) >= {"meta", "limits", "rank", "decode", "scaling", "targets"}
    assert results["meta"]["profile"] == "quick"
    assert results["limits"]["GF(2^8)"]["rate"] > 0
    (rank,) = results["rank"]
    assert rank["agree"] == 1.0
    (case,) = results["decode"]
    for key in (
        "agree_plain",
        "agree_numpy",
        "agree_numpy_loop",
        "agree_galois",
        "agree_galois_prefix",
    ):
        assert case[key] == 1.0, key
    assert 1 <= case["rows_per_trial"] <= case["workers"]
    (now,) = results["now_blocks"]
    assert now["agree"] and now["speedup"] > 0
    (point,) = results["point"]
    assert [run["trials"] for run in point["runs"]] == [1024, 2048]
    names = [t["name"] for t in results["targets"]]
    assert any("2000x" in t["required"] for t in results["targets"]), names
    assert all(t["holds"] in (True, False, None) for t in results["targets"])


def test_plot_is_a_png(quick_run):
    out, _ = quick_run
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_redraws_from_saved_results(quick_run, tmp_path):
    out, _ = quick_run
    (tmp_path / "results.json").write_text((out / "results.json").read_text())
    done = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "run.py"),
            "--report-only",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=REPOSITORY,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "report.md").read_text() == (out / "report.md").read_text()


def test_gpu_script_refuses_a_cpu_only_machine():
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu.py"), "--out", "/nonexistent"],
        capture_output=True,
        text=True,
        cwd=REPOSITORY,
        timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert done.returncode == 2
    assert "no accelerator found" in done.stderr


def test_rows_per_trial_follows_the_decoders_stages(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    suite = importlib.import_module("suite")
    # 2048 trials of dense rows: 1536 recover everything after 5 rows, 512 after
    # 20 of 30. The pass runs all trials for 5 rows, then the 512 (a quarter) to 20.
    rows = np.ones((2048, 30, 9), np.uint32)
    index = np.full((2048, 9), 3, np.int32)
    index[:1536, 0] = 5
    index[1536:, 0] = 20
    expected = (5 * 2048 + 15 * 512) / 2048
    assert suite.rows_per_trial(rows, index) == expected
    # A small batch is one stage, run until its last trial is done.
    assert suite.rows_per_trial(rows[1500:1600], index[1500:1600]) == 20
    # A trial that never recovers an unknown reads every row.
    index[-1, 0] = 31
    assert suite.rows_per_trial(rows, index) == (5 * 2048 + 25 * 512) / 2048
    # Rows inside the recovered set are skipped: after unknown 0 (the support of
    # the even rows) is recovered, only the 15 odd rows are read.
    rows[:, 0::2, 1:] = 0
    index[:, 0] = 1
    index[:, 1:] = 31
    assert suite.rows_per_trial(rows[:4], index[:4]) == 16


@pytest.mark.parametrize("q", [2**31 - 1, 256])
@pytest.mark.parametrize("shape", [(15, 9), (9, 30), (64, 16)])
def test_rank_updates_follow_the_ranks_phases(monkeypatch, q, shape):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    suite = importlib.import_module("suite")
    import jax
    import jax.numpy as jnp

    from uepjax import fields

    field = fields.get_field(q)
    seen = []  # (rows, width) of the matrices of each traced step
    step = fields._forward_step

    def recording(column, m, field):
        seen.append((m.shape[1], m.shape[2]))
        return step(column, m, field)

    monkeypatch.setattr(fields, "_forward_step", recording)
    matrices = jnp.zeros((3,) + shape, jnp.uint32)
    jax.make_jaxpr(lambda m: fields._rank_forward(m, field))(matrices)
    widths = [width for _, width in dict.fromkeys(seen)] + [0]
    rows = seen[0][0]
    # A phase starting at width w runs until the next phase's width.
    phases = zip(widths[:-1], widths[1:], strict=True)
    expected = sum(rows * w * (w - after) for w, after in phases)
    assert suite.rank_updates(*shape) == expected
