"""Tests of uepjax.sweep and uepjax.config: configs, the synthetic experiment, files."""

import csv
import json

import numpy as np
import pytest

from uepjax import config, sweep

PAPER = "sweeps/paper-synthetic.toml"

SMALL = """
experiment = "paper-synthetic"
seed = 3

[matrices.rxc]
block_rows = 12
block_cols = 10
inner = 30

[matrices.cxr]
rows = 20
cols = 16
block_inner = 4

[deadlines]
stop = 1.5
count = 16

[monte_carlo]
trials = 2048
fields = [65521, 2]
chunk_size = 1024
"""


def read(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_paper_config_loads_with_the_papers_values():
    experiment = sweep.load_config(PAPER)
    assert experiment.workers.count == 30
    assert experiment.code.gamma == (0.40, 0.35, 0.25)
    assert experiment.code.class_sizes == (3, 3, 3)
    assert experiment.matrices.rxc.inner == 900
    assert experiment.matrices.cxr.block_inner == 100
    assert experiment.matrices.variances == (10.0, 1.0, 0.1)


@pytest.mark.parametrize(
    "text, match",
    [
        ('experiment = "paper-synthetic"\nseeds = 1\n', r"seeds is not a known key"),
        (
            'experiment = "paper-synthetic"\n[workers]\ncount = "thirty"\n',
            r"workers.count must be an integer \(got 'thirty'\)",
        ),
        (
            'experiment = "paper-synthetic"\n[monte_carlo]\nfields = []\n',
            r"monte_carlo.fields must not be empty",
        ),
        (
            'experiment = "paper-synthetic"\n[code]\ngamma = [0.5, 0.6, 0.1]\n',
            r"code: gamma must sum to 1",
        ),
        ('experiment = "figure-99"\n', r"experiment must be one of 'paper-synthetic'"),
        (
            'experiment = "paper-synthetic"\n[workers]\nlatency = "gamma"\n',
            r"latency must be one of exponential",
        ),
        ('experiment = "paper-synthetic"\n[deadlines\n', r"not valid TOML"),
    ],
)
def test_bad_configs_name_the_file_and_the_key(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(config.ConfigError, match=match) as error:
        sweep.load_config(path)
    assert "bad.toml" in str(error.value)


def test_unknown_keys_list_what_is_allowed(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('experiment = "paper-synthetic"\n[workers]\nrat = 1.0\n')
    with pytest.raises(config.ConfigError, match=r"allowed here: count, latency, rate"):
        sweep.load_config(path)


def test_crossover_time_interpolates_the_last_sign_change():
    t = np.linspace(0.0, 1.0, 11)
    loss = np.full(11, 0.5)
    reference = 1.0 - t
    assert sweep.crossover_time(t, loss, reference) == pytest.approx(0.5)
    assert np.isnan(sweep.crossover_time(t, reference + 1, reference))


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    path = folder / "small.toml"
    path.write_text(SMALL)
    done = []
    files = sweep.run_config(path, folder / "out", progress=done.append)
    return folder / "out", files, sum(done)


def test_the_experiment_writes_every_figure(small_run):
    out, files, trials = small_run
    for name in ("fig8", "fig9", "fig10", "fig11", "crossovers"):
        assert (out / f"{name}.csv").stat().st_size > 0
    for name in ("fig8", "fig9", "fig10", "fig11"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*partial*"))
    # Two fields times NOW, EW and MDS, less MDS over GF(2).
    assert trials == 5 * 2048
    record = json.loads((out / "run.json").read_text())
    assert record["config"]["seed"] == 3 and "jax" in record["versions"]


def test_fig9_has_the_columns_and_rows_the_issue_asks_for(small_run):
    out, _, _ = small_run
    rows = read(out / "fig9.csv")
    assert list(rows[0]) == [
        "partition", "scheme", "source", "field", "t", "loss", "standard_error",
        "trials",
    ]  # fmt: skip
    seen = {(r["partition"], r["scheme"], r["source"]) for r in rows}
    for kind in ("rxc", "cxr"):
        for scheme in ("now", "ew", "mds"):
            assert (kind, scheme, "theory") in seen
            assert (kind, scheme, "monte_carlo") in seen
    for r in rows:
        assert 0.0 <= float(r["loss"]) <= 1.0 + 1e-6
        if r["source"] == "monte_carlo":
            assert int(r["trials"]) == 2048 and float(r["standard_error"]) >= 0


def test_uep_beats_mds_early_and_the_crossovers_follow_the_model(small_run):
    out, _, _ = small_run
    rows = read(out / "crossovers.csv")
    theory = {
        (r["partition"], r["scheme"]): float(r["crossover_t"])
        for r in rows
        if r["source"] == "theory"
    }
    # The paper reads 0.44 (NOW), 0.825 (EW, rxc) and 0.975 (EW, cxr) off Fig. 9.
    assert theory["rxc", "now"] == pytest.approx(0.44, abs=0.04)
    assert theory["cxr", "now"] == pytest.approx(0.44, abs=0.04)
    assert theory["rxc", "ew"] == pytest.approx(0.825, abs=0.04)
    assert theory["cxr", "ew"] == pytest.approx(0.975, abs=0.04)
    fig9 = read(out / "fig9.csv")

    def curve(kind, scheme):
        chosen = [
            r
            for r in fig9
            if (r["partition"], r["scheme"], r["source"], r["field"])
            == (kind, scheme, "monte_carlo", "GF(65521)")
        ]
        return np.array([float(r["t"]) for r in chosen]), np.array(
            [float(r["loss"]) for r in chosen]
        )

    for kind in ("rxc", "cxr"):
        t, mds = curve(kind, "mds")
        for scheme in ("now", "ew"):
            _, loss = curve(kind, scheme)
            early = (t > 0) & (t < 0.4)
            assert np.all(loss[early] < mds[early])
