"""Posterior samplers against the exact Gaussian / Gaussian-mixture posterior."""

import math

import pytest
import torch

from sdeflow import GeneratorNoise, analytic, samplers, sample, schedules
from sdeflow.grids import logsnr_grid, uniform_grid
from sdeflow.inverse import Mask, Matrix, Nonlinear
from sdeflow.inverse.guidance import DPS, MMPS, PiGDM
from sdeflow.inverse.projection import DDNM, DiffPIR, ddrm
from sdeflow.inverse.daps import daps
from sdeflow.inverse.enkg import enkg
from sdeflow.inverse.repaint import repaint
from sdeflow.inverse.variational import red_diff
from sdeflow.inverse.smc import twisted_smc
from sdeflow.inverse import METHODS, solve
from sdeflow.schedules import VPLinear

D, M = 6, 3


def astuple(solution):
    return solution.x, solution.nfe


def gaussian_problem(noise_std=0.1, seed=0):
    prior, A, y, post = analytic.linear_gaussian_problem(D, M, noise_std, seed)
    return prior, Matrix(A), y, post


def masked_problem():
    """The Gaussian prior observed on three of its six coordinates, without noise."""
    prior = gaussian_problem()[0]
    mask = torch.tensor([True, False, True, False, False, True])
    op = Mask(mask)
    return prior, mask, op, op(prior.sample(1, torch.Generator().manual_seed(3)))[0]


def run(method, prior, n=3000, steps=30, seed=1):
    sched = schedules.VPLinear()
    ts = logsnr_grid(steps, sched)
    x_init, _ = prior.sample_t(n, sched, float(ts[0]), torch.Generator().manual_seed(seed))
    return sample(method(prior.denoiser(sched)), samplers.DPMSolverPP(order=2), ts, x_init).x


def test_moment_matching_is_exact_for_a_gaussian_prior():
    prior, op, y, post = gaussian_problem()
    n = 3000
    x = run(lambda d: MMPS(d, op, y, 0.1), prior, n=n)
    cov = post.covariance()
    se_mean = torch.sqrt(torch.diagonal(cov) / n)
    assert ((x.mean(0) - post.mean()).abs() < 5 * se_mean).all()
    # covariance entries: standard error sqrt((C_ii C_jj + C_ij^2) / n)
    se_cov = torch.sqrt((torch.outer(torch.diagonal(cov), torch.diagonal(cov)) + cov ** 2) / n)
    assert ((torch.cov(x.T) - cov).abs() < 5 * se_cov).all()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_is_closer_to_the_posterior_than_the_prior(name):
    """Every method of the table, run by name at 60 evaluations on the 6-D Gaussian problem (a method that
    refuses its matrix operator, RePaint, inpaints three of the coordinates instead): the sample mean is
    closer to the exact posterior mean than the prior mean is (measured: at most 0.68 of the prior's distance,
    DPS; the others 0.03-0.57)."""
    prior, op, y, post = gaussian_problem()
    noise = GeneratorNoise(torch.Generator().manual_seed(0))
    den = prior.denoiser(schedules.VPLinear())
    try:
        sol = solve(name, den, op, y, 0.1, 60, 1000, noise=noise, dtype=torch.float64)
    except ValueError as err:
        assert "Mask" in str(err)
        mask = torch.tensor([True, False, True, False, False, True])
        op = Mask(mask)
        y = op.measure(prior.sample(1, torch.Generator().manual_seed(3)), 0.1, torch.Generator().manual_seed(4))[0]
        post = prior.posterior(op.matrix(), y, 0.1)
        sol = solve(name, den, op, y, 0.1, 60, 1000, noise=noise, dtype=torch.float64)
    assert sol.nfe <= 60
    assert (sol.x.mean(0) - post.mean()).norm() < (prior.mean() - post.mean()).norm()


