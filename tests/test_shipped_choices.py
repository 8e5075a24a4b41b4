"""The configurations shipped with the sampling models (``sdeflow/pretrained/<name>.grids.json``, made by
``sdeflow tune --method choose``): ``sdeflow sample``'s default on them.

Each shipped choice must be one of the tuner's candidates at its budget, run exactly as the pilot ran
it, and beat the table's default on draws it was not chosen on where the table is far off."""

from __future__ import annotations

import pytest
import torch

from sdeflow.grids import start_time
from sdeflow.pretrained import load_model
from sdeflow.sampling import prior_sample
from sdeflow.samplers import recommended
from sdeflow.tuning import Teacher, endpoint_loss, find_chosen, model_recommended, tuned_paths
from sdeflow.tuning.choose import candidates

MODELS = ("moons", "eight-gaussians", "swiss-roll", "checkerboard", "digits-small", "digits")
#: The budgets each shipped model has a choice for (docs/tuning.md, "Shipped with the models").
BUDGETS = (*range(1, 21), 25, 30, 40, 50, 75, 100)


def shipped_file(model) -> str:
    return tuned_paths(model.path)[-1]  # the file shipped beside the weights, not a user's


@pytest.mark.parametrize("name", MODELS)
def test_every_shipped_model_has_a_choice_per_budget_among_the_candidates(name):
    model = load_model(name)
    sch = model.denoiser.schedule
    for nfe in BUDGETS:
        chosen = find_chosen(shipped_file(model), nfe)
        assert chosen is not None, f"{name}: no configuration shipped for NFE {nfe}"
        key = f"{chosen.sampler} ({chosen.chosen_grid})"
        options = candidates(sch, nfe)
        assert key in options and chosen.on == "model" and chosen.loss == chosen.hand[key], (name, nfe, key)
        assert torch.equal(chosen.grid(), options[key][3]), (name, nfe, key)  # the very grid the pilot ran
        assert options[key][2].prepare(sch, chosen.grid()).nfe <= nfe


def test_sample_runs_the_shipped_choice_by_default(cli_here, tmp_path):
    import numpy as np

    chosen = find_chosen(shipped_file(load_model("moons")), 8)
    out = tmp_path / "s.npz"
    r = cli_here("sample", "--checkpoint", "moons", "--nfe", "8", "-n", "16", "--out", out, "--no-progress")
    assert r.returncode == 0 and f"{chosen.sampler} on the {chosen.chosen_grid} grid (chosen for this model" in r.stdout
    assert np.allclose(np.load(out)["ts"], chosen.ts)


def test_the_shipped_choice_beats_the_table_on_fresh_draws_of_the_moons():
    """On 256 draws of a seed no choice saw, against a 300-step reference of the same draws, the moons'
    shipped choice is at least twice as accurate as the table's default at NFE 4, 10, 15 and 20, where the
    table is 4.3-8.8x the best candidate on the benchmark's draws (docs/benchmarks/shipped_defaults.md;
    measured here: 2.9-7.0x the shipped choice)."""
    model = load_model("moons")
    den, sch = model.denoiser, model.denoiser.schedule
    x = prior_sample(sch, (256, 2), t=start_time(sch), generator=torch.Generator().manual_seed(2024), dtype=torch.float64)
    ref = Teacher(den, x, steps=300).end

    for nfe in (4, 10, 15, 20):
        table = endpoint_loss(den, *recommended(sch, nfe), x, ref)
        shipped = endpoint_loss(den, *model_recommended(model, nfe), x, ref)
        assert shipped < 0.5 * table, (nfe, shipped, table)
