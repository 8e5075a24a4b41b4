"""Token networks, their training and sampling, against exact token laws: the token losses with one time per
row at the exact posterior, remasking and the Euler corrector (exact marginals, laws), flow_matching's solver
draw for draw, classifier-free guidance of token models, the trainer's token runs (resume, previews) and the
flow_matching adapter."""

import itertools
import math

import pytest
import torch

from sdeflow import models
from sdeflow.discrete import (TOKEN_SAMPLERS, Masked, ProductMixture, TokenLoss, TokenModel, TokenSchedule, Uniform,
                              ancestral, dfm_euler, euler_probs, guided, output_law, remask_probs, sample_tokens,
                              score_entropy, step_probs)
from sdeflow.discrete.categorical import draw, uniforms


def _tv(law: dict, mix: ProductMixture) -> float:
    seqs = [tuple(s) for s in mix.sequences().tolist()]
    return 0.5 * sum(abs(law.get(s, 0.0) - float(p)) for s, p in zip(seqs, mix.law()))


class OracleNet(torch.nn.Module):
    """A "network" whose logits are the exact log-posterior of a mixture whose components are the classes
    (label ``K``: no label, the whole mixture); ``scale`` tempers it (a wrong model)."""

    def __init__(self, mix: ProductMixture, process, scale: float = 1.0):
        super().__init__()
        self.mix, self.process, self.scale = mix, process, scale
        self.config = {"num_classes": len(mix.weights)}
        self.dummy = torch.nn.Parameter(torch.zeros(()))
        self.calls = 0

    def forward(self, x, c, label=None):
        self.calls += 1
        t = c.double()
        out = torch.log(self.mix.posterior(x, self.process, t).clamp_min(1e-300))
        if label is not None:
            k = len(self.mix.weights)
            for j in range(k):
                rows = label == j
                if bool(rows.any()):
                    one = ProductMixture(torch.ones(1, dtype=torch.float64), self.mix.probs[j:j + 1])
                    out[rows] = torch.log(one.posterior(x[rows], self.process, t[rows]).clamp_min(1e-300))
        return (self.scale * out).float()


@pytest.mark.parametrize("kind,process", [("nelbo", Masked(3)), ("score-entropy", Uniform(3)),
                                          ("score-entropy", Masked(3)), ("gkl", Masked(3)), ("gkl", Uniform(3))],
                         ids=["nelbo", "sedd-uniform", "sedd-masked", "gkl-masked", "gkl-uniform"])
def test_token_losses_are_least_at_the_exact_posterior(kind, process):
    """The trainer's loss, one time per row: the exact posterior scores below a tempered one on the same draws;
    the NELBO's mean is ``E[-log p(x0)]`` (tight at the exact posterior) within 4 standard errors."""
    mix = ProductMixture.random(3, 3, components=3, seed=2)
    process = type(process)(3, TokenSchedule("cosine"))
    loss = TokenLoss(process, kind)
    g = torch.Generator().manual_seed(0)
    x0 = mix.sample(20_000, g)
    t, x_t = loss.draw(x0, None, g)
    exact = loss(TokenModel(OracleNet(mix, process), process), x0, t=t, eps=x_t).double()
    worse = loss(TokenModel(OracleNet(mix, process, scale=0.7), process), x0, t=t, eps=x_t).double()
    diff = worse - exact
    assert float(diff.mean()) > 4 * float(diff.std()) / math.sqrt(len(diff)), (float(diff.mean()), float(diff.std()))
    if kind == "nelbo":
        target = -mix.log_prob(x0)
        err = exact - target
        assert abs(float(err.mean())) < 4 * float(err.std()) / math.sqrt(len(err)), float(err.mean())


def test_losses_take_one_time_per_row_as_a_batch_of_scalar_times():
    process = Uniform(4, TokenSchedule("cosine"))
    g = torch.Generator().manual_seed(1)
    x0 = torch.randint(4, (6, 5), generator=g)
    t = torch.rand(6, generator=g, dtype=torch.float64) * 0.9 + 0.05
    x_t = process.noise(x0, t, g)
    ratios = torch.rand(6, 5, 4, generator=g, dtype=torch.float64) + 0.1
    rows = torch.cat([score_entropy(process, ratios[i:i + 1], x_t[i:i + 1], x0[i:i + 1], float(t[i])) for i in range(6)])
    torch.testing.assert_close(score_entropy(process, ratios, x_t, x0, t), rows)