@pytest.mark.parametrize("name", ["mmps", "pigdm", "dps", "ddnm", "diffpir"])
def test_no_nan_at_zero_measurement_noise(name):
    prior, op, y, _ = gaussian_problem(noise_std=0.0)
    make = {"mmps": MMPS, "pigdm": PiGDM, "dps": DPS, "ddnm": DDNM, "diffpir": DiffPIR}[name]
    x = run(lambda d: make(d, op, y, 0.0), prior, n=200)
    assert torch.isfinite(x).all()
    if name in ("mmps", "ddnm"):  # consistent with a noiseless measurement
        assert (op(x) - y).abs().max() < 0.05


def test_inpainting_mask_keeps_the_measured_entries():
    prior, mask, op, y = masked_problem()
    x = run(lambda d: DDNM(d, op, y, 0.0), prior, n=100)
    assert torch.allclose(x[:, mask], y.expand(100, -1).to(x.dtype), atol=1e-3)


def test_twisted_smc_error_shrinks_with_particles():
    """On a bimodal 2-D posterior, the particle method's error in the posterior mean (averaged over
    independent runs) decreases as the number of particles grows."""
    prior = analytic.ring_2d()
    A = torch.tensor([[1.0, 0.3]], dtype=torch.float64)
    op, y, sy = Matrix(A), torch.tensor([1.5], dtype=torch.float64), 0.3
    post = prior.posterior(A, y, sy)
    sched = schedules.VPLinear()
    ts = uniform_grid(60)
    errs = {}
    for k in (8, 512):
        e = []
        for rep in range(6):
            r = twisted_smc(prior.denoiser(sched), op, y, sy, ts, k, data_var=4.0, noise=GeneratorNoise(torch.Generator().manual_seed(rep)))
            e.append(float((r.x.mean(0) - post.mean()).pow(2).sum()))
        errs[k] = sum(e) / len(e)
    assert errs[512] < 0.3 * errs[8]


def test_repaint_keeps_the_known_entries_and_improves_with_resampling():
    prior, mask, op, y = masked_problem()
    post = prior.posterior(op.matrix(), y, 0.0)
    sched = schedules.VPLinear()
    ts = uniform_grid(50)
    errs = []
    for resample in (1, 5):
        x, nfe = astuple(repaint(prior.denoiser(sched), op, y, ts, 2000, resample=resample,
                                 noise=GeneratorNoise(torch.Generator().manual_seed(0)),
                         dtype=torch.float64))
        assert nfe == 50 * resample and torch.allclose(x[:, mask], y.expand(2000, -1), atol=1e-9)
        errs.append(float((x.mean(0) - post.mean()).norm()))
    prior_err = float((prior.mean() - post.mean()).norm())
    assert errs[1] < errs[0] < prior_err


@pytest.mark.parametrize("noise_std", [0.1, 0.0])
@pytest.mark.parametrize("method", ["daps", "red-diff"])
def test_loop_methods_approach_the_posterior_without_nan(method, noise_std):
    prior, op, y, post = gaussian_problem(noise_std=noise_std)
    den = prior.denoiser(schedules.VPLinear())
    g = torch.Generator().manual_seed(0)
    if method == "daps":
        x, nfe = astuple(daps(den, op, y, noise_std, uniform_grid(30), 500, noise=GeneratorNoise(g), dtype=torch.float64))
    else:
        x, nfe = astuple(red_diff(den, op, y, noise_std, uniform_grid(60), 50, noise=GeneratorNoise(g), dtype=torch.float64))
    assert torch.isfinite(x).all() and nfe > 0
    assert (x.mean(0) - post.mean()).norm() < (prior.mean() - post.mean()).norm()


def test_ensemble_kalman_needs_no_gradient_of_the_operator():
    prior, op, y, post = gaussian_problem()

    def forward(x):  # refuses autograd: a black box
        if x.requires_grad:
            raise RuntimeError("no gradients through this operator")
        return torch.from_numpy((x.reshape(x.shape[0], -1).numpy() @ op.A.numpy().T))

    black_box = Nonlinear(forward, (D,))
    for noise_std in (0.1, 0.0):
        x, nfe = astuple(enkg(prior.denoiser(schedules.VPLinear()), black_box, y, noise_std, uniform_grid(40), 500,
                      noise=GeneratorNoise(torch.Generator().manual_seed(0)), dtype=torch.float64))
        assert torch.isfinite(x).all() and nfe == 40
        if noise_std > 0:
            assert (x.mean(0) - post.mean()).norm() < 0.5 * (prior.mean() - post.mean()).norm()
    with pytest.raises(RuntimeError, match="no gradients"):
        DPS(prior.denoiser(schedules.VPLinear()), black_box, y, 0.1)(torch.zeros(2, D, dtype=torch.float64), 0.5)


