"""Reward fine-tuning reaches the exact tilt: for Gaussian data and a linear reward the tilted
chain is the base chain with a constant shift added to each step's mean, so a model that learns one
shift per step can represent the optimum exactly, at any number of steps."""

import pytest
import torch

from sdeflow import analytic
from sdeflow.denoisers import Denoiser
from sdeflow.reward import ancestral_chain, reward_finetune
from sdeflow.schedules import RectifiedFlow

MIX = analytic.GaussianMixture([1.0], [[0.5, -0.3]], torch.tensor([[[1.0, 0.3], [0.3, 0.5]]], dtype=torch.float64))
B = torch.tensor([0.8, -0.5], dtype=torch.float64)
TS = torch.linspace(1.0, 0.01, 9, dtype=torch.float64)


class Shifted(Denoiser):
    """The base plus one learnable vector per grid time."""

    def __init__(self, base):
        super().__init__(base.schedule)
        self.base, self.index = base, {t: i for i, t in enumerate(TS.tolist())}
        self.c = torch.nn.Parameter(torch.zeros(len(TS), 2, dtype=torch.float64))

    def forward(self, x, t, **cond):
        return self.base(x, t) + self.c[self.index[float(t)]]


def test_chain_kl_is_zero_for_the_base_and_positive_otherwise():
    base = MIX.denoiser(RectifiedFlow())
    x = torch.randn(64, 2, dtype=torch.float64)
    assert float(ancestral_chain(base, TS, x, base=base).kl.abs().max()) == 0.0
    model = Shifted(base)
    with torch.no_grad():
        model.c[3] = torch.tensor([0.1, 0.0])
    with torch.no_grad():
        assert float(ancestral_chain(model, TS, x, base=base).kl.min()) > 0


def test_finetuning_reaches_the_exact_tilt_of_the_chain():
    """Optimum of E[b^T x] - KL: the base chain's output law N(mu, C) tilted, N(mu + C b, C), with
    KL b^T C b / 2 (mu and C measured on 200k base chains)."""
    base = MIX.denoiser(RectifiedFlow())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        plain = ancestral_chain(base, TS, torch.randn(200_000, 2, dtype=torch.float64, generator=g), generator=g).x
    mu, cov = plain.mean(0), torch.cov(plain.T)
    model = Shifted(base)
    reward_finetune(model, base, lambda x: x @ B, TS, (2,), iterations=150, batch_size=256, lr=0.05, generator=g)
    with torch.no_grad():
        tuned = ancestral_chain(model, TS, torch.randn(50_000, 2, dtype=torch.float64, generator=g), base=base, generator=g)
    assert torch.allclose(tuned.x.mean(0), mu + cov @ B, atol=0.03), (tuned.x.mean(0), mu + cov @ B)
    assert torch.allclose(torch.cov(tuned.x.T), cov, atol=0.03)
    assert float(tuned.kl.mean()) == pytest.approx(float(B @ cov @ B) / 2, rel=0.1)


def test_bad_settings_are_refused():
    base = MIX.denoiser(RectifiedFlow())
    with pytest.raises(ValueError, match="end above t = 0"):
        ancestral_chain(base, torch.linspace(1, 0, 5), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="kl_weight"):
        reward_finetune(Shifted(base), base, lambda x: x @ B, TS, (2,), kl_weight=0)
    with pytest.raises(ValueError, match="one value per sample"):
        reward_finetune(Shifted(base), base, lambda x: x, TS, (2,), iterations=1, batch_size=4)