@pytest.mark.parametrize("eta", [0.3, 1.0])
def test_remasking_carries_the_marginal_exactly(eta):
    """ReMDM's step maps one position's exact marginal ``q_t`` to ``q_s``: with one position and the exact
    posterior its output law is the data's at 3 steps for every ``eta``; ``eta = 0`` is the ancestral step; on
    three positions it converges to the data as the steps grow."""
    mix1 = ProductMixture.random(1, 4, components=2, seed=3)
    process = Masked(4, TokenSchedule("cosine"))
    law = output_law(process, mix1.denoiser(process), torch.linspace(1, 0, 4), 1, step=remask_probs(eta))
    assert _tv(law, mix1) < 1e-12
    mix = ProductMixture.random(3, 3, components=3, seed=4)
    process = Masked(3, TokenSchedule("cosine"))
    post = mix.denoiser(process)
    ts = torch.linspace(1, 0, 5)
    plain, zero = output_law(process, post, ts, 3), output_law(process, post, ts, 3, step=remask_probs(0.0))
    assert max(abs(plain[k] - zero.get(k, 0.0)) for k in plain) < 1e-12
    tvs = [_tv(output_law(process, post, torch.linspace(1, 0, n + 1), 3, step=remask_probs(eta)), mix) for n in (4, 8, 16)]
    assert tvs[0] > tvs[1] > tvs[2], tvs


def test_remasking_refuses_bad_strengths_and_the_uniform_process():
    with pytest.raises(ValueError, match="eta"):
        remask_probs(1.5)
    with pytest.raises(ValueError, match="masked process"):
        sample_tokens(lambda x, t: None, Uniform(3), "remask", 4, 2, 3)


@pytest.mark.parametrize("kind", ["masked", "uniform"])
def test_euler_corrector_converges_and_is_the_plain_step_at_zero(kind):
    mix = ProductMixture.random(3, 3, components=3, seed=5)
    process = Masked(3) if kind == "masked" else Uniform(3)
    post = mix.denoiser(process)
    x = torch.tensor([[0, 3, 1], [3, 3, 3]]) if kind == "masked" else torch.tensor([[0, 2, 1], [1, 1, 1]])
    p = post(x, 0.6)
    torch.testing.assert_close(euler_probs(process, x, p, 0.6, 0.4, corrector=0.0), euler_probs(process, x, p, 0.6, 0.4))
    step = lambda *a: euler_probs(*a, corrector=1.0)  # noqa: E731
    tvs = [_tv(output_law(process, post, torch.linspace(1, 0, n + 1), 3, step=step), mix) for n in (8, 16, 32)]
    assert tvs[0] > tvs[1] > tvs[2] and tvs[2] < 0.6 * tvs[0], tvs