@pytest.mark.parametrize("method", ["mmps", "pigdm", "dps", "ddnm", "diffpir", "ddrm", "repaint", "daps", "red-diff", "enkg", "smc"])
def test_solve_runs_every_method_on_image_operators_within_its_budget(method):
    from sdeflow.registry import OPERATORS, make_operator
    from sdeflow.inverse import solve

    prior = analytic.random_mixture(16, 3, seed=4)
    den = prior.denoiser(schedules.VPLinear())
    shape = (1, 4, 4)
    for name in OPERATORS:
        op = make_operator(name, shape)
        if method == "repaint" and not isinstance(op, Mask):
            continue
        x_true = prior.sample(1, torch.Generator().manual_seed(0)).reshape(1, *shape)
        y = op.measure(x_true, 0.1, torch.Generator().manual_seed(1))[0]
        sol = solve(method, den, op, y, 0.1, 12, 20, dtype=torch.float64)
        assert sol.x.shape == (20, *shape) and torch.isfinite(sol.x).all() and 0 < sol.nfe <= 12, (method, name)


def test_restore_command(tmp_path):
    from sdeflow.cli.main import main

    out, npz = tmp_path / "r.png", tmp_path / "r.npz"
    assert main(["restore", "--operator", "superres", "--method", "pigdm", "--nfe", "8", "--num", "3",
                 "--out", str(out), str(npz)]) == 0
    import numpy as np
    from PIL import Image

    saved = np.load(npz)
    assert saved["samples"].shape == (3, 1, 8, 8) and saved["measurement"].shape == (1, 4, 4)
    assert Image.open(out).size[0] > 5 * 32  # input, measurement, 3 samples, mean
    img = tmp_path / "in.png"  # any picture is converted to the model's channels, centre-cropped and resized
    Image.fromarray(np.full((40, 30, 4), 255, dtype=np.uint8), "RGBA").save(img)
    assert main(["restore", "--input", str(img), "--method", "ddnm", "--nfe", "4", "-n", "2", "--out", str(npz)]) == 0
    assert np.allclose(np.load(npz)["input"], 1.0)  # white is the top of [-1, 1]
    assert main(["restore", "--operator", "blur", "--method", "repaint", "--out", ""]) == 1
    assert main(["restore", "--checkpoint", "moons", "--out", ""]) == 1


@pytest.mark.parametrize("method,noise_std", [("ddnm", 0.0), ("pigdm", 0.1), ("ddrm", 0.0)])
def test_range_null_pseudo_inverse_and_svd_methods_are_exact_for_an_isotropic_gaussian(method, noise_std):
    """For a prior N(mu, v I) the range and null space of A (the directions of V^T x) are independent
    a priori and a posteriori, so DDNM's projection (noiseless y) and PiGDM (with data_var = v) give
    the exact posterior denoiser, and DDRM, which copies the measured directions (noised to the
    state's level) and moves the others by the prior's ancestral kernel, samples the exact posterior
    (to the sampler's O(1/steps) error)."""
    v, n = 0.7, 4000
    g = torch.Generator().manual_seed(5)
    prior = analytic.GaussianMixture(torch.ones(1, dtype=torch.float64), torch.randn(1, D, generator=g, dtype=torch.float64),
                                     torch.full((1, D), v, dtype=torch.float64))
    A = torch.randn(M, D, generator=g, dtype=torch.float64) / math.sqrt(D)
    op = Matrix(A)
    y = op.measure(prior.sample(1, g), noise_std, g)[0]
    post = prior.posterior(A, y, noise_std)
    if method == "ddrm":
        sched = schedules.VPLinear()
        x, _ = astuple(ddrm(prior.denoiser(sched), op, y, noise_std, logsnr_grid(300, sched), n,
                    noise=GeneratorNoise(torch.Generator().manual_seed(2)), dtype=torch.float64))
    else:
        make = (lambda d: DDNM(d, op, y, 0.0)) if method == "ddnm" else (lambda d: PiGDM(d, op, y, noise_std, data_var=v))
        x = run(make, prior, n=n, steps=40)
    cov = post.covariance()
    se_mean = torch.sqrt(torch.diagonal(cov).clamp_min(1e-12) / n)
    assert ((x.mean(0) - post.mean()).abs() < 5 * se_mean + 2e-3).all()
    se_cov = torch.sqrt((torch.outer(torch.diagonal(cov), torch.diagonal(cov)) + cov ** 2) / n)
    assert ((torch.cov(x.T) - cov).abs() < 5 * se_cov + (1e-2 if method == "ddrm" else 2e-3)).all()


