"""Few-step models: flow maps and their samplers against the exact flow map of a Gaussian, the
losses' fixed points (each objective's residual vanishes at the exact flow map), reflow pairs, and
students distilled from the shipped 2-D model that beat their teacher at equal NFE."""

from __future__ import annotations

import pytest
import torch

from sdeflow import sample
from sdeflow.analytic import OracleFlowMap, gaussian
from sdeflow.cli.main import main
from sdeflow.denoisers import FlowMapDenoiser, ModelDenoiser, jump_coefficients
from sdeflow.generation import gather, generate
from sdeflow.grids import uniform_grid
from sdeflow.metrics import sliced_wasserstein
from sdeflow.models import MLP
from sdeflow.registry import SCHEDULES
from sdeflow.samplers import DDIM, Euler, FlowMapSampler, Heun
from sdeflow import checkpoint as ckpt
from sdeflow.training.config import TrainConfig
from sdeflow.objectives.fewstep import ConsistencyLoss, MeanFlowLoss, ProgressiveDistillationLoss, ShortcutLoss
from sdeflow.training.trainer import Trainer

PROCESSES = ["rectified-flow", "vp-cosine", "edm"]
GAUSS = gaussian(torch.tensor([1.0, -2.0, 0.5]), torch.tensor([[1.0, 0.3, 0.0], [0.3, 0.5, 0.1], [0.0, 0.1, 0.2]]))


