"""The bridges reproduce the peers they bridge to: sdeflow's samplers on a diffusers model with its
scheduler's own grid equal diffusers' scheduler loop to float32 round-off; k-diffusion's samplers on
the same sigmas likewise; flow_matching velocity fields agree with an adaptive reference solve.
Each group skips when its optional peer is not installed (CI installs them: ``.ci/run``)."""

from __future__ import annotations

import warnings

import pytest
import torch

import sdeflow
from sdeflow import samplers
from sdeflow.registry import GRIDS, SAMPLERS

# ------------------------------------------------------------------------------------------ diffusers


def _unet():
    d = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return d.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
                         down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                         norm_num_groups=8).eval()


@pytest.fixture(scope="module")
def unet():
    return _unet()


def diffusers_loop(unet, scheduler, n, z):
    """diffusers' own denoising loop (what its pipelines run); returns (initial latents, result)."""
    scheduler.set_timesteps(n)
    x = z * getattr(scheduler, "init_noise_sigma", 1.0)
    first = x.clone()
    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        x = scheduler.step(unet(inp, t).sample, t, x).prev_sample
    return first, x


def sdeflow_run(unet, scheduler, n, first, sampler):
    from sdeflow.adapters import from_diffusers

    bridge = from_diffusers(unet, scheduler)
    ts = bridge.grid(n)
    # sigma-space schedulers (init_noise_sigma != 1) hold x_t / alpha_t: sdeflow's state is x_t
    scale = float(bridge.schedule.alpha(float(ts[0]))) if getattr(scheduler, "init_noise_sigma", 1.0) != 1.0 else 1.0
    return sdeflow.sample(bridge.denoiser, sampler, ts, first * scale)


def _schedulers(d):
    paper3 = samplers.DPMSolverPP(order=3, variant="midpoint")
    noise = dict(algorithm_type="dpmsolver", final_sigmas_type="sigma_min")
    return {  # name -> (class, config, the sdeflow sampler that reproduces it, tolerance)
        "DDIM trailing": (d.DDIMScheduler, dict(clip_sample=False, timestep_spacing="trailing"), SAMPLERS["ddim"](), 1e-5),
        "DDIM leading": (d.DDIMScheduler, dict(clip_sample=False, timestep_spacing="leading", steps_offset=1,
                                               set_alpha_to_one=False), SAMPLERS["ddim"](), 1e-5),
        "DPM++ 2M": (d.DPMSolverMultistepScheduler, dict(solver_order=2), SAMPLERS["dpm-solver++-2m"](), 1e-5),
        "DPM++ 2M heun": (d.DPMSolverMultistepScheduler, dict(solver_order=2, solver_type="heun"),
                          SAMPLERS["dpm-solver++-2m-heun"](), 1e-5),
        "DPM++ 3M": (d.DPMSolverMultistepScheduler, dict(solver_order=3), paper3, 1e-5),
        "DPM++ 2M karras": (d.DPMSolverMultistepScheduler, dict(solver_order=2, use_karras_sigmas=True),
                            SAMPLERS["dpm-solver++-2m"](), 1e-5),
        "DPM 2M (noise)": (d.DPMSolverMultistepScheduler, dict(solver_order=2, **noise),
                           samplers.DPMSolverMultistep(order=2, variant="midpoint"), 1e-5),
        "DPM 3M (noise)": (d.DPMSolverMultistepScheduler, dict(solver_order=3, **noise),
                           samplers.DPMSolverMultistep(order=3, variant="midpoint"), 1e-5),
        "UniPC bh2": (d.UniPCMultistepScheduler, dict(), SAMPLERS["unipc-bh2"](), 1e-5),
        "UniPC bh1": (d.UniPCMultistepScheduler, dict(solver_type="bh1", final_sigmas_type="sigma_min"),
                      SAMPLERS["unipc-bh1"](), 1e-5),
        "UniPC 3": (d.UniPCMultistepScheduler, dict(solver_order=3), SAMPLERS["unipc-3"](), 1e-5),
        # the configuration that leads diffusers' side of benchmarks/ddpm_low_nfe.py: it starts below the top
        "UniPC bh1 3 leading": (d.UniPCMultistepScheduler, dict(solver_order=3, solver_type="bh1", timestep_spacing="leading",
                                                                final_sigmas_type="sigma_min"),
                                samplers.UniPC(order=3, variant="bh1"), 1e-5),
        "DEIS 2": (d.DEISMultistepScheduler, dict(solver_order=2), SAMPLERS["dpm-solver-2m"](), 1e-5),
        "DEIS 3": (d.DEISMultistepScheduler, dict(solver_order=3), SAMPLERS["dpm-solver-3m"](), 1e-5),
        "Euler": (d.EulerDiscreteScheduler, dict(), SAMPLERS["ddim"](), 1e-5),
        "Euler karras": (d.EulerDiscreteScheduler, dict(use_karras_sigmas=True), SAMPLERS["ddim"](), 1e-5),
        "Euler exponential": (d.EulerDiscreteScheduler, dict(use_exponential_sigmas=True), SAMPLERS["ddim"](), 1e-5),
        "Heun": (d.HeunDiscreteScheduler, dict(), SAMPLERS["edm-heun"](), 1e-5),
        # diffusers integrates LMS's Lagrange polynomials by scipy quadrature, exact for them; its last step is
        # the order-4 step to sigma = 0, as sdeflow's (measured: 6.4e-6 at most, float32 tables)
        "LMS": (d.LMSDiscreteScheduler, dict(), SAMPLERS["lms"](), 1e-5),
    }