@pytest.mark.parametrize("t", [0.05, 0.3, 0.8])
def test_ddnm_projects_each_singular_direction_by_the_noise_rule(t):
    """DDNM+ in the SVD of ``A``: direction ``i`` moves by ``lam_i / s_i`` of the residual's
    coordinate, ``lam_i = min(1, s_i (sigma_t / alpha_t) / noise_std)``; computed here from an
    explicit SVD, in the sampler through the operator's eigendecomposition of ``A A^T``."""
    g = torch.Generator().manual_seed(8)
    A = torch.randn(M, D, generator=g, dtype=torch.float64) * torch.tensor([[3.0], [0.3], [0.02]], dtype=torch.float64)
    op, noise = Matrix(A), 0.1
    y = torch.randn(M, generator=g, dtype=torch.float64)
    sched = schedules.VPLinear()
    prior = analytic.random_mixture(D, 2, seed=0)
    den = prior.denoiser(sched)
    x_t = torch.randn(4, D, generator=g, dtype=torch.float64)
    d = den(x_t, t)
    out = DDNM(den, op, y, noise)(x_t, t)
    u, s, vh = torch.linalg.svd(A, full_matrices=False)
    level = float(sched.sigma(t) / sched.alpha(t))
    lam = torch.clamp(s * level / noise, max=1.0)
    want = d + ((y - d @ A.T) @ u * lam / s) @ vh
    assert torch.allclose(out, want, atol=1e-10)
    assert bool((lam < 1).any()) == (t < 0.5)  # partial projection of the weak directions at low noise


def test_ddrm_does_not_amplify_noise_through_an_ill_conditioned_blur():
    """Gaussian blur has singular values down to ~1e-3 on 6 x 6 images, so the pseudo-inverse of a
    noisy measurement carries noise ~40 times the signal in those directions. DDRM uses each
    direction only at its own noise level: it lands closer to the exact posterior mean than the prior
    mean, and does not drift as the number of steps grows."""
    from sdeflow.inverse import Blur

    shape = (1, 6, 6)
    prior = analytic.random_mixture(36, 1, seed=2)
    op = Blur.gaussian(shape, std=1.0)
    g = torch.Generator().manual_seed(0)
    y = op.measure(prior.sample(1, g).reshape(1, *shape), 0.05, g)[0]
    post = prior.posterior(op.matrix(), y.reshape(-1), 0.05)
    den = prior.denoiser(schedules.VPLinear())
    errors = []
    for steps in (20, 80):
        x, nfe = astuple(ddrm(den, op, y, 0.05, uniform_grid(steps), 500, noise=GeneratorNoise(torch.Generator().manual_seed(1)),
                      dtype=torch.float64))
        assert nfe == steps and torch.isfinite(x).all()
        errors.append(float((x.reshape(500, -1).mean(0) - post.mean()).norm()))
    assert errors[0] < 0.5 * float((prior.mean() - post.mean()).norm())
    assert errors[1] < errors[0]


