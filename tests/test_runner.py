"""End-to-end tests of grid sweeps: tables, resume after SIGKILL, devices, processes.

Every sweep runs through the command line in a subprocess, as a user would run it. The
subprocesses share a persistent compilation cache, so that only the first one pays for
compiling. One uninterrupted single-device run is the reference; a run killed by SIGKILL
and resumed, a run on 4 simulated CPU devices with another chunk size and a run split
over 2 processes (jax.distributed over loopback) must reproduce its numbers exactly.
Only the run time, the device count and the process count may differ.

Note:
    The SIGKILL lands right after the second point file appears, while the third
    point runs; atomic writes make every other moment equivalent (a file is either
    complete or absent, and stale temporary files are removed on restart).
"""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from uepjax import cli, runner, sweep

pytestmark = pytest.mark.slow

CONFIG = """
experiment = "grid"
name = "resume-check"

[fixed]
class_sizes = [2, 2]
gamma = [0.6, 0.4]
workers = 8
field = 65521
loss = "energies"
energies = [4.0, 2.0, 1.0, 0.5]
deadline_count = 6

[axes]
scheme = ["now", "ew"]
rate = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]

[output]
record = ["loss_by_deadline", "loss_by_arrivals", "decoding_probability"]
figures = false

[stopping]
trials = 40960
standard_error = 0.003
min_trials = 8192
batch_trials = 4096
"""

