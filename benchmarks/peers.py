"""The peers, run on the same exact problems: diffusers schedulers, k-diffusion samplers and
flow_matching's ODE solver (rectified flow only).

All are optional. k-diffusion's package ``__init__`` imports training code with heavy dependencies
(torchvision, ...), so only its ``sampling`` and ``external`` modules are loaded, with the one
helper they need. Each runner returns ``(t0, x_out, nfe)`` in the process's native space, or
``None`` when it cannot take exactly the requested NFE.
"""

from __future__ import annotations

import inspect

import torch

from common import Counter, Process, Shared, oracle_network

# ---------------------------------------------------------------------------------------- k-diffusion


_K_CACHE: list = []


def load_k_diffusion():
    """``(sampling, external)`` modules of k-diffusion, or ``None`` with the reason."""
    if not _K_CACHE:
        _K_CACHE.append(_load_k_diffusion())
    return _K_CACHE[0]


def _load_k_diffusion():
    from sdeflow.adapters.k_diffusion import import_k_diffusion

    try:
        return import_k_diffusion("sampling", "external"), None
    except ImportError as err:  # not installed, or a missing optional dependency of its modules
        return None, str(err)


def k_sigma_range(process: Process):
    """k-diffusion works in sigma = sigma_t/alpha_t on y = x/alpha; its grids need a finite range."""
    sch = process.schedule
    if process.time_input == "index":
        return float(sch.noise_to_signal(sch.t_min)), float(sch.noise_to_signal(1.0))
    if process.time_input == "edm":
        return 0.002, 80.0
    return 0.002, 999.0


def k_model(shared: Shared, process: Process):
    """x_hat in k-diffusion's convention: model(y, sigma) with y = x_t / alpha_t."""
    sch, mix = process.schedule, shared.problem.mixture

    def model(y, sigma, **kw):
        t = sch.t_from_sigma_ratio(sigma.to(torch.float64))
        a = sch.alpha(t).reshape(-1, *([1] * (y.ndim - 1)))
        return mix.x_hat(y.to(torch.float64) * a, sch, t).to(y.dtype)

    return Counter(model)


K_SAMPLERS = {  # name -> (function name, extra kwargs, NFE for n sigmas + final 0)
    "euler": ("sample_euler", {}, lambda n: n),
    "heun": ("sample_heun", {}, lambda n: 2 * n - 1),
    "dpm_2": ("sample_dpm_2", {}, lambda n: 2 * n - 1),
    "lms": ("sample_lms", {}, lambda n: n),
    "dpmpp_2s": ("sample_dpmpp_2s_ancestral", {"eta": 0.0}, lambda n: 2 * n - 1),
    "dpmpp_2m": ("sample_dpmpp_2m", {}, lambda n: n),
    "dpmpp_2m_heun": ("sample_dpmpp_2m_sde", {"eta": 0.0, "solver_type": "heun"}, lambda n: n),
    "dpmpp_3m": ("sample_dpmpp_3m_sde", {"eta": 0.0}, lambda n: n),
}


K_SDE_SAMPLERS = {  # stochastic samplers, with k-diffusion's defaults (eta = 1, churn as EDM's ImageNet setting)
    "euler_ancestral": ("sample_euler_ancestral", {}, lambda n: n),
    "dpm_2_ancestral": ("sample_dpm_2_ancestral", {}, lambda n: 2 * n - 1),
    "dpmpp_2s_ancestral": ("sample_dpmpp_2s_ancestral", {}, lambda n: 2 * n - 1),
    "dpmpp_sde": ("sample_dpmpp_sde", {}, lambda n: 2 * n - 1),
    "dpmpp_2m_sde": ("sample_dpmpp_2m_sde", {}, lambda n: n),
    "dpmpp_2m_sde_heun": ("sample_dpmpp_2m_sde", {"solver_type": "heun"}, lambda n: n),
    "dpmpp_3m_sde": ("sample_dpmpp_3m_sde", {}, lambda n: n),
    "euler_churn": ("sample_euler", {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0}, lambda n: n),
    "heun_churn": ("sample_heun", {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0}, lambda n: 2 * n - 1),
}


