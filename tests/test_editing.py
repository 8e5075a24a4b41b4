"""Editing from one class to another, certified where the answer is known: for Gaussian classes that
share a covariance the probability-flow maps of the two classes differ by a translation, which is the
optimal transport map between them; FlowEdit and editing by exact inversion must find it."""

import pytest
import torch

from sdeflow import analytic, grids
from sdeflow.analytic import GaussianMixture
from sdeflow.editing import edit_by_inversion, flow_edit
from sdeflow.noise import GeneratorNoise
from sdeflow.registry import SAMPLERS
from sdeflow.schedules import RectifiedFlow, VPLinear

COV = torch.tensor([[0.3, 0.1], [0.1, 0.05]], dtype=torch.float64)
PAIR = GaussianMixture(torch.ones(2), torch.tensor([[-1.5, 0.5], [1.5, -0.5]], dtype=torch.float64),
                       torch.stack([COV, COV]), classes=[0, 1])
SHIFT = torch.tensor([3.0, -1.0], dtype=torch.float64)  # mean of class 1 minus mean of class 0


def _conds(n):
    return {"label": torch.zeros(n, dtype=torch.long)}, {"label": torch.ones(n, dtype=torch.long)}


def test_flow_edit_finds_the_optimal_transport_translation():
    """Rectified flow: the coupled velocity difference is the same at every time, so FlowEdit's Euler
    steps give the translation to round-off at any step count; VP: first order in the steps."""
    src, tar = _conds(128)
    x, _ = PAIR.sample_t(128, RectifiedFlow(), 0.0, torch.Generator().manual_seed(0), label=0)
    for n in [5, 20]:
        out = flow_edit(PAIR.denoiser(RectifiedFlow()), grids.uniform_grid(n), x, source=src, target=tar)
        assert float((out.x - x - SHIFT).abs().max()) <= 1e-12 and out.nfe == 2 * n
    errs = [float((flow_edit(PAIR.denoiser(VPLinear()), grids.uniform_grid(n), x, source=src, target=tar).x - x - SHIFT)
                  .pow(2).sum(1).mean().sqrt()) for n in [12, 25, 50]]
    assert errs[0] > errs[1] > errs[2] and errs[2] <= 0.015, errs


@pytest.mark.parametrize("name", ["dpm-solver++-2m", "bdia"])
def test_editing_by_exact_inversion_is_a_translation_near_the_optimal_one(name):
    """Invert under class 0 exactly, sample under class 1: both discrete maps are affine with one linear
    part, so the edit translates every sample by the same vector, alpha(t_min) (m_1 - m_0) up to the
    sampler's discretisation error."""
    sch = VPLinear()
    ts = grids.karras_grid(30, sch, denoise_to_zero=False)
    t_min = float(ts[-1])
    src, tar = _conds(64)
    x, _ = PAIR.sample_t(64, sch, t_min, torch.Generator().manual_seed(1), label=0)
    out = edit_by_inversion(PAIR.denoiser(sch), SAMPLERS[name](), ts, x, source=src, target=tar)
    moved = out.x - x
    assert float((moved - moved.mean(0)).abs().max()) <= 1e-8
    assert float((moved.mean(0) - float(sch.alpha(t_min)) * SHIFT).abs().max()) <= 2e-2


def test_flow_edit_moves_less_than_inversion_on_a_mixture():
    """On the labelled ring (classes interleaved, components of different shapes) FlowEdit moves most
    samples into the target class (exact class posterior) with a smaller transport cost than editing
    by exact inversion (BDIA, undone step by step), which moves nearly all of them."""
    ring, sch = analytic.ring_2d(n_classes=2), RectifiedFlow()
    src, tar = _conds(256)
    x, _ = ring.sample_t(256, sch, 0.0, torch.Generator().manual_seed(2), label=0)
    fe = flow_edit(ring.denoiser(sch), grids.uniform_grid(40), x, source=src, target=tar,
                   noise=GeneratorNoise(torch.Generator().manual_seed(0)))
    ts = grids.karras_grid(30, sch, denoise_to_zero=False)
    x2, _ = ring.sample_t(256, sch, float(ts[-1]), torch.Generator().manual_seed(2), label=0)
    inv = edit_by_inversion(ring.denoiser(sch), SAMPLERS["bdia"](), ts, x2, source=src, target=tar)
    p_fe = ring.class_log_prob(fe.x, sch, 0.0, tar["label"]).exp().mean()
    p_inv = ring.class_log_prob(inv.x, sch, float(ts[-1]), tar["label"]).exp().mean()
    cost_fe, cost_inv = (fe.x - x).pow(2).sum(1).mean(), (inv.x - x2).pow(2).sum(1).mean()
    assert p_fe > 0.75 and p_inv > 0.9, (p_fe, p_inv)
    assert cost_fe < 0.7 * cost_inv, (cost_fe, cost_inv)


def test_flow_edit_refuses_bad_input():
    x = torch.zeros(4, 2, dtype=torch.float64)
    src, tar = _conds(4)
    den = PAIR.denoiser(RectifiedFlow())
    with pytest.raises(TypeError, match="dict"):
        flow_edit(den, grids.uniform_grid(4), x, source=0, target=tar)
    with pytest.raises(ValueError, match="n_avg"):
        flow_edit(den, grids.uniform_grid(4), x, source=src, target=tar, n_avg=0)
    with pytest.raises(TypeError, match="Denoiser"):
        flow_edit(lambda x, t: x, grids.uniform_grid(4), x, source=src, target=tar)
