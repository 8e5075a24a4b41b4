"""Token diffusion against exact laws: forward kernels against matrix exponentials, the clean-token posterior
against Bayes' rule by enumeration, the exact output law of ancestral sampling against the data law as NFE
grows, the first-hitting sampler's law and clocks, and the bias of categorical draws computed exactly over
every uniform a generator can return."""

import itertools
import math

import pytest
import torch

from sdeflow.discrete import (Masked, ProductMixture, TokenSchedule, Uniform, ancestral, draw, exact_rates, first_hitting,
                              float32_race_bias, output_law)

SCHEDULES = [TokenSchedule("linear"), TokenSchedule("cosine"), TokenSchedule("polynomial", 2.0), TokenSchedule("power", 1.5)]


def _processes(vocab=3):
    return [Masked(vocab, s) for s in SCHEDULES] + [Uniform(vocab, s) for s in SCHEDULES]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.kind)
def test_schedule_ends_and_inverse(schedule):
    assert float(schedule.alpha(0.0)) == 1.0 and float(schedule.alpha(1.0)) == 0.0
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    torch.testing.assert_close(schedule.t_from_alpha(schedule.alpha(t)), t, rtol=1e-10, atol=1e-12)
    h = 1e-6
    torch.testing.assert_close((schedule.alpha(t + h) - schedule.alpha(t - h)) / (2 * h), schedule.d_alpha(t),
                               rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("process", _processes(), ids=lambda p: f"{type(p).__name__}-{p.schedule.kind}")
def test_forward_kernel_is_the_matrix_exponential(process):
    """``Q_t = exp(int_0^t beta G)`` with ``G = 1 pi^T - I`` and ``int beta = -log alpha``; and
    ``Q_t = Q_s Q_{t|s}`` (Chapman-Kolmogorov)."""
    gen = torch.ones(process.states, 1, dtype=torch.float64) @ process.noise_law()[None] \
        - torch.eye(process.states, dtype=torch.float64)
    for t in (0.1, 0.5, 0.9):
        a = float(process.schedule.alpha(t))
        exact = torch.matrix_exp(-math.log(a) * gen)[:process.vocab]
        torch.testing.assert_close(process.kernel(t), exact, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(process.kernel(0.3) @ process.transition(0.3, 0.8), process.kernel(0.8),
                               rtol=1e-12, atol=1e-12)
    x0 = torch.randint(process.vocab, (40000, 2), generator=torch.Generator().manual_seed(0))
    x0[:, 0] = 1
    xt = process.noise(x0, 0.5, torch.Generator().manual_seed(1))
    freq = torch.bincount(xt[:, 0], minlength=process.states).double() / len(xt)
    torch.testing.assert_close(freq, process.kernel(0.5)[1], rtol=0, atol=4 * math.sqrt(0.25 / len(xt)))


@pytest.mark.parametrize("process", [Masked(3), Uniform(3)], ids=["masked", "uniform"])
def test_posterior_is_bayes_rule(process):
    mix = ProductMixture.random(3, 3, components=3, seed=2)
    seqs, law = mix.sequences(), mix.law()
    g = torch.Generator().manual_seed(4)
    x_t = torch.randint(process.states, (6, 3), generator=g)
    for t in (0.2, 0.7):
        Q = process.kernel(t)
        post = mix.posterior(x_t, process, t)
        for b in range(len(x_t)):
            like = torch.stack([Q[seqs[:, j], x_t[b, j]] for j in range(3)]).prod(0)
            joint = law * like
            joint = joint / joint.sum()
            brute = torch.stack([torch.stack([joint[seqs[:, j] == v].sum() for v in range(3)]) for j in range(3)])
            torch.testing.assert_close(post[b], brute, rtol=1e-10, atol=1e-12)


def _tv(law: dict, mix: ProductMixture) -> float:
    exact = mix.law()
    seqs = [tuple(s) for s in mix.sequences().tolist()]
    return 0.5 * sum(abs(law.get(s, 0.0) - float(p)) for s, p in zip(seqs, exact))


@pytest.mark.parametrize("process", [Masked(3), Uniform(3)], ids=["masked", "uniform"])
def test_ancestral_law_converges_at_first_order(process):
    """The exact output law of ancestral sampling (every partial state followed): its TV to the data law halves
    as the steps double (measured ratio 1.99-2.0 from 8 to 32 steps), and the draws follow that law."""
    mix = ProductMixture.random(3, 3, components=3, seed=1)
    model = mix.denoiser(process)
    tvs = [_tv(output_law(process, model, torch.linspace(1, 0, n + 1), 3), mix) for n in (8, 16, 32)]
    assert tvs[0] > tvs[1] > tvs[2] > 0
    assert math.log(tvs[0] / tvs[2]) / math.log(4) > 0.9, tvs
    n = 100_000
    res = ancestral(model, process, torch.linspace(1, 0, 5), n, 3, generator=torch.Generator().manual_seed(0))
    law = output_law(process, model, torch.linspace(1, 0, 5), 3)
    counts = torch.bincount((res.x * torch.tensor([9, 3, 1])).sum(1), minlength=27).double()
    expected = torch.tensor([law.get(s, 0.0) for s in itertools.product(range(3), repeat=3)], dtype=torch.float64) * n
    chi2 = float(((counts - expected) ** 2 / expected.clamp_min(1e-9)).sum())
    assert chi2 < 26 + 5 * math.sqrt(2 * 26)  # 26 degrees of freedom, 5 standard deviations


def test_first_hitting_is_exact_in_l_evaluations():
    """With the exact posterior the first-hitting sampler draws the data law in ``L`` evaluations (chi-square
    against the exact law), and its unmasking times follow the per-token clocks (Kolmogorov-Smirnov)."""
    process = Masked(3, TokenSchedule("cosine"))
    mix = ProductMixture.random(4, 3, components=3, seed=5)
    n = 60_000
    res = first_hitting(mix.denoiser(process), process, n, 4, generator=torch.Generator().manual_seed(0))
    assert res.nfe == 4
    counts = torch.bincount((res.x * torch.tensor([27, 9, 3, 1])).sum(1), minlength=81).double()
    expected = mix.law() * n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 80 + 5 * math.sqrt(160)
    # the first unmasking time of L tokens whose clocks have P(still masked at t) = 1 - alpha(t):
    # P(first > s) = (1 - alpha(s))^L ... seen from t = 1 backwards: CDF of alpha(first) is 1 - (1 - a)^L
    times = []

    def clock(x, t):
        times.append(t.clone())
        return mix.posterior(x, process, t)

    first_hitting(clock, process, 20_000, 4, generator=torch.Generator().manual_seed(1))
    a = process.schedule.alpha(times[0]).sort().values
    cdf = 1 - (1 - a) ** 4
    ks = float((cdf - torch.arange(1, len(a) + 1, dtype=torch.float64) / len(a)).abs().max())
    assert ks < 1.63 / math.sqrt(len(a))  # the 1% point of the Kolmogorov distribution


def test_default_draws_are_unbiased_and_the_float32_race_is_not():
    """For a token at 1e-5 of the largest probability the float64 inverse CDF draws it at its rate to 1e-3 (exactly
    computed over every float64 uniform: the error is below 2^-53 / p); the float32 Gumbel race draws it
    ``x / (e^x - 1)`` as often, ``x = p_max / (p 2^24)``: 0.3% too rarely, computed over every float32 uniform."""
    for ratio in (1e-2, 1e-4, 1e-5):
        p = torch.tensor([1.0, ratio], dtype=torch.float64)
        p = p / p.sum()
        exact = exact_rates(p)
        assert abs(float(exact[1]) / float(p[1]) - 1) < 1e-3
    p = torch.tensor([1.0, 1e-5], dtype=torch.float64)
    p = p / p.sum()
    race = exact_rates(p, "gumbel", torch.float32)
    rel = float(race[1]) / float(p[1])
    assert abs(rel - 1) > 1e-3
    assert rel == pytest.approx(float32_race_bias(float(p[1]), float(p[0])), rel=2e-3)


def test_draw_methods_agree_in_law_and_refuse_bad_input():
    p = torch.tensor([[0.2, 0.5, 0.3]], dtype=torch.float64).expand(50000, 3)
    for method in ("inverse-cdf", "gumbel"):
        x = draw(p, torch.Generator().manual_seed(0), method=method)
        freq = torch.bincount(x, minlength=3).double() / len(x)
        torch.testing.assert_close(freq, p[0], rtol=0, atol=4 * math.sqrt(0.25 / len(x)))
    with pytest.raises(ValueError, match="unknown categorical method"):
        draw(p, method="nope")
    with pytest.raises(ValueError, match="masked process"):
        first_hitting(lambda x, t: None, Uniform(3), 2, 2)
    with pytest.raises(ValueError, match="vocab"):
        Masked(1)
    with pytest.raises(ValueError, match="unknown token schedule"):
        TokenSchedule("square")


def test_masked_nelbo_is_tight_at_the_exact_posterior_and_larger_elsewhere():
    """Enumerating the mask patterns: the exact posterior's NELBO is ``-log p(x0)``; a perturbed model's expected
    NELBO over the data law is larger; the one-draw training estimate is unbiased (within 4 standard errors)."""
    from sdeflow.discrete import MaskedNELBO, masked_nelbo_exact

    process = Masked(3)
    mix = ProductMixture.random(4, 3, components=3, seed=0)
    seqs, law = mix.sequences(), mix.law()
    oracle = mix.denoiser(process)
    exact = masked_nelbo_exact(oracle, seqs, process)
    torch.testing.assert_close(exact, -mix.log_prob(seqs), rtol=1e-10, atol=1e-10)

    def perturbed(x_t, t):
        p = oracle(x_t, t) * torch.tensor([1.3, 1.0, 0.8], dtype=torch.float64)
        return p / p.sum(-1, keepdim=True)

    assert float((law * masked_nelbo_exact(perturbed, seqs, process)).sum()) > float((law * exact).sum()) + 1e-3
    x0 = seqs[[5, 40]]
    loss = MaskedNELBO(process)
    draws = torch.stack([loss(lambda x, t: torch.log(oracle(x, t)), x0, generator=torch.Generator().manual_seed(k))
                         for k in range(2000)]).double()
    err = 4 * draws.std(0) / math.sqrt(len(draws))
    assert bool(((draws.mean(0) - exact[[5, 40]]).abs() < err).all())


@pytest.mark.parametrize("process,order", [(Masked(3), 0.9), (Uniform(3), 0.5)], ids=["masked", "uniform"])
def test_dfm_euler_law_converges(process, order):
    """Discrete flow matching's Euler steps: the exact output law's TV to the data shrinks as the steps double,
    at first order on the masked process (measured 1.0) and more slowly on the uniform one at these step counts
    (measured 0.64 from 8 to 32 steps, 0.69 from 32 to 128: tokens keep jumping at the rate
    ``-alpha' / (1 - alpha)``, which grows towards the data)."""
    from sdeflow.discrete import dfm_euler, euler_probs

    mix = ProductMixture.random(3, 3, components=3, seed=1)
    model = mix.denoiser(process)
    tvs = [_tv(output_law(process, model, torch.linspace(1, 0, n + 1), 3, step=euler_probs), mix) for n in (8, 16, 32)]
    assert tvs[0] > tvs[1] > tvs[2] > 0 and math.log(tvs[0] / tvs[2]) / math.log(4) > order, tvs
    res = dfm_euler(model, process, torch.linspace(1, 0, 5), 10, 3, generator=torch.Generator().manual_seed(0))
    assert res.x.shape == (10, 3) and int(res.x.max()) < 3  # every token unmasked at t = 0


@pytest.mark.parametrize("kind", ["masked", "uniform"])
def test_flow_matching_solver_has_the_law_of_dfm_euler(kind):
    """flow_matching's ``MixtureDiscreteEulerSolver`` (its time 0 = noise, ``kappa = t``) on the exact posterior:
    its draws follow the exact output law sdeflow computes for :func:`dfm_euler` on the same grid (chi-square)."""
    fm = pytest.importorskip("flow_matching")
    from flow_matching.path import MixtureDiscreteProbPath
    from flow_matching.path.scheduler import PolynomialConvexScheduler
    from flow_matching.solver import MixtureDiscreteEulerSolver
    from flow_matching.utils import ModelWrapper

    from sdeflow.discrete import euler_probs

    process = Masked(3) if kind == "masked" else Uniform(3)
    mix = ProductMixture.random(3, 3, components=3, seed=1)
    oracle = mix.denoiser(process)

    class Posterior(ModelWrapper):
        def forward(self, x, t, **extras):  # flow_matching's time runs from noise (0) to data (1)
            p = oracle(x, 1.0 - t[0].double())
            out = torch.zeros(*x.shape, process.states, dtype=torch.float64)
            out[..., :3] = p
            return out.float()

    n, steps = 60_000, 4
    solver = MixtureDiscreteEulerSolver(model=Posterior(None), path=MixtureDiscreteProbPath(PolynomialConvexScheduler(1.0)),
                                        vocabulary_size=process.states)
    torch.manual_seed(0)
    x_init = torch.full((n, 3), 3) if kind == "masked" else torch.randint(3, (n, 3))
    grid = torch.linspace(0.0, 1.0, steps + 1)
    x = solver.sample(x_init=x_init, step_size=None, time_grid=grid)
    law = output_law(process, oracle, 1.0 - grid.double(), 3, step=euler_probs)
    counts = torch.bincount((x * torch.tensor([9, 3, 1])).sum(1), minlength=27).double()
    expected = torch.tensor([law.get(s, 0.0) for s in itertools.product(range(3), repeat=3)], dtype=torch.float64) * n
    chi2 = float(((counts - expected) ** 2 / expected.clamp_min(1e-9)).sum())
    assert chi2 < 26 + 5 * math.sqrt(2 * 26), chi2
    assert fm is not None


@pytest.mark.parametrize("process", [Masked(3), Uniform(3)], ids=["masked", "uniform"])
def test_concrete_score_and_rates_from_the_posterior(process):
    """SEDD's ratios ``p_t(x^{l <- y}) / p_t(x)`` from the posterior equal the ratios of the noised law computed
    by enumeration (masked process: at masked positions; an unmasked token stays); discrete flow matching's rates
    sum to zero per position and move mass only off ``x_t``."""
    from sdeflow.discrete import concrete_score, dfm_rates, guided

    mix = ProductMixture.random(3, 3, components=3, seed=3)
    seqs, law = mix.sequences(), mix.law()
    t = 0.4
    Q = process.kernel(t)

    def p_t(x):  # the noised law of one sequence, by enumeration
        return float((law * torch.stack([Q[seqs[:, j], x[j]] for j in range(3)]).prod(0)).sum())

    x_t = torch.randint(process.states, (5, 3), generator=torch.Generator().manual_seed(0))
    score = concrete_score(process, x_t, mix.posterior(x_t, process, t), t)
    for b in range(5):
        for j in range(3):
            if isinstance(process, Masked) and int(x_t[b, j]) != process.mask:
                assert score[b, j].tolist() == [float(v == int(x_t[b, j])) for v in range(process.states)]
                continue
            for y in range(process.states):
                moved = x_t[b].clone()
                moved[j] = y
                assert float(score[b, j, y]) == pytest.approx(p_t(moved) / p_t(x_t[b]), rel=1e-9, abs=1e-12)
    rates = dfm_rates(process, x_t, mix.posterior(x_t, process, t), t)
    torch.testing.assert_close(rates.sum(-1), torch.zeros(5, 3, dtype=torch.float64), atol=1e-12, rtol=0)
    off = rates.clone().scatter_(-1, x_t[..., None], 0.0)
    assert bool((off >= 0).all())
    p = mix.posterior(x_t, process, t)
    torch.testing.assert_close(guided(p, p, 3.0), p)  # guidance with a posterior against itself changes nothing


def test_tau_leaping_converges_and_is_the_euler_rule_on_the_masked_process():
    """Tau-leaping's exact output law: first order on the uniform process (measured 0.041, 0.022, 0.011 at 8, 16
    and 32 steps), and on the masked process the same law as the Euler rule (its reverse rates are the mixture
    path's)."""
    from sdeflow.discrete import euler_probs, leap_probs, tau_leaping

    mix = ProductMixture.random(3, 3, components=3, seed=1)
    uni, masked = Uniform(3), Masked(3)
    tvs = [_tv(output_law(uni, mix.denoiser(uni), torch.linspace(1, 0, n + 1), 3, step=leap_probs), mix)
           for n in (8, 16, 32)]
    assert tvs[0] > tvs[1] > tvs[2] and math.log(tvs[0] / tvs[2]) / math.log(4) > 0.9, tvs
    grid = torch.linspace(1, 0, 7)
    a = output_law(masked, mix.denoiser(masked), grid, 3, step=leap_probs)
    b = output_law(masked, mix.denoiser(masked), grid, 3, step=euler_probs)
    assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-12 for k in a)
    res = tau_leaping(mix.denoiser(uni), uni, grid, 8, 3, generator=torch.Generator().manual_seed(0))
    assert res.x.shape == (8, 3) and res.nfe <= 6


def test_infilling_draws_the_exact_conditional_law():
    """A partially unmasked start: the first-hitting sampler with the exact posterior fills in the masked
    positions from ``p(x_masked | x_known)`` (chi-square against the law by enumeration), in one evaluation
    per masked position."""
    process = Masked(3)
    mix = ProductMixture.random(4, 3, components=3, seed=7)
    seqs, law = mix.sequences(), mix.law()
    known = (seqs[:, 0] == 2) & (seqs[:, 3] == 0)
    cond = law[known] / law[known].sum()                      # p(x1, x2 | x0 = 2, x3 = 0)
    n = 40_000
    x_init = torch.tensor([[2, 3, 3, 0]]).expand(n, 4)
    res = first_hitting(mix.denoiser(process), process, n, 4, x_init=x_init, generator=torch.Generator().manual_seed(0))
    assert res.nfe == 2 and bool((res.x[:, 0] == 2).all() & (res.x[:, 3] == 0).all())
    counts = torch.bincount(res.x[:, 1] * 3 + res.x[:, 2], minlength=9).double()
    chi2 = float(((counts - n * cond) ** 2 / (n * cond)).sum())
    assert chi2 < 8 + 5 * math.sqrt(16)


@pytest.mark.parametrize("loss_name", ["score-entropy", "generalized-kl"])
@pytest.mark.parametrize("process", [Masked(3), Uniform(3)], ids=["masked", "uniform"])
def test_losses_are_least_at_the_exact_targets(process, loss_name):
    """The expected loss over clean sequences and their noised views (by enumeration) is least at its exact
    target: SEDD's score entropy at the concrete score, discrete flow matching's generalized KL at the marginal
    rates, both from the exact posterior. Scaling the prediction either way raises it."""
    from sdeflow.discrete import concrete_score, dfm_rates, generalized_kl, score_entropy

    predict, loss_fn = {"score-entropy": (concrete_score, score_entropy),
                        "generalized-kl": (dfm_rates, generalized_kl)}[loss_name]
    mix = ProductMixture.random(2, 3, components=2, seed=4)
    seqs, law = mix.sequences(), mix.law()
    t = 0.5
    Q = process.kernel(t)
    states = torch.tensor(list(itertools.product(range(process.states), repeat=2)), dtype=torch.long)

    def expected(scale):
        total = 0.0
        for x_t in states:
            x_t = x_t[None]
            p_x0 = law * Q[seqs[:, 0], x_t[0, 0]] * Q[seqs[:, 1], x_t[0, 1]]   # p(x0, x_t)
            if float(p_x0.sum()) == 0:
                continue
            pred = predict(process, x_t, mix.posterior(x_t, process, t), t) * scale
            loss = loss_fn(process, pred.expand(len(seqs), -1, -1), x_t.expand(len(seqs), -1), seqs, t)
            total += float((p_x0 * loss).sum())
        return total

    best = expected(1.0)
    assert expected(1.2) > best + 1e-6 and expected(0.8) > best + 1e-6