@pytest.mark.parametrize("corrector", [0.0, 1.0], ids=["euler", "corrector"])
@pytest.mark.parametrize("kind", ["masked", "uniform"])
def test_flow_matching_solver_equals_dfm_euler_given_the_same_uniforms(kind, corrector, monkeypatch):
    """flow_matching's ``MixtureDiscreteEulerSolver`` (``div_free`` = the corrector from its second step on), its
    categorical draws and jump uniforms fed from the stream sdeflow's :func:`dfm_euler` reads: the same tokens."""
    pytest.importorskip("flow_matching")
    from flow_matching.path import MixtureDiscreteProbPath
    from flow_matching.path.scheduler import PolynomialConvexScheduler
    from flow_matching.solver import MixtureDiscreteEulerSolver, discrete_solver
    from flow_matching.utils import ModelWrapper

    from sdeflow.adapters import from_flow_matching_tokens

    vocab = 3
    mix = ProductMixture.random(4, vocab, components=3, seed=6)
    states = vocab + (kind == "masked")
    process = Masked(vocab, TokenSchedule("power", 2.0)) if kind == "masked" else Uniform(vocab, TokenSchedule("power", 2.0))
    oracle = mix.denoiser(process)

    class Posterior(ModelWrapper):
        def forward(self, x, t, **extras):
            return torch.nn.functional.pad(oracle(x, 1.0 - t.double()), (0, states - vocab))

    stream = torch.Generator()

    class Torch:  # flow_matching's module-level torch with rand read from the shared stream
        def __getattr__(self, name):
            return getattr(torch, name)

        def rand(self, size, device=None, **kw):
            return uniforms(tuple(size), stream)

    monkeypatch.setattr(discrete_solver, "torch", Torch())
    monkeypatch.setattr(discrete_solver, "categorical", lambda p: draw(p.double() / p.double().sum(-1, keepdim=True), stream))
    scheduler = PolynomialConvexScheduler(2.0)
    solver = MixtureDiscreteEulerSolver(model=Posterior(None), path=MixtureDiscreteProbPath(scheduler), vocabulary_size=states,
                                        source_distribution_p=process.noise_law().float())
    n, steps = 400, 6
    x_init = torch.full((n, 4), vocab) if kind == "masked" else torch.randint(vocab, (n, 4), generator=torch.Generator().manual_seed(1))
    grid = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    stream.manual_seed(7)
    theirs = solver.sample(x_init=x_init.clone(), step_size=None, time_grid=grid, dtype_categorical=torch.float64,
                           div_free=lambda t: corrector * float(t > 0))
    model, adapted = from_flow_matching_tokens(Posterior(None), scheduler, states, time_dtype=torch.float64,
                                               source="mask" if kind == "masked" else "uniform")
    assert adapted == process
    stream.manual_seed(7)
    ours = dfm_euler(model, process, 1.0 - grid, n, 4, x_init=x_init, generator=stream, corrector=corrector).x
    assert torch.equal(ours, theirs), float((ours != theirs).double().mean())


def test_flow_matching_adapter_refuses_what_it_cannot_map():
    pytest.importorskip("flow_matching")
    from flow_matching.path.scheduler import CosineScheduler, CondOTScheduler

    from sdeflow.adapters import from_flow_matching_tokens

    with pytest.raises(ValueError, match="no sdeflow token schedule"):
        from_flow_matching_tokens(None, CosineScheduler(), 5)
    with pytest.raises(ValueError, match="last id"):
        from_flow_matching_tokens(None, CondOTScheduler(), 5, mask_token=0)
    model, process = from_flow_matching_tokens(None, CondOTScheduler(), 5)
    assert process == Masked(4, TokenSchedule("linear"))


def test_classifier_free_guidance_of_a_token_model():
    """One batched pass gives ``p_c^w p^(1 - w)``; at ``w = 1`` first-hitting draws the class' exact law; a guided
    model's ancestral draws follow the output law computed for it (chi-square)."""
    mix = ProductMixture.random(3, 3, components=3, seed=8)
    process = Masked(3, TokenSchedule("linear"))
    net = OracleNet(mix, process)
    x = torch.tensor([[3, 1, 3], [0, 3, 3]])
    labels = torch.tensor([1, 2])
    cond = TokenModel(net, process, label=labels)(x, 0.5)
    uncond = TokenModel(net, process)(x, 0.5)
    net.calls = 0
    out = TokenModel(net, process, label=labels, guidance=3.0)(x, 0.5)
    assert net.calls == 1
    torch.testing.assert_close(out, guided(cond, uncond, 3.0))
    n = 30_000
    one = ProductMixture(torch.ones(1, dtype=torch.float64), mix.probs[1:2])
    res = sample_tokens(TokenModel(net, process, label=1), process, "first-hitting", 3, n, 3,
                        generator=torch.Generator().manual_seed(0))
    _chi2_against(res.x, {tuple(s): float(p) for s, p in zip(one.sequences().tolist(), one.law())}, n)
    model = TokenModel(net, process, label=1, guidance=2.5)
    ts = torch.linspace(1, 0, 5)
    res = ancestral(model, process, ts, n, 3, generator=torch.Generator().manual_seed(1))
    _chi2_against(res.x, output_law(process, model, ts, 3), n)


def _chi2_against(x: torch.Tensor, law: dict, n: int) -> None:
    keys = list(itertools.product(range(3), repeat=3))
    counts = torch.bincount((x * torch.tensor([9, 3, 1])).sum(1), minlength=27).double()
    expected = torch.tensor([law.get(k, 0.0) for k in keys], dtype=torch.float64) * n
    keep = expected > 5
    chi2 = float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())
    dof = int(keep.sum()) - 1
    assert chi2 < dof + 5 * math.sqrt(2 * dof), (chi2, dof)
    assert float(counts[~keep].sum()) < 10 + 3 * float(expected[~keep].sum())