def k_runs(ks, shared: Shared, process: Process, nfe: int, table=None, seed: int | None = None, only=None):
    """k-diffusion's samplers in ``table`` (the ODE ones by default); stochastic ones draw from the
    global RNG, seeded with ``seed`` before each run. With ``only`` (a set of names as yielded),
    those configurations alone."""
    sampling, _ = ks
    smin, smax = k_sigma_range(process)
    sch = process.schedule
    grids = {"karras": lambda n: sampling.get_sigmas_karras(n, smin, smax, 7.0, "cpu"),
             "exponential": lambda n: sampling.get_sigmas_exponential(n, smin, smax, "cpu")}
    for sname, (fn, kw, nfe_of) in (table or K_SAMPLERS).items():
        n = next((m for m in range(1, nfe + 2) if nfe_of(m) == nfe), None)
        if n is None:
            continue
        for gname, make in grids.items():
            if only is not None and f"k-diffusion {sname} ({gname})" not in only:
                continue
            sigmas = make(n).to(torch.float64)
            t0 = float(sch.t_from_sigma_ratio(sigmas[0]))
            x0 = shared.x_init(t0)
            model = k_model(shared, process)
            y = (x0 / float(sch.alpha(t0))).float()
            extra = {}
            if seed is not None:
                # seeds the global RNG and, explicitly, the Brownian-tree samplers' noise
                torch.manual_seed(seed)
                extra["extra_args"] = {"seed": seed}
            out = getattr(sampling, fn)(model, y, sigmas.float(), disable=True, **kw, **extra)
            yield f"k-diffusion {sname} ({gname})", (t0, 0.0), out.double(), model.calls
    if table is not None or (only is not None and "k-diffusion dpm_fast" not in only):
        return
    n = nfe  # DPM-Solver "fast": exactly n evaluations
    t0 = float(sch.t_from_sigma_ratio(smax))
    model = k_model(shared, process)
    y = (shared.x_init(t0) / float(sch.alpha(t0))).float()
    out = sampling.sample_dpm_fast(model, y, smin, smax, n, disable=True)
    t_end = float(sch.t_from_sigma_ratio(smin))  # dpm_fast stops at sigma_min: judged there
    yield "k-diffusion dpm_fast", (t0, t_end), out.double() * float(sch.alpha(t_end)), model.calls


# ------------------------------------------------------------------------------------------ diffusers


def load_diffusers():
    try:
        import diffusers  # noqa: F401
    except ImportError:
        return None, "diffusers is not installed (pip install diffusers)"
    return diffusers, None


def _ddpm_configs(d):
    base = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    out = {}
    for spacing in ["linspace", "trailing", "leading"]:  # leading starts below the top of the schedule
        b = dict(base, timestep_spacing=spacing)
        out[f"DDIM ({spacing})"] = (d.DDIMScheduler, dict(b, set_alpha_to_one=True))
        out[f"Euler ({spacing})"] = (d.EulerDiscreteScheduler, dict(b))
        out[f"Heun ({spacing})"] = (d.HeunDiscreteScheduler, dict(b))
        out[f"LMS ({spacing})"] = (d.LMSDiscreteScheduler, dict(b))
        out[f"PNDM ({spacing})"] = (d.PNDMScheduler, dict(b, skip_prk_steps=True, set_alpha_to_one=True))
        for order in [2, 3]:
            out[f"DPMSolverMultistep++ {order}M ({spacing})"] = (d.DPMSolverMultistepScheduler, dict(b, solver_order=order))
            if spacing == "linspace":  # the single-step scheduler has one spacing of its own
                out[f"DPMSolverSinglestep {order}"] = (d.DPMSolverSinglestepScheduler, dict(base, solver_order=order))
            out[f"DEIS {order} ({spacing})"] = (d.DEISMultistepScheduler, dict(b, solver_order=order))
            for v in ["bh1", "bh2"]:
                out[f"UniPC {v} {order} ({spacing})"] = (d.UniPCMultistepScheduler, dict(b, solver_order=order, solver_type=v))
                out[f"UniPC {v} {order} ({spacing}, final sigma_min)"] = (d.UniPCMultistepScheduler, dict(
                    b, solver_order=order, solver_type=v, final_sigmas_type="sigma_min"))
    for order in [2, 3]:
        out[f"DPMSolverMultistep++ {order}M (karras)"] = (d.DPMSolverMultistepScheduler,
                                                          dict(base, solver_order=order, use_karras_sigmas=True))
        out[f"UniPC bh2 {order} (karras)"] = (d.UniPCMultistepScheduler, dict(base, solver_order=order, use_karras_sigmas=True))
        out[f"DPMSolverMultistep++ {order}M (lu lambdas)"] = (d.DPMSolverMultistepScheduler,
                                                              dict(base, solver_order=order, use_lu_lambdas=True))
    out["DPMSolverMultistep++ 2M heun (linspace)"] = (d.DPMSolverMultistepScheduler, dict(base, solver_order=2, solver_type="heun"))
    out["DPMSolverMultistep 2M noise (linspace)"] = (d.DPMSolverMultistepScheduler, dict(
        base, solver_order=2, algorithm_type="dpmsolver", final_sigmas_type="sigma_min"))
    out["Euler (karras)"] = (d.EulerDiscreteScheduler, dict(base, use_karras_sigmas=True))
    out["Heun (karras)"] = (d.HeunDiscreteScheduler, dict(base, use_karras_sigmas=True))
    return out