def _draws(n=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = GAUSS.sample(n, g).double()
    return x, torch.randn(x.shape, generator=g, dtype=torch.float64), 0.01 + 0.98 * torch.rand(n, generator=g, dtype=torch.float64)


class Scaled(OracleFlowMap):
    """The exact flow map with its jump denoiser off by 1%: every residual must see it."""

    def forward(self, x_t, t, target=None, **cond):
        return 1.01 * super().forward(x_t, t, target, **cond)


# ---- the flow map and its sampler --------------------------------------------------------------------
@pytest.mark.parametrize("name", PROCESSES)
def test_jump_coefficients_have_the_exact_special_cases(name):
    sched = SCHEDULES[name]()
    t = torch.tensor([0.3, 0.7, 1.0], dtype=torch.float64)
    a, b = jump_coefficients(sched, t, t)
    assert torch.equal(a, torch.ones(3, dtype=torch.float64)) and torch.equal(b, torch.zeros(3, dtype=torch.float64))
    a, b = jump_coefficients(sched, t, torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(a, torch.zeros(3, dtype=torch.float64)) and torch.allclose(b, torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("name", PROCESSES)
@pytest.mark.parametrize("steps", [1, 2, 5])
def test_jumps_of_the_exact_flow_map_are_the_exact_flow_map(name, steps):
    """Composing jumps along any grid gives the exact probability-flow map from t = 1 to the data."""
    sched = SCHEDULES[name]()
    fm = OracleFlowMap(GAUSS, sched)
    x1 = GAUSS.sample_t(256, sched, 1.0, torch.Generator().manual_seed(0))[0]
    out = sample(fm, FlowMapSampler(), uniform_grid(steps), x1)
    assert out.nfe == steps
    assert torch.allclose(out.x, GAUSS.flow_map(x1, sched, 1.0, 0.0), atol=1e-9)


@pytest.mark.parametrize("name", PROCESSES)
@pytest.mark.parametrize("gamma", [0.5, 1.0])
def test_renoising_jumps_of_the_exact_flow_map_sample_the_data(name, gamma):
    """Consistency sampling (and gamma-sampling) re-noises between jumps: the output law is still the
    data's; mean and covariance within 5 standard errors of 20000 draws."""
    sched = SCHEDULES[name]()
    n = 20000
    g = torch.Generator().manual_seed(3)
    x1 = GAUSS.sample_t(n, sched, 1.0, g)[0]
    torch.manual_seed(4)
    out = sample(OracleFlowMap(GAUSS, sched), FlowMapSampler(gamma), uniform_grid(3), x1).x
    cov = GAUSS.covariance()
    assert ((out.mean(0) - GAUSS.mean()).abs() <= 5 * torch.sqrt(torch.diagonal(cov) / n)).all()
    se = torch.sqrt((cov ** 2 + torch.outer(torch.diagonal(cov), torch.diagonal(cov))) / n)
    assert ((torch.cov(out.T) - cov).abs() <= 5 * se).all()


def test_flow_map_samplers_refuse_plain_denoisers_and_bad_gamma():
    sched = SCHEDULES["rectified-flow"]()
    with pytest.raises(ValueError, match="plain denoiser"):
        sample(GAUSS.denoiser(sched), FlowMapSampler(), uniform_grid(2), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="gamma"):
        FlowMapSampler(gamma=1.5)


def test_a_jump_network_from_a_denoisers_weights_starts_as_that_denoiser():
    """The gap input starts at zero: every jump denoiser equals the teacher's x_hat, and a flow-map
    step with it is the teacher's DDIM step."""
    torch.manual_seed(0)
    sched = SCHEDULES["rectified-flow"]()
    plain, jump = MLP(3, width=32, depth=2), MLP(3, width=32, depth=2, jump=True)
    for p in plain.parameters():
        torch.nn.init.normal_(p, std=0.3)
    jump.load_state_dict({**jump.state_dict(), **plain.state_dict()})
    teacher = ModelDenoiser(plain, sched, "velocity")
    student = FlowMapDenoiser(jump, sched, "velocity")
    x = torch.randn(16, 3)
    for s in (0.0, 0.3, 0.6):
        assert torch.allclose(student(x, 0.6, target=s), teacher(x, 0.6), atol=1e-6)
    a = sample(student, FlowMapSampler(), uniform_grid(3), x).x
    b = sample(teacher, DDIM(), uniform_grid(3), x).x
    assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="not a flow map"):
        plain(x, torch.full((16,), 0.5), gap=torch.zeros(16))


# ---- each objective's residual vanishes at the exact flow map ----------------------------------------
@pytest.mark.parametrize("name", PROCESSES)
def test_the_meanflow_identity_holds_for_the_exact_flow_map(name):
    """d/dt X(x_t, t, s) = 0 along the exact flow: the MeanFlow target equals the exact map's output
    (to rounding), in every schedule; a 1% wrong map is seen."""
    sched = SCHEDULES[name]()
    x, eps, t = _draws()
    loss = MeanFlowLoss(teacher=GAUSS.denoiser(sched), jump_fraction=1.0, power=0)
    extra = loss.extra(64, sched, torch.Generator().manual_seed(2))
    assert loss(OracleFlowMap(GAUSS, sched), x, t=t, eps=eps, extra=extra).max() < 1e-20
    assert loss(Scaled(GAUSS, sched), x, t=t, eps=eps, extra=extra).mean() > 1e-6


@pytest.mark.parametrize("name", PROCESSES)
def test_the_exact_flow_map_is_self_consistent_in_its_step_size(name):
    """X(x_t, t, s) = X(X(x_t, t, m), m, s): the shortcut residual vanishes at every level but the
    finest (whose halves are instantaneous DDIM steps), and sees a 1% wrong map."""
    sched = SCHEDULES[name]()
    x, eps, _ = _draws()
    loss = ShortcutLoss(jump_fraction=1.0, levels=4)
    level = torch.arange(64) % 3
    t, s = loss.jump_times(level, torch.rand(64, generator=torch.Generator().manual_seed(4), dtype=torch.float64))
    x_t = sched.alpha(t)[:, None] * x + sched.sigma(t)[:, None] * eps
    assert loss.residual(OracleFlowMap(GAUSS, sched), x_t, t, s, level, {}).abs().max() < 1e-9
    assert loss.residual(Scaled(GAUSS, sched), x_t, t, s, level, {}).abs().max() > 1e-4


def test_shortcut_jumps_are_the_steps_of_the_uniform_grids():
    """Level k draws each step (t, t - 2^-k) of the 2^k-step uniform grid equally often."""
    u = (torch.arange(4000, dtype=torch.float64) + 0.5) / 4000
    for k in range(5):
        t, s = ShortcutLoss.jump_times(torch.full((4000,), k), u)
        n = 2 ** k
        assert torch.allclose(t - s, torch.full_like(t, 1 / n)) and float(s.min()) >= 0 and float(t.max()) == 1.0
        assert torch.equal(torch.bincount((t * n).round().long() - 1, minlength=n), torch.full((n,), 4000 // n))


@pytest.mark.parametrize("name", PROCESSES)
def test_consistency_distillation_residual_is_the_teachers_third_order_local_error(name):
    """With the exact consistency function, what remains of the distillation loss is the local error
    of the teacher's second-order step: it falls 8-fold when the discretisation doubles."""
    sched = SCHEDULES[name]()
    x, eps, _ = _draws()
    extra = torch.rand(64, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    errors = []
    for n in (40, 80, 160):
        loss = ConsistencyLoss(GAUSS.denoiser(sched), total_steps=1, s0=n, s1=n, huber_c=0)
        ts, cdf = loss.grid(sched, n)
        i = torch.searchsorted(cdf, extra[:, 0]).clamp(max=n - 1)
        def ratio(v):
            return torch.where(v > 0, sched.sigma(v) / sched.alpha(v), torch.zeros_like(v))
        per = loss(OracleFlowMap(GAUSS, sched), x, eps=eps, extra=extra) * (ratio(ts[i]) - ratio(ts[i + 1]))
        errors.append(float(per.sqrt().mean()))
    assert all(6.0 < errors[k] / errors[k + 1] < 10.0 for k in range(2)), errors


@pytest.mark.parametrize("name", PROCESSES)
def test_progressive_distillation_targets_are_exact_for_a_point_mass(name):
    """For data at one point DDIM is exact, so two teacher steps land where one step with the true
    x_hat lands: the target is the point itself (loss 0); a spread-out Gaussian leaves a gap."""
    sched = SCHEDULES[name]()
    x, eps, _ = _draws()
    point = gaussian(torch.tensor([0.7, -0.3, 0.2]), 1e-14 * torch.eye(3))
    extra = torch.rand(64, 1, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert ProgressiveDistillationLoss(point.denoiser(sched), 4)(point.denoiser(sched), x, eps=eps, extra=extra).max() < 1e-18
    loss = ProgressiveDistillationLoss(GAUSS.denoiser(sched), 4)(GAUSS.denoiser(sched), x, eps=eps, extra=extra)
    assert loss.mean() > 1e-4


# ---- training: students of the shipped moons model ---------------------------------------------------
MOONS = ["--data", "moons", "--teacher", "moons", "--batch-size", "256", "--lr", "1e-3", "--warmup", "20",
         "--toy-size", "20000", "--no-progress", "--sample-every", "100000"]


def _sliced(den, sampler, ts, data, n=3000):
    return sliced_wasserstein(gather(generate(den, sampler, ts, (2,), n, seed=7, batch_size=n), 1), data[:n])


# training runs of 300-600 steps: two in the default run, the others (6-17 s each) slow
@pytest.mark.parametrize("objective,steps,nfe", [pytest.param("consistency", 300, 2, marks=pytest.mark.slow),
                                                 pytest.param("shortcut", 300, 2, marks=pytest.mark.slow),
                                                 pytest.param("meanflow", 600, 2, marks=pytest.mark.slow),
                                                 ("progressive", 200, 4), ("reflow", 300, 1)])
def test_students_of_the_moons_model_beat_their_teacher_at_equal_nfe(tmp_path, objective, steps, nfe):
    """Each objective, started from the shipped moons model, samples the moons at its few-step budget
    far better than the teacher's Euler steps at that budget (sliced W2 to fresh data); a flow map's
    jumps of the 1-, 2- and 4-step grids land near the teacher's ODE solution from the same x_t."""
    from sdeflow.data import load as load_data
    from sdeflow.pretrained import load_model
    from sdeflow.training.students import sampling

    out = tmp_path / objective
    assert main(["train", "--objective", objective, "--out", str(out), "--steps", str(steps), "--pairs", "3000",
                 *MOONS]) == 0
    data = load_data("moons", toy_size=20000, seed=11).x
    student = load_model(str(out))
    sampler, ts = sampling(TrainConfig.stored(student.meta), student.denoiser.schedule, nfe)
    mine = _sliced(student.denoiser, sampler, ts, data)
    teacher = load_model("moons").denoiser
    assert mine < 0.6 * _sliced(teacher, Euler(), uniform_grid(nfe), data), mine
    if objective in ("consistency", "shortcut", "meanflow"):  # the sampler's jumps against the teacher's ODE solution
        pairs = [(1.0, 0.0), (0.5, 0.0)] + ([] if objective == "consistency" else [(1.0, 0.5), (0.75, 0.5)])
        g = torch.Generator().manual_seed(3)
        for t, s in pairs:
            x_t = teacher.schedule.alpha(t) * data[:2000] + teacher.schedule.sigma(t) * torch.randn(2000, 2, generator=g)
            x_t = x_t.float()
            with torch.no_grad():
                ref = sample(teacher, Heun(), torch.linspace(t, s, 101, dtype=torch.float64), x_t).x
                jump = student.denoiser.jump(x_t, torch.tensor(t, dtype=torch.float64), torch.tensor(s, dtype=torch.float64))
                euler = sample(teacher, Euler(), torch.tensor([t, s], dtype=torch.float64), x_t).x
            err, base = (float(((y - ref) ** 2).sum(1).mean().sqrt()) for y in (jump, euler))
            # measured: err / base 0.06-0.17 for shortcut and consistency, 0.3-0.8 for MeanFlow (the slowest to learn)
            assert err < (0.3 if objective != "meanflow" else 1.0) * base, (t, s, err, base)


def test_reflow_pairs_are_kept_reused_and_refused_with_other_settings(tmp_path, monkeypatch):
    """Pairs are made in chunks and kept: made in two chunks they are those made at once; a second
    run reuses the file; a run with another teacher budget refuses it."""
    from sdeflow.pretrained import load_model
    from sdeflow.training import reflow

    teacher = load_model("moons").denoiser
    whole = reflow.reflow_pairs(teacher, "heun", 6, 40, (2,), seed=3)
    monkeypatch.setattr(reflow, "CHUNK", 25)
    path = str(tmp_path / "pairs.safetensors")
    parts = reflow.reflow_pairs(teacher, "heun", 6, 40, (2,), seed=3, path=path)
    assert torch.equal(whole[0], parts[0]) and torch.allclose(whole[1], parts[1], atol=1e-6)
    assert ckpt.load(path)[0]["data"].shape == (40, 2)
    again = reflow.reflow_pairs(teacher, "heun", 6, 40, (2,), seed=3, path=path)
    assert torch.equal(again[1], parts[1])
    with pytest.raises(ValueError, match="nfe"):
        reflow.reflow_pairs(teacher, "heun", 8, 40, (2,), seed=3, path=path)
    # the noise is the standard normal draw the solve started from: the teacher maps it to the data
    from sdeflow.registry import GRIDS, steps_for_nfe
    from sdeflow.samplers import Heun

    ts = GRIDS["auto"](steps_for_nfe(Heun(), teacher.schedule, "auto", 6), teacher.schedule)
    x0 = whole[0][:5] * float(teacher.schedule.sigma(float(ts[0])))
    assert torch.allclose(sample(teacher, Heun(), ts, x0).x, whole[1][:5], atol=1e-5)


def test_a_few_step_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path):
    base = ["train", "--objective", "shortcut", *MOONS, "--checkpoint-every", "5"]
    assert main([*base, "--out", str(tmp_path / "a"), "--steps", "12"]) == 0
    assert main([*base, "--out", str(tmp_path / "b"), "--steps", "6"]) == 0
    assert main([*base, "--out", str(tmp_path / "b"), "--steps", "12", "--resume"]) == 0
    a = ckpt.load(str(tmp_path / "a" / "checkpoint.safetensors"))[0]
    b = ckpt.load(str(tmp_path / "b" / "checkpoint.safetensors"))[0]
    assert all(torch.allclose(a[k].double(), b[k].double(), rtol=1e-6, atol=1e-7) for k in a if k.startswith("ema."))


@pytest.mark.parametrize("settings,message", [
    (dict(objective="reflow"), "needs --teacher"),
    (dict(objective="progressive"), "needs --teacher"),
    (dict(objective="meanflow", jump_fraction=0.0), "jump_fraction"),
    (dict(objective="shortcut", teacher_sampler="ddim-eta1"), "deterministic"),
])
def test_bad_few_step_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(data="moons", **settings).resolved()


def test_a_teacher_of_another_task_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        Trainer(TrainConfig(data="digits", objective="shortcut", teacher="moons", out=str(tmp_path / "x")), progress=False)
    with pytest.raises(ValueError, match="schedule"):
        Trainer(TrainConfig(data="moons", objective="shortcut", teacher="moons", recipe="edm", out=str(tmp_path / "y")),
                progress=False)


def test_sample_uses_a_few_step_models_own_sampling(tmp_path, capsys):
    out = tmp_path / "sc"
    assert main(["train", "--objective", "shortcut", "--out", str(out), "--steps", "3", *MOONS]) == 0
    assert main(["sample", "--checkpoint", str(out), "--out", str(tmp_path / "s.npz")]) == 0
    assert "with flow-map, 2 steps, NFE 2" in capsys.readouterr().out
    assert main(["sample", "--checkpoint", str(out), "--sampler", "heun", "--nfe", "5", "--out", str(tmp_path / "h.npz")]) == 0
    assert main(["sample", "--checkpoint", "moons", "--sampler", "consistency", "--out", str(tmp_path / "x.npz")]) == 1
    assert "plain denoiser" in capsys.readouterr().err


# ---- reflow straightens ---------------------------------------------------------------------------------
def test_straightness_of_the_exact_flow_of_a_gaussian_is_its_closed_form():
    """Data N(m, s^2) under rectified flow: the paths are X_t = (1 - t) m + r(t) z with
    r = sqrt((1 - t)^2 s^2 + t^2), so S = int r'^2 dt - (1 - s)^2 (quadrature), whatever m."""
    from sdeflow.analytic import OracleDenoiser
    from sdeflow.training.reflow import straightness

    sched = SCHEDULES["rectified-flow"]()
    for m, s in [(0.0, 1.0), (2.0, 0.5), (-1.0, 0.1)]:
        u = torch.linspace(0, 1, 200001, dtype=torch.float64)
        dr = (u - (1 - u) * s ** 2) / torch.sqrt((1 - u) ** 2 * s ** 2 + u ** 2)
        exact = float(torch.trapezoid(dr ** 2, u)) - (1 - s) ** 2
        got = straightness(OracleDenoiser(gaussian(torch.tensor([m]), torch.tensor([[s ** 2]])), sched), 4000,
                           shape=(1,), steps=400)
        assert got == pytest.approx(exact, rel=0.06, abs=2e-4), (m, s, got, exact)  # 4000 draws: 2-3% sampling error


FLOW = ["--batch-size", "256", "--lr", "2e-3", "--warmup", "20", "--model", "width=64", "--model", "depth=3",
        "--no-progress", "--sample-every", "100000"]


@pytest.mark.slow  # 13 s; reflow stays in the default run through the moons students' test
def test_reflow_of_a_gaussian_flow_is_straight_and_exact_in_one_euler_step(tmp_path):
    """Noise and data of a Gaussian's rectified flow are coupled by a linear map, so the second
    rectified flow is straight: its straightness falls by a large factor from round 1, and one Euler
    step of it lands where the exact flow map (closed form) of round 1 does."""
    import numpy as np

    from sdeflow.pretrained import load_model
    from sdeflow.training.reflow import straightness

    data = gaussian(torch.tensor([1.0, -0.5]), torch.tensor([[0.3, 0.2], [0.2, 0.4]]))
    np.save(tmp_path / "g.npy", data.sample(20000, torch.Generator().manual_seed(0)).float().numpy())
    first, second = str(tmp_path / "rf1"), str(tmp_path / "rf2")
    assert main(["train", "--data", str(tmp_path / "g.npy"), "--out", first, "--steps", "1500", *FLOW]) == 0
    assert main(["train", "--data", str(tmp_path / "g.npy"), "--out", second, "--teacher", first, "--objective", "reflow",
                 "--pairs", "8000", "--steps", "1500", *FLOW]) == 0
    rf1, rf2 = load_model(first).denoiser, load_model(second).denoiser
    s1, s2 = (straightness(d, 2000, shape=(2,), steps=50) for d in (rf1, rf2))
    assert s2 < s1 / 5, (s1, s2)
    z = torch.randn(2000, 2, generator=torch.Generator().manual_seed(5))
    exact = data.flow_map(z.double(), rf1.schedule, 1.0, 0.0)

    def one_step_error(den):
        return float(((sample(den, Euler(), uniform_grid(1), z).x.double() - exact) ** 2).sum(1).mean().sqrt())

    spread = float(torch.trace(data.covariance()).sqrt())  # the RMS distance of the data to its mean
    # measured: S 0.21 -> 9e-5; one step 0.87 -> 0.09, what is left being round 1's fit of the exact flow
    assert one_step_error(rf2) < 0.15 * spread and one_step_error(rf2) < 0.2 * one_step_error(rf1)


@pytest.mark.slow
def test_reflow_rounds_straighten_a_mixture_monotonically(tmp_path):
    """Round 1 is the shipped eight-gaussians model; each reflow round, started from the previous
    round's weights and trained on its pairs, has straighter paths."""
    from sdeflow.pretrained import load_model
    from sdeflow.training.reflow import straightness

    teacher = "eight-gaussians"
    for k in (2, 3):
        out = str(tmp_path / f"round{k}")
        assert main(["train", "--data", "eight-gaussians", "--teacher", teacher, "--objective", "reflow", "--out", out,
                     "--pairs", "8000", "--steps", "600", "--batch-size", "256", "--lr", "1e-3", "--warmup", "20",
                     "--no-progress", "--sample-every", "100000"]) == 0
        teacher = out
    s = [straightness(load_model(name).denoiser, 2000, shape=(2,), steps=50)
         for name in ("eight-gaussians", str(tmp_path / "round2"), str(tmp_path / "round3"))]
    # measured: 0.71, 0.0016, 0.00045
    assert s[0] > s[1] > s[2], s


def test_consistency_training_refines_its_grid_to_1280_intervals_and_distillation_to_160():
    teacher = GAUSS.denoiser(SCHEDULES["rectified-flow"]())
    ct, cd = ConsistencyLoss(total_steps=800), ConsistencyLoss(teacher, total_steps=800)
    assert [ct.intervals(k) for k in (0, 100, 799)] == [10, 20, 1280]
    assert [cd.intervals(k) for k in (0, 100, 799)] == [10, 10, 160]
    with pytest.raises(ValueError, match="s0 <= s1"):
        ConsistencyLoss(teacher, s0=40, s1=20)


# ---- the few-step benchmarks run on the current interfaces ---------------------------------------------
@pytest.mark.slow  # 150 s on a shared 2-core CPU: one reflow student of moons, then 1000 digits at NFE 1
def test_the_few_step_benchmarks_run_and_their_students_beat_the_teacher_at_one_step(tmp_path, monkeypatch):
    """``benchmarks/fewstep.py`` (one reflow student of moons) and ``benchmarks/digits_fewstep.py`` (the
    shipped digits-reflow student) run end to end and write reports in which the student's one step is
    closer to the data than the teacher's one Euler step."""
    import json
    import pathlib
    import subprocess
    import sys

    from test_solver_options import benchmark_module

    out = tmp_path / "fewstep"
    script = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "fewstep.py"
    subprocess.run([sys.executable, str(script), "--toys", "moons", "--objectives", "reflow",
                    "--steps", "300", "--out", str(out)], check=True, capture_output=True, text=True)
    moons = json.loads(out.with_suffix(".json").read_text())["moons"]
    assert moons["reflow"]["sliced_w2"]["1"] < 0.6 * moons["teacher-euler"]["1"], moons
    assert "| moons | reflow |" in out.with_suffix(".md").read_text()

    script = benchmark_module("digits_fewstep")
    (tmp_path / "benchmarks").mkdir()
    monkeypatch.setattr(script, "DOCS", str(tmp_path))
    script.main(["--students", "reflow=digits-reflow", "--nfe", "1", "--teacher-nfe", "--name", "check"])
    rows = {r["model"]: r for r in json.loads((tmp_path / "benchmarks" / "check.json").read_text())["rows"]}
    assert rows["reflow"]["nfe"] == 1 and rows["reflow"]["accuracy"] > 0.9, rows
    assert rows["reflow"]["fd"] < 0.5 * rows["teacher, Euler"]["fd"], rows
