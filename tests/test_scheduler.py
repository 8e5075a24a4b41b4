"""``SdeflowScheduler`` as a diffusers user meets it, against diffusers' own schedulers and loops (the
cases of diffusers' scheduler test suite that a user hits, in sdeflow's words; the suite itself runs with
``../shared/tools/diffusers-suite/run``).

The network is a fixed smooth function of the state and the timestep, so two loops that feed it the
same timesteps and take the same steps agree to float32 round-off (about 1e-6 relative, measured);
1e-5 is the tolerance."""

import threading

import numpy as np
import pytest
import torch

import sdeflow

d = pytest.importorskip("diffusers")

from sdeflow.adapters import SdeflowScheduler  # noqa: E402
from sdeflow.registry import SAMPLERS, default_sampling  # noqa: E402

W = torch.randn(3, 3, generator=torch.Generator().manual_seed(0)) * 0.3
TOL = 1e-5


def net(x, t):
    t = torch.as_tensor(t, dtype=x.dtype)
    return torch.tanh(x @ W.to(x.dtype)) + 0.001 * (t.reshape(-1, 1) if t.ndim else t)


def loop(s, n=8, x=None, edit=None, **set_kw):
    """diffusers' denoising loop (what its pipelines run), with an optional edit of the latents after
    each step (``callback_on_step_end``)."""
    s.set_timesteps(n, **set_kw)
    if x is None:
        x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1)) * getattr(s, "init_noise_sigma", 1.0)
    for k, t in enumerate(s.timesteps):
        x = s.step(net(s.scale_model_input(x, t) if hasattr(s, "scale_model_input") else x, t), t, x).prev_sample
        if edit is not None:
            x = edit(k, x)
    return x


def rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


COMMON = ["DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
          "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "DPMSolverMultistepScheduler",
          "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler", "KDPM2DiscreteScheduler",
          "LCMScheduler", "TCDScheduler", "FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler",
          "EDMEulerScheduler", "EDMDPMSolverMultistepScheduler"]


@pytest.mark.parametrize("name", COMMON)
def test_a_config_built_in_code_is_recognised_by_its_keys(name):
    """A scheduler built in code has no ``_class_name`` in its config: the process comes from its keys
    (flow matching is never taken for DDPM epsilon), and the run is finite."""
    other = getattr(d, name)(prediction_type="v_prediction") if name.startswith(("DDPM", "DDIM", "Euler", "DPM", "UniPC", "DEIS")) \
        else getattr(d, name)()
    assert "_class_name" not in other.config
    s = SdeflowScheduler.from_config(other.config)
    want = {"FlowMatch": ("flow", "flow_prediction"), "EDM": ("edm", other.config.get("prediction_type"))}
    process, prediction = next((v for k, v in want.items() if name.startswith(k)), ("vp", other.config.get("prediction_type")))
    assert s.process == process and s.config.prediction_type == prediction
    x = loop(s, 5, torch.ones(1, 3) * getattr(s, "init_noise_sigma", 1.0))
    assert bool(torch.isfinite(x).all())


def test_a_config_of_no_known_process_is_refused():
    with pytest.raises(ValueError, match="cannot tell which process"):
        SdeflowScheduler.from_config({"num_train_timesteps": 1000, "rho": 7.0})


@pytest.mark.parametrize("cls,sampler,config", [
    ("DPMSolverMultistepScheduler", "dpm-solver++-2m", {}),                       # linspace spacing
    ("UniPCMultistepScheduler", "unipc-bh2", {}),
    ("DPMSolverMultistepScheduler", "dpm-solver++-2m", {"use_karras_sigmas": True}),
    ("DDIMScheduler", "ddim", {"timestep_spacing": "leading", "steps_offset": 1, "set_alpha_to_one": False,
                               "clip_sample": False}),
    ("FlowMatchEulerDiscreteScheduler", "euler", {"shift": 3.0}),                  # its shifted sigmas
    ("EDMEulerScheduler", "ddim", {}),
    ("EDMEulerScheduler", "ddim", {"prediction_type": "v_prediction"}),
])
def test_grid_scheduler_reproduces_the_source_schedulers_defaults(cls, sampler, config):
    """``grid="scheduler"`` with the sampler a diffusers scheduler is: the same result, so a user can
    switch and then move to a better configuration."""
    ref = getattr(d, cls)(**config)
    ours = SdeflowScheduler.from_config(ref.config, sampler=sampler, grid="scheduler")
    a, b = loop(ref), loop(ours)
    assert [float(t) for t in ours.timesteps] == pytest.approx([float(t) for t in ref.timesteps], abs=1e-4)
    assert rel(b, a) < TOL


def test_custom_timesteps_and_sigmas_as_pipelines_pass_them():
    """``set_timesteps(timesteps=...)`` and, as FluxPipeline does, ``sigmas=`` with ``mu=`` (dynamic
    shifting): the grid the source scheduler makes of them; numpy integers are step counts."""
    s = SdeflowScheduler(sampler="ddim")
    s.set_timesteps(timesteps=[999, 500, 100])
    assert [int(t) for t in s.timesteps] == [999, 500, 100]
    flux = d.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    ours = SdeflowScheduler.from_config(flux.config, sampler="euler")
    sigmas = np.linspace(1.0, 1 / 6, 6)
    a, b = loop(flux, None, sigmas=sigmas, mu=0.8), loop(ours, None, sigmas=sigmas, mu=0.8)
    assert rel(b, a) < TOL
    s.set_timesteps(np.int64(7))
    assert s.num_inference_steps == 7