def _edm_configs(d):
    out = {"EDMEuler": (d.EDMEulerScheduler, {})}
    for order in [2, 3]:
        out[f"EDMDPMSolverMultistep {order}M"] = (d.EDMDPMSolverMultistepScheduler, dict(solver_order=order))
    return out


def _flow_configs(d):
    out = {"FlowMatchEuler": (d.FlowMatchEulerDiscreteScheduler, dict(shift=1.0)),
           "FlowMatchHeun": (d.FlowMatchHeunDiscreteScheduler, dict(shift=1.0))}
    for order in [2, 3]:
        flow = dict(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=1.0, solver_order=order)
        out[f"DPMSolverMultistep++ {order}M (flow)"] = (d.DPMSolverMultistepScheduler, flow)
        out[f"UniPC bh2 {order} (flow)"] = (d.UniPCMultistepScheduler, flow)
    return out


def _sde_configs(d, process: Process):
    """diffusers' stochastic schedulers for each process (those it has)."""
    if process.time_input == "index":
        base = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
        out = {}
        for spacing in ["leading", "trailing"]:
            b = dict(base, timestep_spacing=spacing)
            out[f"DDPM small ({spacing})"] = (d.DDPMScheduler, dict(b, variance_type="fixed_small"))
            out[f"DDPM large ({spacing})"] = (d.DDPMScheduler, dict(b, variance_type="fixed_large"))
            out[f"DDIM eta=1 ({spacing})"] = (d.DDIMScheduler, dict(b, set_alpha_to_one=True, _step={"eta": 1.0}))
            out[f"EulerAncestral ({spacing})"] = (d.EulerAncestralDiscreteScheduler, b)
            out[f"KDPM2Ancestral ({spacing})"] = (d.KDPM2AncestralDiscreteScheduler, b)
            for order in [2, 3]:
                out[f"DPMSolverMultistep SDE++ {order}M ({spacing})"] = (
                    d.DPMSolverMultistepScheduler, dict(b, algorithm_type="sde-dpmsolver++", solver_order=order))
            out[f"DPMSolverSDE ({spacing})"] = (d.DPMSolverSDEScheduler, b)
        out["DPMSolverMultistep SDE++ 2M (karras)"] = (
            d.DPMSolverMultistepScheduler, dict(base, algorithm_type="sde-dpmsolver++", use_karras_sigmas=True))
        return out
    if process.time_input == "edm":
        return {f"EDMDPMSolverMultistep SDE++ {o}M": (d.EDMDPMSolverMultistepScheduler,
                                                      dict(algorithm_type="sde-dpmsolver++", solver_order=o)) for o in [2, 3]}
    flow = dict(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=1.0)
    out = {f"DPMSolverMultistep SDE++ {o}M (flow)": (d.DPMSolverMultistepScheduler,
                                                    dict(flow, algorithm_type="sde-dpmsolver++", solver_order=o)) for o in [2, 3]}
    out["FlowMatchEuler stochastic"] = (d.FlowMatchEulerDiscreteScheduler, dict(shift=1.0, stochastic_sampling=True))
    return out


def diffusers_configs(d, process: Process, stochastic: bool = False):
    if stochastic:
        return _sde_configs(d, process)
    if process.time_input == "index":
        return _ddpm_configs(d)
    if process.time_input == "edm":
        return _edm_configs(d)
    return _flow_configs(d)