POINTS = 12
RUN_COLUMNS = ("seconds", "devices", "processes")
TIMEOUT = 240


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweeps")
    path = folder / "resume-check.toml"
    path.write_text(CONFIG)
    env = dict(os.environ)
    env.update(
        JAX_COMPILATION_CACHE_DIR=str(folder / "jax-cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        PYTHONUNBUFFERED="1",
    )
    env.pop("XLA_FLAGS", None)
    return folder, path, env


def command(path, out, *extra):
    return [sys.executable, "-m", "uepjax.cli", "sweep", str(path), "--out", str(out)]


def run(workspace, out, *extra, env=None):
    _, path, base = workspace
    done = subprocess.run(
        [*command(path, out), *extra],
        env=env or base,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def rows(path, drop=RUN_COLUMNS):
    with open(path, newline="") as handle:
        found = list(csv.DictReader(handle))
    for row in found:
        for column in drop:
            row.pop(column)
    return found


@pytest.fixture(scope="module")
def reference(workspace):
    folder, _, _ = workspace
    out = folder / "reference"
    done = run(workspace, out, "--quiet")
    assert done.stdout == ""
    return out


def test_the_tables_hold_every_estimate_with_its_interval_and_trials(reference):
    table = pq.read_table(reference / "results.parquet").to_pydict()
    assert tuple(table) == runner.RESULT_COLUMNS
    csv_rows = rows(reference / "results.csv", drop=())
    assert list(csv_rows[0]) == list(runner.RESULT_COLUMNS)
    assert len(csv_rows) == len(table["mean"]) == POINTS * (6 + 9 + 2 * 9)
    mean, error = np.array(table["mean"]), np.array(table["standard_error"])
    low, high = np.array(table["ci_low"]), np.array(table["ci_high"])
    assert np.all((low <= mean) & (mean <= high))
    assert np.array_equal(mean, [float(r["mean"]) for r in csv_rows])
    trials = np.array(table["trials"])
    # Rounds are 8192 trials and then 4096 more: the stopping rule ends on a round.
    assert np.all((trials - 8192) % 4096 == 0) and np.all(trials <= 40960)
    assert set(table["stop_reason"]) <= {"tolerance", "trials"}
    # The target quantity reaches its tolerance wherever the rule says so.
    for point in range(POINTS):
        chosen = (np.array(table["point"]) == point) & (
            np.array(table["quantity"]) == "loss_by_deadline"
        )
        reason = np.array(table["stop_reason"])[chosen][0]
        if reason == "tolerance":
            assert error[chosen].max() <= 0.003
    # The theory is the exact large-field model (a diagonal Gram matrix here): the
    # estimates lie within 4.5 standard errors of it, plus 5 / trials where no trial
    # varied.
    theory = np.array(table["theory"], dtype=float)
    assert np.isfinite(theory).all()
    assert np.all(np.abs(mean - theory) <= 4.5 * error + 5.0 / trials)
    summary = rows(reference / "summary.csv", drop=())
    assert [r["label"] for r in summary][:2] == [
        "scheme=now, rate=0.5",
        "scheme=now, rate=1.0",
    ]
    record = json.loads((reference / "run.json").read_text())
    # NOW and EW at any rate differ only in values: one program for all 12 points.
    assert record["compiled_programs"] == 1
    assert record["computed"] == list(range(POINTS)) and record["reused"] == []
    assert "pyarrow" in record["versions"]
    point = json.loads(next((reference / "points").glob("*.json")).read_text())
    assert point["key"].startswith("jax.random.split(jax.random.key(0)")
    assert point["versions"]["jax"] and point["seconds"] > 0


def test_a_corrupt_or_stale_point_file_is_not_taken_for_a_result(reference, tmp_path):
    experiment = sweep.load_config(Path(reference).parent / "resume-check.toml")
    copy = tmp_path / "copy"
    (copy / "points").mkdir(parents=True)
    files = sorted((reference / "points").glob("*.json"))
    for f in files:
        (copy / "points" / f.name).write_bytes(f.read_bytes())
    assert all(runner.completed_points(experiment, copy))
    broken = copy / "points" / files[0].name
    broken.write_text(broken.read_text()[:-40])
    moved = copy / "points" / files[1].name
    moved.rename(copy / "points" / "0000.json")
    done = runner.completed_points(experiment, copy)
    assert done.count(False) == 2
    with pytest.raises(ValueError, match="has no result file"):
        runner.assemble(experiment, copy)


def _point_files(out):
    """Point files that are complete (every one must be)."""
    found = {}
    for path in (out / "points").glob("*.json") if (out / "points").is_dir() else []:
        found[path.name] = path.read_bytes()
        record = json.loads(found[path.name])
        assert record["hash"] == path.stem
    return found


def _kill_when(workspace, out, points):
    """Starts the sweep and SIGKILLs it once `points` point files exist."""
    _, path, env = workspace
    process = subprocess.Popen(
        command(path, out) + ["--quiet"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + TIMEOUT
    try:
        while len(_point_files(out)) < points:
            assert process.poll() is None, process.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the sweep made no progress"
            time.sleep(0.005)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL


def test_a_killed_sweep_resumes_to_the_uninterrupted_results(
    workspace, reference, tmp_path
):
    out = tmp_path / "killed"
    _kill_when(workspace, out, 2)
    killed = _point_files(out)
    assert 2 <= len(killed) < POINTS
    done = run(workspace, out)
    assert f"computed {POINTS - len(killed)} point(s), reused {len(killed)}" in (
        done.stdout
    )
    final = _point_files(out)
    assert len(final) == POINTS
    # A finished point is never computed or written again.
    assert all(final[name] == data for name, data in killed.items())
    record = json.loads((out / "run.json").read_text())
    assert len(record["reused"]) == len(killed)
    assert sorted(record["reused"] + record["computed"]) == list(range(POINTS))
    for name in ("results.csv", "summary.csv"):
        assert rows(out / name) == rows(reference / name)
    assert not list(out.rglob(".*partial*"))


def test_four_devices_and_another_chunk_size_give_the_same_numbers(
    workspace, reference, tmp_path
):
    env = dict(workspace[2], XLA_FLAGS="--xla_force_host_platform_device_count=4")
    out = tmp_path / "four"
    run(workspace, out, "--quiet", "--chunk-size", "2048", env=env)
    assert rows(out / "results.csv") == rows(reference / "results.csv")
    summary = rows(out / "summary.csv", drop=())
    assert {r["devices"] for r in summary} == {"4"}


def test_cpu_devices_option_splits_the_cpu(workspace, reference, tmp_path):
    out = tmp_path / "split"
    run(workspace, out, "--quiet", "--cpu-devices", "3")
    assert rows(out / "results.csv") == rows(reference / "results.csv")
    summary = rows(out / "summary.csv", drop=())
    assert {r["devices"] for r in summary} == {"3"}


def test_cpu_devices_must_be_positive(workspace, tmp_path):
    _, path, env = workspace
    done = subprocess.run(
        [*command(path, tmp_path / "bad"), "--cpu-devices", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 2
    assert "--cpu-devices must be a positive integer (got 0)" in done.stderr


def _free_port():
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def test_two_processes_over_loopback_give_the_same_numbers(
    workspace, reference, tmp_path
):
    _, path, env = workspace
    out = tmp_path / "two"
    address = f"127.0.0.1:{_free_port()}"
    processes = [
        subprocess.Popen(
            command(path, out)
            + ["--quiet", "--coordinator", address, "--num-processes", "2"]
            + ["--process-id", str(i), "--distributed-timeout", "60"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        outputs = [p.communicate(timeout=TIMEOUT) for p in processes]
    except subprocess.TimeoutExpired:
        pytest.fail("the two-process sweep did not finish in time")
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, error) in zip(processes, outputs, strict=True):
        assert p.returncode == 0, error[-3000:]
    assert rows(out / "results.csv") == rows(reference / "results.csv")
    summary = rows(out / "summary.csv", drop=())
    assert {(r["devices"], r["processes"]) for r in summary} == {("2", "2")}


def test_uepjax_plot_draws_the_standard_figures(reference, capsys):
    assert cli.main(["plot", str(reference)]) == 0
    printed = capsys.readouterr().out.split()
    for name in ("loss_by_deadline", "loss_by_arrivals", "decoding_probability"):
        png = reference / f"{name}.png"
        assert str(png) in printed
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