@pytest.mark.parametrize("arch,extra", [("token-transformer", dict(dim=32, depth=2, heads=2)),
                                        ("token-unet", dict(embed=8, base=8, mults=[1, 2], attention=[1]))])
def test_token_networks(arch, extra):
    net = models.build(arch, dict(vocab=5, length=16, mask=True, num_classes=3, **extra))
    x = torch.randint(6, (4, 16))
    out = net(x, torch.rand(4), label=torch.tensor([0, 1, 2, 3]))
    assert out.shape == (4, 16, 5) and bool(torch.isfinite(out).all())
    rebuilt = models.build(arch, net.config)
    rebuilt.load_state_dict(net.state_dict())
    torch.testing.assert_close(rebuilt(x, torch.full((4,), 0.3)), net(x, torch.full((4,), 0.3)))
    with pytest.raises(ValueError, match="integer tokens"):
        net(torch.rand(4, 16), torch.rand(4))
    with pytest.raises(ValueError, match="square"):
        models.build("token-unet", dict(vocab=5, length=15))


def test_token_samplers_refuse_bad_starts_before_any_evaluation():
    process = Masked(3)
    calls = []
    model = lambda x, t: calls.append(1)  # noqa: E731
    for name in TOKEN_SAMPLERS:
        with pytest.raises(ValueError, match="x_init"):
            sample_tokens(model, process, name, 4, 2, 3, x_init=torch.tensor([[0, 4, 1], [3, 3, 3]]))
    with pytest.raises(ValueError, match="nfe"):
        sample_tokens(model, process, "ancestral", 0, 2, 3)
    with pytest.raises(ValueError, match="unknown token sampler"):
        sample_tokens(model, process, "euler", 4, 2, 3)
    assert not calls


def test_the_step_law_is_unchanged_by_the_named_table():
    """Every named grid sampler draws from the law of its step (one position, exact posterior: the ancestral
    step is exact at any number of steps)."""
    mix = ProductMixture.random(1, 4, components=2, seed=9)
    process = Masked(4)
    law = output_law(process, mix.denoiser(process), torch.linspace(1, 0, 3), 1, step=step_probs)
    assert _tv(law, mix) < 1e-12


@pytest.mark.parametrize("tokens,loss,arch", [("masked", "nelbo", "token-transformer"), ("uniform", "score-entropy", "token-unet"),
                                              ("masked", "gkl", "token-transformer")])
def test_token_runs_resume_exactly_and_sample_from_the_cli(tmp_path, capsys, tokens, loss, arch):
    """``sdeflow train --tokens``: a run stopped and resumed ends with the weights of an uninterrupted one (times
    and masks come from each step's generator), writes previews, loads as a token model and samples from the
    command line; the commands for continuous models refuse it."""
    from sdeflow.cli.main import main
    from sdeflow.pretrained import load_model
    from cases import resumes_exactly
    from sdeflow.training.config import TrainConfig

    small = dict(dim=16, depth=1, heads=2) if arch == "token-transformer" else dict(embed=8, base=8)

    def cfg(out, steps):
        return TrainConfig(data="digits", out=str(tmp_path / out), tokens=tokens, token_loss=loss, architecture=arch,
                           steps=steps, batch_size=16, checkpoint_every=2, sample_every=4 if out == "ref" else 0,
                           sample_nfe=4, model=small)

    meta = resumes_exactly(tmp_path, cfg)
    assert (tmp_path / "ref" / "samples" / "step_0000004.png").exists()
    assert meta["data"]["kind"] == "tokens" and meta["data"]["image"] == [1, 8, 8] and meta["data"]["levels"] == 17
    model = load_model(str(tmp_path / "ref"), tokens=True)
    assert isinstance(model.denoiser, TokenModel) and model.shape == (64,)
    capsys.readouterr()
    out = tmp_path / "s.npz"
    assert main(["sample", "--checkpoint", str(tmp_path / "ref"), "--nfe", "3", "-n", "12", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "shipped digits classifier: accuracy" in printed and "NFE" in printed
    import numpy as np

    arrays = np.load(out)
    assert arrays["tokens"].shape == (12, 64) and arrays["samples"].shape == (12, 1, 8, 8)
    assert arrays["tokens"].max() <= 16 and arrays["tokens"].min() >= 0
    assert main(["sample", "--checkpoint", str(tmp_path / "ref"), "--sampler", "euler", "--out", ""]) == 1
    assert "not a token sampler" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(tmp_path / "ref"), "--teleport", "auto", "--out", ""]) == 1
    assert "does not apply to a token model" in capsys.readouterr().err
    assert main(["diagnose", "--checkpoint", str(tmp_path / "ref")]) == 1
    assert "token model" in capsys.readouterr().err
    if tokens == "masked":
        assert main(["likelihood", "--checkpoint", str(tmp_path / "ref"), "--num", "6", "--probes", "2"]) == 0
        assert "bits per token" in capsys.readouterr().out