def test_ensemble_kalman_step_never_overshoots_the_measurement():
    """An exact Kalman correction (gain in measurement space with eigenvalues in [0, 1)) is left
    alone; a ten times too large one is scaled back so the residual does not grow."""
    from sdeflow.inverse.enkg import _no_overshoot

    g = torch.Generator().manual_seed(3)
    A = torch.randn(M, D, generator=g, dtype=torch.float64)
    op = Matrix(A)
    x = torch.randn(5, D, generator=g, dtype=torch.float64)
    y = torch.randn(M, generator=g, dtype=torch.float64)
    pred = op(x)
    r = y - pred
    cov = torch.eye(D, dtype=torch.float64) * 0.5
    gain = cov @ A.T @ torch.linalg.inv(A @ cov @ A.T + 0.01 * torch.eye(M, dtype=torch.float64))
    exact = r @ gain.T
    assert torch.allclose(_no_overshoot(op, x, exact, r, pred), exact)
    scaled = _no_overshoot(op, x, 10 * exact, r, pred)
    assert ((y - op(x + scaled)).norm(dim=1) <= r.norm(dim=1) + 1e-12).all()
    assert ((y - op(x + 10 * exact)).norm(dim=1) > r.norm(dim=1)).all()  # the unscaled step would overshoot


def test_ensemble_kalman_with_a_small_ensemble_on_the_shipped_digits_model_stays_finite():
    """Eight particles on 64-pixel digits: the ensemble's cross-covariance is a poor estimate and,
    multiplied by sigma^2 / alpha near pure noise, used to blow up."""
    from sdeflow.registry import make_operator
    from sdeflow.inverse import Bound, solve
    from sdeflow.pretrained import load_model
    from sdeflow import data

    model = load_model("digits")
    den = Bound(model.denoiser, label=torch.tensor([model.num_classes]))
    x = data.digits().x[:1]
    for name in ("inpaint", "blur"):
        op = make_operator(name, model.shape)
        y = op.measure(x, 0.05, torch.Generator().manual_seed(0))[0]
        sol = solve("enkg", den, op, y, 0.05, 20, 8)
        assert torch.isfinite(sol.x).all() and sol.x.abs().max() < 10, name


def low_noise_inpainting(noise_std=0.02):
    """A 64-D mixture of 8 as 8 x 8 images, the centre 4 x 4 hidden, low measurement noise."""
    prior = analytic.random_mixture(64, 8, seed=1)
    mask = torch.ones(8, 8, dtype=torch.bool)
    mask[2:6, 2:6] = False
    op = Mask(mask.flatten())
    g = torch.Generator().manual_seed(0)
    y = op.measure(prior.sample(1, g), noise_std, g)[0]
    return prior, op, y, prior.posterior(op.matrix(), y, noise_std)


def coverage(x, exact, keep=None):
    """Share of exact posterior samples inside the per-coordinate central 90% interval of ``x``
    (0.9 for exact samples; near 0 for collapsed ones)."""
    lo, hi = torch.quantile(x, 0.05, 0), torch.quantile(x, 0.95, 0)
    inside = (exact >= lo) & (exact <= hi)
    return float((inside if keep is None else inside[:, keep]).double().mean())


def test_twisted_smc_on_low_noise_inpainting_is_not_degenerate_and_covers_the_posterior():
    """At noise 0.02 with 100 steps the particles once collapsed to copies of one or two; now every
    returned sample is distinct and their 90% intervals cover the exact posterior (exact: about 0.9)."""
    prior, op, y, post = low_noise_inpainting()
    exact = post.sample(2000, torch.Generator().manual_seed(1))
    r = twisted_smc(prior.denoiser(schedules.VPLinear()), op, y, 0.02, uniform_grid(100), 400,
                    data_var=float(prior.covariance().diagonal().mean()), noise=GeneratorNoise(torch.Generator().manual_seed(2)))
    assert torch.unique(r.x, dim=0).shape[0] > 300
    assert len(r.info["ess"]) == 100 and r.info["log_weights"].shape == (400,)
    assert coverage(r.x, exact) > 0.7


