"""Tests of uepjax.grid: declarative sweep configs, their points and their errors.

Nothing here runs a trial: every error must come before anything runs.
"""

import dataclasses
from pathlib import Path

import pytest

from uepjax import config, grid, sweep

SWEEPS = sorted(
    p
    for p in Path("sweeps").glob("*.toml")
    if not p.name.startswith(("tune-", "train-"))
)

BASE = """
experiment = "grid"
name = "base"

[fixed]
class_sizes = [2, 2]
gamma = [0.6, 0.4]
workers = 8
loss = "uniform"
"""


def load(tmp_path, text, name="sweep.toml"):
    path = tmp_path / name
    path.write_text(text)
    return sweep.load_config(path)


def test_every_shipped_config_loads_and_builds_its_points():
    names = {p.stem for p in SWEEPS}
    for wanted in ("fig8", "fig9", "fig10", "fig11", "field-gap"):
        assert wanted in names
    for wanted in ("stragglers-pareto", "workers-scaling", "heterogeneous"):
        assert wanted in names
    for path in SWEEPS:
        experiment = sweep.load_config(path)
        if isinstance(experiment, grid.GridSweep):
            assert experiment.points, path


def test_the_shipped_questions_cover_what_they_promise():
    gap = sweep.load_config("sweeps/field-gap.toml")
    assert {p.config.field for p in gap.points} == {2, 16, 256, 2_147_483_647}
    scaling = sweep.load_config("sweeps/workers-scaling.toml")
    workers = {p.config.workers for p in scaling.points}
    assert min(workers) == 10 and max(workers) == 1000
    assert all(p.config.load_per_subproduct for p in scaling.points)
    tails = sweep.load_config("sweeps/stragglers-pareto.toml")
    for p in tails.points:
        model = p.config.response_time()
        # Equal means, so that only the tail differs.
        assert float(model.mean()) == pytest.approx(1.0, rel=1e-6)
    assert {p.config.latency for p in tails.points} == {"exponential", "pareto"}
    mixed = sweep.load_config("sweeps/heterogeneous.toml")
    assert {p.config.homogeneous for p in mixed.points} == {True, False}


def test_axes_combine_as_a_product_and_zip_groups_move_together(tmp_path):
    text = (
        BASE
        + """
[axes]
scheme = ["now", "ew"]
field = [2, 16, 256]

[[zip]]
latency = ["exponential", "pareto"]
shape = [2.0, 1.5]
"""
    )
    experiment = load(tmp_path, text)
    assert len(experiment.points) == 2 * 3 * 2
    first, second = experiment.points[:2]
    # The last factor varies fastest.
    assert (first.config.latency, first.config.shape) == ("exponential", 2.0)
    assert (second.config.latency, second.config.shape) == ("pareto", 1.5)
    assert experiment.points[2].config.field == 16
    assert [p.index for p in experiment.points] == list(range(12))
    assert experiment.varied == ("scheme", "field", "latency", "shape")
    assert first.label == "scheme=now, field=2, latency=exponential, shape=2.0"


def test_excluded_points_are_dropped(tmp_path):
    text = (
        BASE
        + """
[axes]
scheme = ["now", "mds"]
field = [2, 65521]

[[exclude]]
scheme = "mds"
field = 2
"""
    )
    experiment = load(tmp_path, text)
    combos = [(p.config.scheme, p.config.field) for p in experiment.points]
    assert combos == [("now", 2), ("now", 65521), ("mds", 65521)]