def _run_scheduler(cls, kwargs, steps, shared: Shared, process: Process, dtype=torch.float32, seed=None):
    """One diffusers run; the model is evaluated at the noise level the scheduler assumes."""
    import warnings

    sch = process.schedule
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kwargs = dict(kwargs)
        step_kwargs = kwargs.pop("_step", {})
        s = cls(**kwargs)
        s.set_timesteps(steps)
    flow = process.time_input == "t"
    edm = process.time_input == "edm"
    # t of the first evaluation, from the scheduler's own noise level (or its integer training index)
    if not hasattr(s, "sigmas"):
        t0 = float(sch.t_from_index(torch.tensor(float(s.timesteps[0]))))
    elif flow:
        t0 = float(s.sigmas[0])
    else:
        t0 = float(sch.t_from_sigma_ratio(s.sigmas.to(torch.float64)[0]))
    x0 = shared.x_init(t0)
    sigma_space = getattr(s, "init_noise_sigma", 1.0) != 1.0 or edm  # state is x_t / alpha
    a0 = float(sch.alpha(t0))
    x = (x0 / a0 if sigma_space else x0).to(dtype)
    net = oracle_network(shared.problem, process)
    calls = [0]

    def model(xin, timestep):
        i = calls[0]
        calls[0] += 1
        if hasattr(s, "sigmas"):  # evaluate at the noise level the scheduler assumes for this call
            sig = float(s.sigmas[min(s.step_index if s.step_index is not None else i, len(s.sigmas) - 1)])
            t = sig if flow else float(sch.t_from_sigma_ratio(sig))
        else:  # integer training index
            t = float(sch.t_from_index(torch.tensor(float(timestep))))
        c = {"index": lambda: sch.index_from_t(t), "edm": lambda: torch.log(sch.noise_to_signal(t)) / 4,
             "t": lambda: torch.tensor(t)}[process.time_input]()
        # EDM schedulers feed c_in y and expect F with x_hat = c_skip y + c_out F: the "edm" parameterization.
        return net(xin, torch.full((xin.shape[0],), float(c), dtype=torch.float64))

    extra = dict(step_kwargs)
    if seed is not None:
        torch.manual_seed(seed)  # schedulers that draw noise without a generator argument
        if "generator" in inspect.signature(s.step).parameters:
            extra["generator"] = torch.Generator().manual_seed(seed)
    for ts in s.timesteps:
        xin = s.scale_model_input(x, ts) if hasattr(s, "scale_model_input") else x
        out = model(xin, ts)
        x = s.step(out, ts, x, **extra).prev_sample
    return t0, x.to(torch.float64), calls[0]


def diffusers_runs(d, shared: Shared, process: Process, nfe: int, seed: int | None = None, only=None):
    """diffusers' ODE schedulers, or with ``seed`` its stochastic ones (seeded per run); with ``only``
    (a set of names as yielded), those configurations alone."""
    for name, (cls, kwargs) in diffusers_configs(d, process, stochastic=seed is not None).items():
        if only is not None and f"diffusers {name}" not in only:
            continue
        # the step counts that give nfe evaluations for 1, 2 (Heun: 2n - 1) or n + 1 (PLMS) per step
        for steps in dict.fromkeys([nfe, (nfe + 1) // 2, nfe - 1]):
            if steps < 1:
                continue
            try:
                t0, x, calls = _run_scheduler(cls, kwargs, steps, shared, process, seed=seed)
            except Exception:
                break
            if calls == nfe:
                yield f"diffusers {name}", (t0, 0.0), x, calls
                break


# -------------------------------------------------------------------------------------- flow_matching


def load_flow_matching():
    try:
        from flow_matching.solver import ODESolver
        from flow_matching.utils import ModelWrapper
    except ImportError:
        return None, "flow_matching is not installed (pip install flow_matching)"
    return (ODESolver, ModelWrapper), None


#: flow_matching's fixed-grid ODE methods (torchdiffeq's) on its default uniform time grid.
FM_METHODS = ("euler", "midpoint", "heun3", "rk4")


def flow_matching_runs(fm, shared: Shared, process: Process, nfe: int, only=None):
    """flow_matching's ``ODESolver`` on the rectified-flow process (its own kind of model; it takes
    velocity fields only). Its time runs from noise (0) to data (1): the oracle's velocity is
    negated and evaluated at ``1 - t``; at the data end (RK4's last stage) the oracle answers the
    exact limit, as it does for sdeflow's ``RK4(at_data=True)``. With ``only`` (a set of names as
    yielded), those configurations alone."""
    if process.time_input != "t":
        return
    solver_cls, wrapper_cls = fm
    net = oracle_network(shared.problem, process)

    class Velocity(wrapper_cls):
        def forward(self, x, t, **extras):
            return -net(x, (1.0 - t).to(torch.float64).expand(x.shape[0]))

    for method in FM_METHODS:
        if only is not None and f"flow_matching {method} (uniform)" not in only:
            continue
        for steps in range(1, nfe + 1):
            model = Velocity(None)
            counted = Counter(model.forward)
            model.forward = counted
            x0 = shared.x_init(1.0).float()
            grid = torch.linspace(0.0, 1.0, steps + 1)
            out = solver_cls(velocity_model=model).sample(x_init=x0, step_size=None, method=method, time_grid=grid)
            if counted.calls == nfe:
                yield f"flow_matching {method} (uniform)", (1.0, 0.0), out.double(), counted.calls
                break
            if counted.calls > nfe:
                break