def test_twisted_smc_warns_when_its_final_effective_sample_size_is_small():
    prior, op, y, post = gaussian_problem(noise_std=0.01)
    with pytest.warns(RuntimeWarning, match="effective sample size"):
        # never resampling, the weights of 20 steps accumulate: far fewer than 90% effective particles remain
        r = twisted_smc(prior.denoiser(schedules.VPLinear()), op, y, 0.01, uniform_grid(20), 50, ess_threshold=0.0,
                        min_ess=0.9, noise=GeneratorNoise(torch.Generator().manual_seed(0)))
    assert r.info["ess"][-1] < 45


def test_solve_takes_a_grid_and_its_default_grid_reaches_below_the_measurement_noise():
    """The default grid's last nonzero noise level lies below the measurement noise; with it, the
    measured pixels of a low-noise inpainting problem get their posterior spread (at NFE 50, DDIM's
    uniform grid ended at sigma 0.077 and gave them a quarter of it: coverage 0.56)."""
    from sdeflow.inverse import solve
    from sdeflow.inverse.methods import default_grid

    prior, op, y, post = low_noise_inpainting()
    sched = schedules.VPLinear()
    ts = default_grid(50, sched, 0.02)
    assert float(ts[-1]) == 0 and float(sched.noise_to_signal(ts[-2])) < 0.02
    exact = post.sample(2000, torch.Generator().manual_seed(1))
    measured = op.mask.flatten() if hasattr(op, "mask") else torch.ones(64, dtype=torch.bool)
    sol = solve("pigdm", prior.denoiser(sched), op, y, 0.02, 50, 1000, dtype=torch.float64, data_var=1.0)
    assert sol.nfe == 50 and coverage(sol.x, exact, measured) > 0.75
    own = solve("pigdm", prior.denoiser(sched), op, y, 0.02, None, 10, ts=uniform_grid(7), dtype=torch.float64)
    assert own.nfe == 7
    with pytest.raises(ValueError, match="end at t = 0"):
        solve("ddrm", prior.denoiser(sched), op, y, 0.02, None, 10, ts=uniform_grid(7, t_min=0.1))


@pytest.mark.parametrize("method", ["ddrm", "ddnm"])
def test_ddrm_and_ddnm_are_biased_when_the_prior_correlates_measured_and_unmeasured_directions(method):
    """A known property of the published methods, measured: with a 2-D Gaussian prior of correlation
    0.9 and x1 = 1.5 observed, the exact E[x2 | y] is 1.35; DDRM and DDNM treat the unmeasured
    direction as a priori independent of the measured one and land near 0.92, whatever the step count
    (documented in docs/inverse.md and `sdeflow list`). With an isotropic prior they are exact
    (test_range_null_pseudo_inverse_and_svd_methods_are_exact_for_an_isotropic_gaussian)."""
    cov = torch.tensor([[1.0, 0.9], [0.9, 1.0]], dtype=torch.float64)
    prior = analytic.GaussianMixture(torch.ones(1, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64), cov[None])
    op, y = Mask(torch.tensor([True, False])), torch.tensor([1.5], dtype=torch.float64)
    exact = float(prior.posterior(op.matrix(), y, 0.0).mean()[1])
    assert exact == pytest.approx(1.35)
    sched = schedules.VPLinear()
    means = []
    for steps in (100, 400):
        if method == "ddrm":
            x = ddrm(prior.denoiser(sched), op, y, 0.0, logsnr_grid(steps, sched), 4000,
                     noise=GeneratorNoise(torch.Generator().manual_seed(0)), dtype=torch.float64).x
        else:
            x = run(lambda d: DDNM(d, op, y, 0.0), prior, n=4000, steps=steps)
        means.append(float(x[:, 1].mean()))
    assert all(abs(m - exact) > 0.25 for m in means)          # biased ...
    assert abs(means[1] - means[0]) < 0.1                      # ... and more steps do not remove it