def test_bad_token_training_settings_are_refused():
    from sdeflow.training.config import TrainConfig

    with pytest.raises(ValueError, match="unknown token process"):
        TrainConfig(tokens="absorbing").resolved()
    with pytest.raises(ValueError, match="score-entropy or gkl"):
        TrainConfig(tokens="uniform").resolved()
    with pytest.raises(ValueError, match="unknown token schedule"):
        TrainConfig(tokens="masked", token_schedule="sqrt").resolved()
    with pytest.raises(ValueError, match="unknown token sampler"):
        TrainConfig(tokens="masked", sample_sampler="heun").resolved()
    with pytest.raises(ValueError, match="needs the masked process"):
        TrainConfig(tokens="uniform", token_loss="gkl", sample_sampler="first-hitting").resolved()
    with pytest.raises(ValueError, match="architecture"):
        TrainConfig(tokens="masked", architecture="unet").resolved()
    with pytest.raises(ValueError, match="not both"):
        TrainConfig(tokens="masked", process="i2sb").resolved()
    with pytest.raises(ValueError, match="reads images as tokens"):
        from sdeflow.training.trainer import Trainer

        Trainer(TrainConfig(data="moons", tokens="masked", out="/nonexistent/x", steps=1), progress=False)


def test_first_hitting_in_blocks_follows_its_exact_law_and_beats_ancestral_steps():
    """With a budget of ``nfe < L`` evaluations the first-hitting sampler unmasks blocks of equal size, the
    larger last: its draws follow the law :func:`hitting_law` computes (chi-square), that law is the data's at
    ``nfe = L`` and closer to it than the ancestral sampler's on ``nfe`` steps."""
    from sdeflow.discrete import first_hitting, hitting_law

    mix = ProductMixture.random(3, 3, components=3, seed=10)
    process = Masked(3, TokenSchedule("cosine"))
    post = mix.denoiser(process)
    assert _tv(hitting_law(process, post, 3, 3), mix) < 1e-12
    tvs = [_tv(hitting_law(process, post, 3, n), mix) for n in (1, 2)]
    ancestral_tvs = [_tv(output_law(process, post, torch.linspace(1, 0, n + 1), 3), mix) for n in (2,)]
    assert tvs[0] > tvs[1] > 0 and tvs[1] < ancestral_tvs[0], (tvs, ancestral_tvs)
    n = 30_000
    res = first_hitting(post, process, n, 3, nfe=2, generator=torch.Generator().manual_seed(2))
    assert res.nfe == 2
    _chi2_against(res.x, hitting_law(process, post, 3, 2), n)


def test_the_nelbo_estimate_of_a_token_model_is_the_exact_nelbo_in_expectation():
    from sdeflow.discrete import masked_nelbo_exact, nelbo_estimate

    mix = ProductMixture.random(3, 3, components=3, seed=11)
    process = Masked(3, TokenSchedule("cosine"))
    model = TokenModel(OracleNet(mix, process, scale=0.8), process)           # a wrong model: its NELBO is loose
    x0 = mix.sequences()[:6]
    mean, se = nelbo_estimate(model, x0, process, 4000, generator=torch.Generator().manual_seed(0))
    exact = masked_nelbo_exact(model, x0, process)
    assert bool(((mean - exact).abs() < 5 * se).all()), (mean, exact, se)
    seqs, law = mix.sequences(), mix.law()                                   # in expectation over the data: above
    assert float((law * masked_nelbo_exact(model, seqs, process)).sum()) > float((law * -mix.log_prob(seqs)).sum())