SCHEDULER_NAMES = ["DDIM trailing", "DDIM leading", "DPM++ 2M", "DPM++ 2M heun", "DPM++ 3M", "DPM++ 2M karras",
                   "DPM 2M (noise)", "DPM 3M (noise)", "UniPC bh2", "UniPC bh1", "UniPC 3", "UniPC bh1 3 leading",
                   "DEIS 2", "DEIS 3", "Euler",
                   "Euler karras", "Euler exponential", "Heun", "LMS"]


def _loop_cases():
    """Every scheduler on linear betas with epsilon prediction, every betas and prediction type with one
    scheduler of each kind (a multistep, a sigma-space and an integer-timestep one) in the default run;
    the rest of the cross product slow."""
    out = []
    for name in SCHEDULER_NAMES:
        for bs in ("linear", "scaled_linear", "squaredcos_cap_v2"):
            for pt in ("epsilon", "v_prediction", "sample"):
                fast = (bs, pt) == ("linear", "epsilon") or name in ("DPM++ 2M", "Euler", "DDIM trailing")
                out.append((name, bs, pt) if fast else pytest.param(name, bs, pt, marks=pytest.mark.slow))
    return out


@pytest.mark.parametrize("name,beta_schedule,prediction_type", _loop_cases())
def test_sdeflow_on_a_diffusers_model_equals_diffusers_scheduler_loop(unet, name, beta_schedule, prediction_type):
    d = pytest.importorskip("diffusers")
    cls, config, sampler, tol = _schedulers(d)[name]
    if beta_schedule == "squaredcos_cap_v2":
        if name == "DPM++ 2M karras":
            pytest.skip("diffusers raises IndexError: Karras sigmas on this schedule round to repeated timesteps")
        if name == "Heun" or (prediction_type != "epsilon" and name.split()[0] in ("Euler", "LMS", "DPM", "DEIS")):
            pytest.skip("first step from sigma/alpha = 2e4: sigma-space schedulers amplify diffusers' float32 sigma "
                        "table, and sdeflow's noise-form steps take DDIM where alpha_s/alpha_t > 1e4 (docs/conventions.md)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scheduler = cls(num_train_timesteps=1000, beta_schedule=beta_schedule, prediction_type=prediction_type, **config)
    z = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        first, ref = diffusers_loop(unet, scheduler, 8, z)
        out = sdeflow_run(unet, scheduler, 8, first, sampler)
    assert out.nfe == len(scheduler.timesteps)
    err = float((out.x - ref).abs().max() / ref.abs().max())
    assert err < tol, f"{name}: relative difference {err:.2e}"


@pytest.mark.parametrize("name", ["DDPM", "DDIM eta 1", "Euler ancestral", "DPM++ 2M SDE", "DPM++ 2M SDE heun"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_stochastic_schedulers_equal_sdeflow_given_the_same_noise(unet, name, prediction_type):
    """diffusers' stochastic schedulers draw their noise from a generator, one draw per step; sdeflow's
    samplers draw from GeneratorNoise on a generator seeded alike: the same noise, the same samples.
    (diffusers also draws on its last step, where the noise is multiplied by zero; sdeflow does not draw
    there, so the sequences agree.)"""
    d = pytest.importorskip("diffusers")
    cases = {  # name -> (class, config, step keyword arguments, sdeflow sampler)
        "DDPM": (d.DDPMScheduler, dict(clip_sample=False, timestep_spacing="trailing"), {}, SAMPLERS["ddpm"]()),
        "DDIM eta 1": (d.DDIMScheduler, dict(clip_sample=False, timestep_spacing="trailing"), dict(eta=1.0),
                       SAMPLERS["ddim-eta1"]()),
        "Euler ancestral": (d.EulerAncestralDiscreteScheduler, {}, {}, SAMPLERS["euler-ancestral"]()),
        "DPM++ 2M SDE": (d.DPMSolverMultistepScheduler, dict(algorithm_type="sde-dpmsolver++"), {},
                         SAMPLERS["sde-dpm-solver++-2m"]()),
        "DPM++ 2M SDE heun": (d.DPMSolverMultistepScheduler, dict(algorithm_type="sde-dpmsolver++", solver_type="heun"),
                              {}, SAMPLERS["sde-dpm-solver++-2m-heun"]()),
    }
    cls, config, step_kw, sampler = cases[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scheduler = cls(num_train_timesteps=1000, beta_schedule="scaled_linear", prediction_type=prediction_type, **config)
    z = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        scheduler.set_timesteps(8)
        x = z * scheduler.init_noise_sigma
        first, g = x.clone(), torch.Generator().manual_seed(7)
        for t in scheduler.timesteps:
            x = scheduler.step(unet(scheduler.scale_model_input(x, t), t).sample, t, x, generator=g, **step_kw).prev_sample
        from sdeflow.adapters import from_diffusers

        bridge = from_diffusers(unet, scheduler)
        ts = bridge.grid(8)
        scale = float(bridge.schedule.alpha(float(ts[0]))) if scheduler.init_noise_sigma != 1.0 else 1.0
        out = sdeflow.sample(bridge.denoiser, sampler, ts, first * scale,
                             noise=sdeflow.GeneratorNoise(torch.Generator().manual_seed(7)))
    err = float((out.x - x).abs().max() / x.abs().max())
    assert err < 1e-5, f"{name}: relative difference {err:.2e}"
    # and the noise matters: another generator gives other samples
    other = sdeflow.sample(bridge.denoiser, sampler, ts, first * scale,
                           noise=sdeflow.GeneratorNoise(torch.Generator().manual_seed(8)))
    assert float((other.x - x).abs().max() / x.abs().max()) > 1e-2


@pytest.mark.parametrize("config", [dict(shift=1.0), dict(shift=3.0),
                                    dict(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)])
@pytest.mark.parametrize("heun", [False, True])
def test_flow_match_schedulers_are_euler_and_heun_on_rectified_flow(unet, config, heun):
    d = pytest.importorskip("diffusers")
    cls = d.FlowMatchHeunDiscreteScheduler if heun else d.FlowMatchEulerDiscreteScheduler
    if heun and config.get("use_dynamic_shifting"):
        pytest.skip("diffusers' flow-match Heun scheduler has no dynamic shifting")
    scheduler = cls(**config)
    kw = {"mu": 0.8} if config.get("use_dynamic_shifting") else {}
    z = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    from sdeflow.adapters import from_diffusers

    with torch.no_grad():
        scheduler.set_timesteps(6, **kw)
        x = z.clone()
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x).prev_sample
        bridge = from_diffusers(unet, scheduler)
        ts = bridge.grid(6, **kw)
        out = sdeflow.sample(bridge.denoiser, SAMPLERS["heun" if heun else "euler"](), ts, z)
    assert isinstance(bridge.schedule, sdeflow.schedules.RectifiedFlow)
    err = float((out.x - x).abs().max() / x.abs().max())
    assert err < (1e-5 if heun else 2e-6), err


def test_diffusers_ddim_with_linspace_spacing_steps_to_a_time_it_does_not_evaluate_next(unet):
    """diffusers' DDIM steps from timestep k to k - N // n whatever the spacing; with "linspace" (or
    "trailing" when n does not divide N) the next evaluation is at another timestep, so no ODE grid
    reproduces it. sdeflow's run on the scheduler's timesteps differs, by an amount stated in
    docs/conventions.md."""
    d = pytest.importorskip("diffusers")
    scheduler = d.DDIMScheduler(clip_sample=False, timestep_spacing="linspace")
    z = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        first, ref = diffusers_loop(unet, scheduler, 7, z)
        out = sdeflow_run(unet, scheduler, 7, first, SAMPLERS["ddim"]())
    steps = scheduler.timesteps.tolist()
    assert any(a - 1000 // 7 != b for a, b in zip(steps, steps[1:]))
    assert float((out.x - ref).abs().max() / ref.abs().max()) > 1e-3


def test_from_diffusers_reads_the_config_a_local_folder_and_the_clip_settings(unet, tmp_path):
    d = pytest.importorskip("diffusers")
    from sdeflow.adapters import ClipSample, from_diffusers
    from sdeflow.adapters.diffusers import schedule_from_scheduler

    scheduler = d.DDIMScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction")  # clip_sample=True
    scheduler.save_pretrained(tmp_path / "scheduler")
    for source in [scheduler, dict(scheduler.config), str(tmp_path)]:
        bridge = from_diffusers(unet, source)
        assert isinstance(bridge.denoiser, ClipSample) and bridge.model.parameterization.__class__.__name__ == "V"
        assert torch.allclose(bridge.schedule.alphas_cumprod, scheduler.alphas_cumprod.double())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert float(bridge.denoiser(x, 0.9).abs().max()) <= 1.0
    with pytest.raises(ValueError, match="scheduler_config.json"):
        from_diffusers(unet, str(tmp_path / "nothing"))
    zero = d.DDIMScheduler(rescale_betas_zero_snr=True)
    zs = schedule_from_scheduler(zero)
    assert 0 < float(zs.alpha(1.0)) < float(zs.alpha(1 - 1 / 1000)) and bool(torch.isfinite(zs.logsnr(1.0)))


def test_conditioning_is_passed_through_and_output_objects_are_unwrapped():
    pytest.importorskip("diffusers")
    from diffusers import DDIMScheduler
    from sdeflow.adapters import from_diffusers

    seen = {}

    class Out:
        def __init__(self, sample):
            self.sample = sample

    def model(x, t, encoder_hidden_states=None):
        seen["c"], seen["t"] = encoder_hidden_states, t
        return Out(torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:]))  # learned variance: 2x channels

    bridge = from_diffusers(model, DDIMScheduler(clip_sample=False))
    ts = bridge.grid(4)
    x = torch.randn(3, 2, 4, 4)
    x_hat = bridge.denoiser(x, float(ts[1]), encoder_hidden_states="text")
    assert seen["c"] == "text" and x_hat.shape == x.shape
    # diffusers' DDIM default spacing is "leading": timesteps 750, 500, 250, 0 for 4 steps
    assert torch.equal(ts[:4], bridge.schedule.t_from_index(torch.tensor([750.0, 500.0, 250.0, 0.0])))
    assert torch.allclose(seen["t"], torch.full((3,), 500.0))


@pytest.mark.parametrize("sampler,grid", [("unipc-bh2", "logsnr"), ("heun", "karras"), ("dpm-solver++-3m", "trailing"),
                                          ("ddpm", "leading")])
def test_sdeflow_scheduler_in_a_diffusers_pipeline_equals_the_sdeflow_loop(unet, sampler, grid):
    d = pytest.importorskip("diffusers")
    from sdeflow.adapters import SdeflowScheduler, from_diffusers

    # explicit settings travel with from_config (diffusers drops the ones left at a class's default)
    original = d.DDPMScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction", clip_sample=True)
    scheduler = SdeflowScheduler.from_config(original.config, sampler=sampler, grid=grid, seed=5)
    pipe = d.DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        images = pipe(batch_size=2, num_inference_steps=6, generator=torch.Generator().manual_seed(3), output_type="np").images
        # the same run in sdeflow's loop: the pipeline's initial latents, then noise from the same generator
        g = torch.Generator().manual_seed(3)
        z = torch.randn(2, 3, 8, 8, generator=g)
        bridge = from_diffusers(unet, original)
        grid_ts = GRIDS[grid](6, bridge.schedule)
        run = sdeflow.sample(bridge.denoiser, SAMPLERS[sampler](), grid_ts, z,
                             noise=sdeflow.GeneratorNoise(g))
    out = run.x
    assert len(scheduler.timesteps) == run.nfe
    expected = (out / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert abs(images - expected).max() < 1e-5


def test_sdeflow_scheduler_config_round_trip_and_bad_names(tmp_path):
    pytest.importorskip("diffusers")
    from sdeflow.adapters import SdeflowScheduler

    s = SdeflowScheduler(beta_schedule="scaled_linear", sampler="dpm-solver++-2m", grid="karras")
    s.save_config(tmp_path)
    back = SdeflowScheduler.from_config(SdeflowScheduler.load_config(tmp_path))
    assert back.config.sampler == "dpm-solver++-2m" and back.config.grid == "karras" and back.schedule == s.schedule
    s.set_timesteps(5)
    assert len(s.timesteps) == 5 and float(s.timesteps[0]) == pytest.approx(999.0, abs=1e-3)
    noisy = s.add_noise(torch.zeros(2, 3), torch.ones(2, 3), torch.tensor([999, 0]))
    assert torch.allclose(noisy[:, 0], s.schedule.sigma(s._t_of(torch.tensor([999, 0]))).float())
    with pytest.raises(ValueError, match="unknown sampler"):
        SdeflowScheduler(sampler="nope")
    with pytest.raises(ValueError, match="unknown grid"):
        SdeflowScheduler(grid="nope")
    with pytest.raises(ValueError, match="chooses its steps"):
        SdeflowScheduler(sampler="rk45")


# ---------------------------------------------------------------------------------------- k-diffusion


def _k_sampling():
    from sdeflow.adapters.k_diffusion import import_k_diffusion

    try:
        return import_k_diffusion("sampling")[0]
    except ImportError as err:
        pytest.skip(str(err))


def _k_model():
    """A smooth nonlinear denoiser in k-diffusion's convention (y, sigma) -> x0_hat."""
    w = torch.randn(4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) / 2

    def model(y, sigma, **kw):
        s = sigma.reshape(-1, 1)
        return torch.tanh(y @ w) * s / (1 + s) + y / (1 + s ** 2)

    return model


# float64 on both sides: the measured differences are 7e-16 to 1.4e-15 (LMS included: k-diffusion's scipy
# quadrature is exact for its polynomials, and both take the order-4 step to sigma = 0)
@pytest.mark.parametrize("k_name,sdeflow_name,kw,tol", [
    ("sample_euler", "ddim", {}, 1e-12),
    ("sample_euler", "euler", {}, 1e-12),
    ("sample_heun", "edm-heun", {}, 1e-12),
    ("sample_dpm_2", "dpm-solver-2", {}, 1e-12),
    ("sample_dpmpp_2m", "dpm-solver++-2m", {}, 1e-12),
    ("sample_dpmpp_2m_sde", "dpm-solver++-2m-heun", {"eta": 0.0, "solver_type": "heun"}, 1e-12),
    ("sample_lms", "lms", {}, 1e-12),
])
@pytest.mark.parametrize("grid", ["karras", "exponential"])
def test_k_diffusion_samplers_equal_sdeflow_on_the_same_sigmas(k_name, sdeflow_name, kw, tol, grid):
    ks = _k_sampling()
    from sdeflow.adapters.k_diffusion import from_k_diffusion, k_sampler, sigmas_to_grid

    sigmas = (ks.get_sigmas_karras(9, 0.02, 20.0) if grid == "karras" else ks.get_sigmas_exponential(9, 0.02, 20.0)).double()
    model = _k_model()
    y = torch.randn(16, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 20.0
    ref = getattr(ks, k_name)(model, y, sigmas, disable=True, **kw)
    out = k_sampler(sdeflow_name)(model, y, sigmas)
    assert float((out - ref).abs().max() / ref.abs().max()) < tol
    # the same through the pieces: the wrapped denoiser and the grid of the sigmas
    den, ts = from_k_diffusion(model, sigma_max=float(sigmas[0])), sigmas_to_grid(sigmas)
    assert torch.allclose(den.schedule.sigma(ts), sigmas, rtol=1e-12, atol=0)
    assert torch.allclose(sdeflow.sample(den, SAMPLERS[sdeflow_name](), ts, y).x, out, rtol=1e-12, atol=1e-12)


def test_k_sampler_callback_and_bad_names():
    ks = _k_sampling()
    from sdeflow.adapters.k_diffusion import k_sampler

    # k-diffusion's callback contract: the state step i starts from, sigmas[i], and the step's first denoised
    sigmas = ks.get_sigmas_karras(4, 0.1, 10.0).double()
    y = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 10
    for k_name, name in [("sample_heun", "edm-heun"), ("sample_euler", "euler"), ("sample_dpmpp_2m", "dpm-solver++-2m"),
                         ("sample_lms", "lms")]:
        theirs, ours = [], []
        getattr(ks, k_name)(_k_model(), y, sigmas, callback=theirs.append, disable=True)
        k_sampler(name)(_k_model(), y, sigmas, callback=ours.append)
        assert [c["i"] for c in ours] == [c["i"] for c in theirs] == [0, 1, 2, 3]
        for a, b in zip(theirs, ours):
            assert float(b["sigma"]) == pytest.approx(float(a["sigma"]), rel=1e-12)
            assert float(b["sigma_hat"]) == pytest.approx(float(a["sigma_hat"]), rel=1e-12)
            assert torch.allclose(b["x"], a["x"], rtol=1e-12, atol=1e-12), (k_name, a["i"])
            assert torch.allclose(b["denoised"], a["denoised"], rtol=1e-12, atol=1e-12), (k_name, a["i"])
    with pytest.raises(ValueError, match="unknown sampler"):
        k_sampler("nope")


# ------------------------------------------------------------------------------------- flow_matching


def test_a_flow_matching_velocity_sampled_by_sdeflow_matches_an_adaptive_reference_solve():
    torchdiffeq = pytest.importorskip("torchdiffeq")
    from sdeflow.adapters import from_flow_matching

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2)).double()

    def velocity(x, t):  # noise (t = 0) to data (t = 1), as flow_matching and torchcfm train it
        return net(torch.cat([x, t.reshape(-1, 1).expand(x.shape[0], 1).to(x.dtype)], 1))

    x0 = torch.randn(64, 2, dtype=torch.float64)
    with torch.no_grad():
        ref = torchdiffeq.odeint(lambda t, x: velocity(x, t), x0, torch.tensor([0.0, 1.0], dtype=torch.float64),
                                 method="dopri5", rtol=1e-10, atol=1e-10)[-1]
        den = from_flow_matching(velocity)
        errs = [float((sdeflow.sample(den, SAMPLERS["heun3"](), sdeflow.uniform_grid(n), x0).x - ref).abs().max())
                for n in (16, 32, 64)]
    assert errs[-1] < 1e-6 and errs[0] / errs[-1] > 30, errs  # converges to the reference at third order


def test_flow_matching_solver_agrees_with_sdeflow_on_its_own_wrapper():
    fm = pytest.importorskip("flow_matching.solver")
    from flow_matching.utils import ModelWrapper

    from sdeflow.adapters import from_flow_matching

    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).double()

    class Velocity(ModelWrapper):
        def forward(self, x, t, **extras):
            return self.model(torch.cat([x, t.reshape(-1, 1).expand(x.shape[0], 1).to(x.dtype)], 1))

    v = Velocity(net)
    x0 = torch.randn(32, 2, dtype=torch.float64)
    grid = torch.linspace(0, 1, 9, dtype=torch.float64)
    den = from_flow_matching(v, time_kw="t")
    # flow_matching's method with those 8 steps is sdeflow's sampler on the reversed grid; its rk4 (torchdiffeq's
    # 3/8 rule) evaluates the network on clean data in its last stage, as rk4-38-at-data does
    for method, name in [("euler", "euler"), ("midpoint", "midpoint"), ("heun3", "heun3"), ("rk4", "rk4-38-at-data")]:
        with torch.no_grad():
            ref = fm.ODESolver(velocity_model=v).sample(x_init=x0, step_size=None, method=method, time_grid=grid)
            out = sdeflow.sample(den, SAMPLERS[name](), 1 - grid, x0)
        assert out.nfe == SAMPLERS[name]().nfe_per_step * 8
        assert torch.allclose(out.x, ref, rtol=1e-12, atol=1e-12), method
    with pytest.raises(ValueError, match="not rectified flow"):
        from_flow_matching(v, sigma_min=1e-4)