@pytest.mark.parametrize("method", ["ddrm", "repaint", "daps", "red-diff", "enkg", "smc", "pigdm"])
def test_inverse_loops_take_a_noise_source_with_per_sample_seeds(method):
    """With SeededNoise, a sample's randomness depends only on its seed: the same seeds give the
    same samples; samples are independent of how many others are drawn beside them (RePaint, DDRM,
    DAPS, RED-diff and PiGDM, whose samples do not interact)."""
    from sdeflow import SeededNoise
    from sdeflow.inverse import solve

    prior, mask, op, y = masked_problem()
    den = prior.denoiser(schedules.VPLinear())
    a = solve(method, den, op, y, 0.1, 10, 4, noise=SeededNoise([1, 2, 3, 4]), dtype=torch.float64).x
    b = solve(method, den, op, y, 0.1, 10, 4, noise=SeededNoise([1, 2, 3, 4]), dtype=torch.float64).x
    assert torch.equal(a, b)
    if method in ("ddrm", "repaint", "daps", "red-diff", "pigdm"):
        c = solve(method, den, op, y, 0.1, 10, 2, noise=SeededNoise([3, 4]), dtype=torch.float64).x
        assert torch.allclose(a[2:], c, atol=1e-10)


def test_ddrm_stays_finite_in_float32_down_to_low_noise_levels_on_the_digits_model():
    """DDRM's step towards the measurement took the root of ``l^2 - fresh^2``, which round-off made
    negative in float32 once the grid reached low noise levels (NaN on deblurring a digit with the
    default grid); it is now written without the cancellation. solve() refuses non-finite results."""
    from sdeflow.data import digits
    from sdeflow.inverse import Bound, solve
    from sdeflow.pretrained import load_model
    from sdeflow.registry import make_operator

    model = load_model("digits")
    den = Bound(model.denoiser, label=torch.tensor([model.num_classes]))
    op = make_operator("blur", model.shape)
    y = op.measure(digits().x[:1], 0.05, torch.Generator().manual_seed(0))[0]
    sol = solve("ddrm", den, op, y, 0.05, 50, 4)
    assert torch.isfinite(sol.x).all()


MEASUREMENT_SHAPES = {"one": lambda y: y[0], "one-with-batch": lambda y: y}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", sorted(MEASUREMENT_SHAPES))
def test_every_method_takes_the_same_measurement_shapes(method, shape):
    """One measurement of the operator's output shape, with or without a leading 1, for every method
    (twisted SMC with 200 particles and a (1, m) measurement once broke its resampling indices); both
    give the same samples."""
    mix = analytic.random_mixture(16, 3, seed=0)
    op = Mask(torch.arange(16) % 2 == 0)
    y = op(mix.sample(1)) + 0.02 * torch.randn(1, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    den = mix.denoiser(VPLinear())
    out = solve(method, den, op, MEASUREMENT_SHAPES[shape](y), 0.02, nfe=20, num=200 if method == "smc" else 24, seed=3)
    assert out.x.shape == ((200 if method == "smc" else 24), 16) and bool(torch.isfinite(out.x).all())
    other = solve(method, den, op, MEASUREMENT_SHAPES["one"](y), 0.02, nfe=20, num=out.x.shape[0], seed=3)
    assert torch.equal(out.x, other.x)


def test_samplers_holding_a_measurement_never_share_a_cached_plan():
    """Plans are cached by sampler; DDRM, DAPS and twisted SMC compare equal only to themselves, so a run
    with other settings on the same grid plans again (with field-wise equality, the second DAPS below
    silently reused the first one's Langevin steps)."""
    from sdeflow.inverse.daps import DAPS
    from sdeflow.inverse.projection import DDRM
    from sdeflow.inverse.smc import TwistedSMC
    from sdeflow.sampling import planned

    prior, op, y, _ = gaussian_problem()
    sched, ts = schedules.VPLinear(), uniform_grid(6)
    for make in (lambda v: DDRM(op, y, 0.1, eta=v), lambda v: DAPS(op, y, v), lambda v: TwistedSMC(op, y, v)):
        a, b = make(0.5), make(0.9)
        assert a != b and a == a
        assert planned(a, sched, ts).coef != planned(b, sched, ts).coef