@pytest.mark.parametrize(
    "extra, match",
    [
        (
            "colour = 1\n" + BASE,
            r"colour is not a known key; allowed here: experiment",
        ),
        (
            BASE.replace("workers = 8", "wokers = 8"),
            r"fixed.wokers is not a point parameter; allowed",
        ),
        ("[axes]\nfield = []\n", r"axes.field must not be empty"),
        ('[axes]\nworkers = ["ten"]\n', r"axes.workers\[0\] must be an integer"),
        ("[axes]\nworkers = 10\n", r"axes.workers must be a list of values"),
        ("[axes]\nrate = [1.0, 1.0]\n", r"axes.rate must not repeat a value"),
        ("[axes]\nspeed = [1.0]\n", r"axes.speed is not a point parameter"),
        (
            '[[zip]]\nlatency = ["pareto", "weibull"]\nshape = [1.5]\n',
            r"zip\[0\]: the lists of a zip group must have equal lengths "
            r"\(got latency: 2, shape: 1\)",
        ),
        (
            "[axes]\nshape = [1.5]\n[[zip]]\nshape = [2.0]\n",
            r"zip\[0\].shape is already varied",
        ),
        ("[output]\nrecord = []\n", r"output.record must not be empty"),
        ('[output]\nrecord = ["loss"]\n', r"record must be one of"),
        ("[stopping]\ntrials = 1.5\n", r"stopping.trials must be an integer"),
        ("[stopping]\nmin_trials = 1000\n", r"min_trials must be a positive multiple"),
        ("[stopping]\nstandard_error = -1.0\n", r"standard_error must be a positive"),
        (
            '[stopping]\ntarget = "loss_by_arrivals"\n',
            r"stopping.target must be one of the recorded quantities",
        ),
        ("[run]\nchunk_size = 100\n", r"chunk_size must be a positive multiple"),
        ('[axes]\nscheme = ["now", "turbo"]\n', r"point 1 \(scheme=turbo\): scheme"),
        (
            "[axes]\nworkers = [4, 8]\n[fixed.extra]\n",
            r"fixed.extra is not a point parameter",
        ),
        (
            '[axes]\nscheme = ["mds"]\nfield = [2]\n',
            r"point 0 \(scheme=mds, field=2\): an MDS code with 8 workers needs a "
            r"field of more than 8 elements.*\[\[exclude\]\]",
        ),
        ("[axes]\ngamma = [[0.5, 0.6]]\n", r"gamma must sum to 1"),
        (
            '[axes]\nloss = ["rxc"]\n',
            r"loss='rxc' uses the paper's 9 sub-products",
        ),
        (
            '[[exclude]]\nscheme = "ew"\n',
            r"the grid has no points: every combination is excluded",
        ),
        ('experiment = "grid"\n[axes\n', r"not valid TOML"),
    ],
)
def test_bad_configs_name_the_file_the_key_and_what_is_allowed(tmp_path, extra, match):
    text = extra if extra.startswith(("experiment", "colour", "\n")) else BASE + extra
    with pytest.raises(config.ConfigError, match=match) as error:
        load(tmp_path, text, name="bad.toml")
    assert "bad.toml" in str(error.value)


def test_point_hashes_ignore_how_trials_run_but_not_what_they_compute(tmp_path):
    one = load(tmp_path, BASE + "[axes]\nrate = [1.0, 2.0]\n")
    chunked = load(
        tmp_path, BASE + "[axes]\nrate = [1.0, 2.0]\n[run]\nchunk_size = 2048"
    )
    more = load(tmp_path, BASE + "[axes]\nrate = [1.0, 2.0]\n[stopping]\ntrials = 99")
    hashes = [grid.point_hash(p.config, one) for p in one.points]
    assert len(set(hashes)) == 2
    assert hashes == [grid.point_hash(p.config, chunked) for p in chunked.points]
    assert set(hashes).isdisjoint(grid.point_hash(p.config, more) for p in more.points)
    # The same point keeps its hash when the grid around it grows.
    wider = load(tmp_path, BASE + "[axes]\nrate = [0.5, 1.0, 2.0]\n")
    assert hashes == [grid.point_hash(p.config, wider) for p in wider.points[1:]]


def test_heterogeneous_workers_get_per_worker_loads():
    point = grid.PointConfig(
        class_sizes=(2, 2), gamma=(0.5, 0.5), workers=10, loss="uniform"
    )
    assert point.homogeneous and point.response_time().is_homogeneous
    slow = dataclasses.replace(point, slow_fraction=0.2, slowdown=4.0)
    assert not slow.homogeneous and not slow.conditional
    load = slow.response_time().load
    assert load.shape == (10,)
    assert float(load[0]) == 1.0 and float(load[-1]) == 0.25
    scaled = dataclasses.replace(point, load_per_subproduct=True)
    assert float(scaled.response_time().load) == pytest.approx(4 / 10)
    with pytest.raises(ValueError, match="arrival_times='conditional' needs i.i.d."):
        dataclasses.replace(slow, arrival_times="conditional")