def test_img2img_begins_at_the_strengths_step_as_diffusers_does():
    """img2img / SDEdit: the input noised to ``timesteps[t_start]`` with ``add_noise``, ``set_begin_index``
    (or a first ``step`` at that timestep), then the remaining timesteps: equal to diffusers' DPM-Solver++(2M)
    and to sdeflow's loop on the rest of the grid."""
    ref = d.DPMSolverMultistepScheduler(timestep_spacing="trailing")
    outs = []
    for s, begin in ((ref, True), (SdeflowScheduler.from_config(ref.config, sampler="dpm-solver++-2m", grid="trailing"), True),
                     (SdeflowScheduler.from_config(ref.config, sampler="dpm-solver++-2m", grid="trailing"), False)):
        s.set_timesteps(10)
        rest = s.timesteps[5:]
        if begin:
            s.set_begin_index(5)
        x = s.add_noise(torch.ones(4, 3), torch.randn(4, 3, generator=torch.Generator().manual_seed(2)), rest[:1])
        for t in rest:
            x = s.step(net(x, t), t, x).prev_sample
        outs.append(x)
    assert rel(outs[1], outs[0]) < TOL and rel(outs[2], outs[0]) < TOL
    s = SdeflowScheduler.from_config(ref.config, sampler="dpm-solver++-2m", grid="trailing")
    s.set_timesteps(10)
    x0 = s.add_noise(torch.ones(4, 3), torch.randn(4, 3, generator=torch.Generator().manual_seed(2)), s.timesteps[5:6])
    den = sdeflow.ModelDenoiser(lambda x, c: net(x, c), s.schedule, "eps", time_input=s._timesteps_of)
    direct = sdeflow.sample(den, SAMPLERS["dpm-solver++-2m"](), s.ts[5:], x0).x
    assert rel(outs[1], direct) < TOL


def test_a_loop_stopped_early_leaves_nothing_running():
    threads = threading.active_count()
    for _ in range(3):
        s = SdeflowScheduler(sampler="heun", grid="karras")
        s.set_timesteps(10)
        x = torch.ones(2, 3)
        for t in s.timesteps[:4]:
            x = s.step(net(x, t), t, x).prev_sample
    assert threading.active_count() == threads


def test_step_continues_from_the_sample_it_is_given():
    """An edit of the latents between steps (``callback_on_step_end``) moves the result as it moves
    diffusers' DPM-Solver++(2M) on the same grid."""
    def edit(k, x):
        return x + 0.5 if k == 3 else x

    ref = d.DPMSolverMultistepScheduler(timestep_spacing="trailing")
    ours = SdeflowScheduler.from_config(ref.config, sampler="dpm-solver++-2m", grid="trailing")
    a, b = loop(ref, edit=edit), loop(ours, edit=edit)
    plain = loop(SdeflowScheduler.from_config(ref.config, sampler="dpm-solver++-2m", grid="trailing"))
    assert rel(b, a) < TOL and float((b - plain).abs().max()) > 0.1  # the edit (0.5) moved the result


def test_gradients_flow_through_step_as_through_sdeflow_sample():
    """``prev_sample`` stays attached to the model outputs: the gradient of a loss of the final sample in a
    network's weights equals autograd's through ``sdeflow.sample``."""
    w = torch.nn.Parameter(W.clone().double())

    def model(x, t):
        return torch.tanh(x @ w)

    s = SdeflowScheduler(sampler="dpm-solver++-2m", grid="logsnr")
    s.set_timesteps(6)
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = x
    for t in s.timesteps:
        y = s.step(model(y, t), t, y).prev_sample
    (g1,) = torch.autograd.grad(y.pow(2).sum(), w)
    den = sdeflow.ModelDenoiser(lambda z, c: model(z, c), s.schedule, "eps")
    out = sdeflow.sample(den, SAMPLERS["dpm-solver++-2m"](), s.ts, x).x
    (g2,) = torch.autograd.grad(out.pow(2).sum(), w)
    assert torch.allclose(g1, g2, rtol=1e-10, atol=0)


def test_the_attributes_pipelines_read():
    ref = d.DDPMScheduler(beta_schedule="scaled_linear")
    s = SdeflowScheduler.from_config(ref.config)
    for name in ("betas", "alphas", "alphas_cumprod"):
        assert torch.allclose(getattr(s, name), getattr(ref, name).float(), rtol=1e-5, atol=1e-7), name
    flow = SdeflowScheduler.from_config(d.FlowMatchEulerDiscreteScheduler().config)
    assert not any(hasattr(flow, name) for name in ("betas", "alphas", "alphas_cumprod"))  # a flow has none


def test_the_default_is_sdeflows_choice_for_the_budget():
    s = SdeflowScheduler()
    for n in (5, 12, 40):
        s.set_timesteps(n)
        name, grid = default_sampling(s.schedule, n)
        assert s.sampler == SAMPLERS[name]() and len(s.timesteps) == s.sampler.prepare(s.schedule, s.ts).nfe
