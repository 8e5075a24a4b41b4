"""diffusers models and schedulers as sdeflow denoisers and grids, in one call.

``bridge = from_diffusers(unet, scheduler)`` reads what a diffusers checkpoint fixes and hands it to
sdeflow:

- the **schedule**: the scheduler's own ``alphas_cumprod`` as a :class:`~sdeflow.schedules.DiscreteVP`
  (training index ``n`` sits at ``t = (n + 1) / N``), or :class:`~sdeflow.schedules.RectifiedFlow` for
  flow-matching schedulers (diffusers' ``sigma`` is sdeflow's ``t``);
- the **parameterization** from ``prediction_type`` (``epsilon`` -> ``eps``, ``v_prediction`` -> ``v``,
  ``sample`` -> ``x0``, ``flow_prediction`` and flow-match schedulers -> ``velocity``: diffusers'
  ``noise - x0`` is sdeflow's ``dx_t/dt``);
- the **time input**: the timestep diffusers would feed the network (an integer training index on
  the scheduler's own grid; between indices diffusers' interpolation, linear in ``log sigma``;
  ``1000 sigma`` for flow models);
- ``.sample`` unwrapping, a learned-variance half of the output dropped, conditioning keyword
  arguments (``encoder_hidden_states=``, ``class_labels=``, ...) passed through ``cond``;
- ``clip_sample`` / ``thresholding`` of the scheduler config as a transform of ``x_hat``.

``bridge.grid(n)`` asks a private copy of the scheduler for its ``n``-step timesteps (every spacing
option it has: ``linspace``, ``leading`` with ``steps_offset``, ``trailing``, Karras, exponential and
beta sigmas, flow ``shift`` and dynamic shifting with ``mu=``) and returns them as sdeflow times,
ending where the scheduler ends (``t = 0``, or the first training index when the scheduler stops
there: ``final_sigmas_type="sigma_min"``, ``set_alpha_to_one=False``). The network then sees exactly
the timesteps diffusers feeds it on that grid.

See ``docs/conventions.md`` for which sdeflow sampler reproduces which diffusers scheduler.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any

import torch

from ..denoisers import Denoiser, ModelDenoiser, unwrap_output
from ..grids import check_grid, sigma_times
from ..schedules import EDM, DiscreteVP, RectifiedFlow, Schedule
from ..shapes import as_time

#: diffusers' ``prediction_type`` -> sdeflow's parameterization.
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0", "flow_prediction": "velocity"}


def _require_diffusers():
    try:
        import diffusers
    except ImportError as err:  # pragma: no cover - exercised only without the optional dependency
        raise ImportError("from_diffusers needs diffusers: pip install diffusers (or sdeflow[peers])") from err
    return diffusers


#: Keys by which a scheduler config without ``_class_name`` (built in code) shows its process.
BETA_KEYS = ("beta_start", "beta_end", "beta_schedule", "trained_betas")
EDM_KEYS = ("sigma_data",)
FLOW_KEYS = ("shift", "use_dynamic_shifting", "base_shift", "max_shift", "shift_terminal")


def diffusers_class(name: str):
    """diffusers' scheduler class of that name, or a clear error."""
    d = _require_diffusers()
    cls = getattr(d, name, None) if isinstance(name, str) else None
    if cls is None or not hasattr(cls, "set_timesteps"):
        raise ValueError(f"diffusers has no scheduler class {name!r}")
    return cls


@functools.lru_cache(maxsize=1)
def _init_keys() -> tuple[tuple[str, frozenset], ...]:
    """Every diffusers scheduler class with its constructor's keys; the common classes first (a config
    several classes share, LMS's and KDPM2's say, is taken for the first)."""
    import inspect

    d = _require_diffusers()
    rare = ("Parallel", "FlowMap", "KDPM2", "TCD", "Karras", "ScoreSde", "VQ", "Amused", "CMStochastic", "Cosine", "SASolver",
            "CogVideo", "Unclip", "Repaint", "IPNDM", "Consistency", "Dummy")
    out = []
    for name in sorted((n for n in dir(d) if n.endswith("Scheduler")), key=lambda n: (any(r in n for r in rare), n)):
        cls = getattr(d, name, None)
        if not hasattr(cls, "set_timesteps"):
            continue
        try:
            out.append((name, frozenset(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}))
        except (TypeError, ValueError):
            continue
    return tuple(out)


def _class_by_keys(config) -> str | None:
    """The diffusers scheduler whose constructor takes exactly the config's keys (a config built in code
    holds them all); None if none does."""
    keys = {k for k in config if not k.startswith("_")}
    return next((name for name, params in _init_keys() if params == keys), None)


def recognize(config) -> tuple[str, str]:
    """``(scheduler class name, process)`` of a diffusers scheduler config, ``process`` one of ``vp``,
    ``flow``, ``edm``: from ``_class_name`` when it names a scheduler, or the class whose constructor
    takes exactly the config's keys (a config built in code has no ``_class_name``), else from the keys
    (flow matching: ``shift`` and no betas; EDM: ``sigma_data`` and no betas; betas: a DDPM-family
    scheduler). A config that shows none of these is refused: it would otherwise be
    read as a DDPM epsilon model and give silently wrong samples."""
    config = dict(config)
    betas = any(k in config for k in BETA_KEYS)
    name = config.get("_class_name")
    if not name:  # built in code: the class from the keys, the process from the keys below
        name = _class_by_keys(config)
        if name is not None:
            return name, _process_by_keys(config, betas)
    if name and name != "SdeflowScheduler":
        diffusers_class(name)
        if "FlowMatch" in name or config.get("use_flow_sigmas") or config.get("prediction_type") == "flow_prediction":
            return name, "flow"
        if name.startswith("EDM") or ("sigma_data" in config and not betas):
            return name, "edm"
        return name, "vp"
    process = _process_by_keys(config, betas)
    if process == "flow":
        return ("FlowMatchEulerDiscreteScheduler" if not betas else "DPMSolverMultistepScheduler"), "flow"
    if process == "edm":
        return ("EDMDPMSolverMultistepScheduler" if "solver_order" in config else "EDMEulerScheduler"), "edm"
    return ("DPMSolverMultistepScheduler" if "solver_order" in config else "DDPMScheduler"), "vp"


def _process_by_keys(config: dict, betas: bool) -> str:
    if config.get("use_flow_sigmas") or config.get("prediction_type") == "flow_prediction":
        return "flow"
    if not betas and any(k in config for k in FLOW_KEYS):
        return "flow"
    if not betas and all(k in config for k in ("sigma_min", "sigma_max", *EDM_KEYS)):
        return "edm"
    if betas:
        return "vp"
    raise ValueError("cannot tell which process this scheduler config describes (no _class_name, no betas, no flow "
                     f"shift, no EDM sigmas; keys: {', '.join(sorted(k for k in config if not k.startswith('_')))}): "
                     "pass the scheduler instance, or a config that names its class")


def _scheduler(scheduler_or_config):
    """A private scheduler instance from a scheduler, its config, or a local folder holding one."""
    _require_diffusers()
    if hasattr(scheduler_or_config, "set_timesteps") and hasattr(scheduler_or_config, "config"):
        return copy.deepcopy(scheduler_or_config)
    if isinstance(scheduler_or_config, str):  # a local from_pretrained folder (never downloads)
        import os

        folder = scheduler_or_config
        if os.path.isdir(os.path.join(folder, "scheduler")):
            folder = os.path.join(folder, "scheduler")
        if not os.path.isfile(os.path.join(folder, "scheduler_config.json")):
            raise ValueError(f"{scheduler_or_config!r} holds no scheduler_config.json (nor a scheduler/ folder with one)")
        import json

        with open(os.path.join(folder, "scheduler_config.json")) as f:
            scheduler_or_config = json.load(f)
    config = dict(scheduler_or_config)
    name, _ = recognize(config)
    return diffusers_class(name).from_config(config)


def _is_flow(scheduler) -> bool:
    cfg = scheduler.config
    return ("FlowMatch" in type(scheduler).__name__ or bool(cfg.get("use_flow_sigmas", False))
            or cfg.get("prediction_type") == "flow_prediction")


def _is_edm(scheduler) -> bool:
    return recognize({**scheduler.config, "_class_name": type(scheduler).__name__})[1] == "edm"


def schedule_from_scheduler(scheduler_or_config) -> Schedule:
    """The forward process of a diffusers scheduler (or its config): ``DiscreteVP`` over its
    ``alphas_cumprod``, ``RectifiedFlow`` for flow matching, or ``EDM`` for EDM schedulers. A zero-terminal-SNR schedule
    (``rescale_betas_zero_snr``) has ``alphas_cumprod[-1] = 0``, infinite logSNR; as diffusers' Euler
    scheduler does, that value is raised to ``2**-24`` (or half the previous value if that is smaller).
    Where diffusers' float32 product underflows to 0 before the end (large betas), it is taken in float64."""
    s = _scheduler(scheduler_or_config)
    if _is_flow(s):
        return RectifiedFlow()
    if _is_edm(s):
        cfg = s.config
        return EDM(sigma_max=float(cfg["sigma_max"]), sigma_min=float(cfg["sigma_min"]), sigma_data=float(cfg["sigma_data"]))
    ac = getattr(s, "alphas_cumprod", None)
    if ac is None:
        raise ValueError(f"{type(s).__name__} has neither alphas_cumprod, flow sigmas nor EDM sigmas: its process is "
                         "not supported")
    ac = torch.as_tensor(ac, dtype=torch.float64).clone()
    betas = getattr(s, "betas", None)
    b = torch.as_tensor(betas, dtype=torch.float64) if betas is not None else None
    if b is not None and (float(b[:-1].max()) >= 1.0 or float(b[-1]) > 1.0):  # a last beta of 1: zero terminal SNR
        raise ValueError(f"the scheduler's betas reach {float(b.max()):.4g}; betas must lie in (0, 1) (the last may be "
                         "1: zero terminal SNR); check beta_start, beta_end and beta_schedule")
    if betas is not None and int((ac == 0).sum()) > 1:  # float32's cumprod underflowed: the product in float64
        ac = torch.cumprod(1.0 - b, 0)
    if float(ac[-1]) <= 0:
        ac[-1] = min(2.0 ** -24, 0.5 * float(ac[-2]))
    return DiscreteVP(ac)


class NetworkTimesteps:
    """The timestep diffusers feeds the network at sdeflow time ``t``: exact values registered by
    :meth:`DiffusersBridge.grid`, else diffusers' own conversion (``1000 t`` for flow models; for
    discrete models the training index, interpolated linearly in ``log sigma`` between indices)."""

    def __init__(self, schedule: Schedule, num_train: int, edm: bool = False):
        self.table: dict[float, float] = {}
        self.num_train, self.edm = num_train, edm
        if isinstance(schedule, DiscreteVP):
            ac = schedule.alphas_cumprod
            self.log_sigmas = 0.5 * torch.log((1 - ac) / ac)
        else:
            self.log_sigmas = None

    def __call__(self, schedule: Schedule, t) -> torch.Tensor:
        t = as_time(t)
        # a traced program (torch.compile) takes the conversion, which gives a grid's training indices as integers
        if t.ndim == 0 and not torch.compiler.is_compiling() and float(t) in self.table:
            return torch.tensor(self.table[float(t)], dtype=torch.float64)
        if self.edm:  # EDM's c_noise = log(sigma) / 4
            return 0.25 * torch.log(schedule.noise_to_signal(t))
        if self.log_sigmas is None:
            return t * self.num_train
        return self.from_sigma(schedule.noise_to_signal(t))

    def from_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        """diffusers' ``_sigma_to_t``: the index, linear in ``log sigma`` between training indices."""
        ls = self.log_sigmas
        log_sigma = torch.log(torch.clamp(torch.as_tensor(sigma, dtype=torch.float64), min=1e-10))
        lo = torch.clamp(torch.searchsorted(ls, log_sigma.reshape(-1), right=True) - 1, 0, ls.numel() - 2)
        w = ((ls[lo] - log_sigma.reshape(-1)) / (ls[lo] - ls[lo + 1])).clamp(0, 1)
        idx = (1 - w) * lo + w * (lo + 1)
        near = torch.round(idx)
        idx = torch.where((idx - near).abs() < 1e-4, near, idx)  # a training index is fed as that integer
        return idx.reshape(log_sigma.shape)


class _Network(torch.nn.Module):
    """``model(x, timestep, **cond)`` with diffusers' output object unwrapped and a learned variance dropped."""

    def __init__(self, model, sign: float = 1.0):
        super().__init__()
        self.model, self.sign = model, sign

    def forward(self, x, c, **cond):
        out = unwrap_output(self.model(x, c, **cond))
        if out.ndim == x.ndim and out.shape[1] == 2 * x.shape[1] and out.shape[2:] == x.shape[2:]:
            out = out[:, : x.shape[1]]  # learned variance (learned / learned_range): the mean half
        return out if self.sign == 1.0 else -out


def clip_x_hat(x_hat: torch.Tensor, clip_range: float | None = None, *, ratio: float | None = None,
               max_value: float = 1.0) -> torch.Tensor:
    """diffusers' ``thresholding`` (with ``ratio``) or ``clip_sample`` (with ``clip_range``) of ``x_hat``."""
    if ratio is not None:
        flat = x_hat.reshape(x_hat.shape[0], -1).abs().float()
        s = torch.quantile(flat, ratio, dim=1).clamp(1.0, max_value).to(x_hat.dtype)
        s = s.reshape(-1, *([1] * (x_hat.ndim - 1)))
        return torch.minimum(torch.maximum(x_hat, -s), s) / s
    return x_hat.clamp(-clip_range, clip_range)


class ClipSample(Denoiser):
    """diffusers' ``clip_sample`` (``x_hat`` clipped to ``[-r, r]``) and ``thresholding`` (per sample,
    ``s = clamp(quantile(|x_hat|, ratio), 1, max)`` and ``x_hat <- clamp(x_hat, -s, s) / s``)."""

    def __init__(self, denoiser: Denoiser, clip_range: float | None = None, *, ratio: float | None = None,
                 max_value: float = 1.0):
        super().__init__(denoiser.schedule)
        self.inner, self.clip_range, self.ratio, self.max_value = denoiser, clip_range, ratio, max_value

    @classmethod
    def settings(cls, config) -> dict | None:
        """The keyword arguments a diffusers scheduler config asks for, or ``None`` (no clipping)."""
        if config.get("thresholding", False):
            return dict(ratio=float(config.get("dynamic_thresholding_ratio", 0.995)),
                        max_value=float(config.get("sample_max_value", 1.0)))
        if config.get("clip_sample", False):
            return dict(clip_range=float(config.get("clip_sample_range", 1.0)))
        return None

    def forward(self, x_t, t, **cond):
        return clip_x_hat(self.inner(x_t, t, **cond), clip_range=self.clip_range, ratio=self.ratio, max_value=self.max_value)

    def null_cond(self, cond):
        return self.inner.null_cond(cond)


@dataclass
class DiffusersBridge:
    """What :func:`from_diffusers` returns: the ``denoiser`` (a sdeflow Denoiser), its ``schedule``,
    the private ``scheduler`` copy behind :meth:`grid`, and the ``model`` denoiser before any
    clipping transform."""

    denoiser: Denoiser
    model: ModelDenoiser
    scheduler: Any
    timesteps_of: NetworkTimesteps

    @property
    def schedule(self) -> Schedule:
        return self.denoiser.schedule

    @property
    def flow(self) -> bool:
        return isinstance(self.schedule, RectifiedFlow)

    def grid(self, n: int, **set_timesteps_kwargs) -> torch.Tensor:
        """The scheduler's ``n``-step grid as decreasing sdeflow times (extra keyword arguments go to
        ``set_timesteps``, e.g. ``mu=`` for dynamic shifting); the network is fed the scheduler's
        own timesteps at these times."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"number of steps must be an integer >= 1, got {n!r}")
        ts = scheduler_grid(self.scheduler, self.schedule, self.timesteps_of, n, **set_timesteps_kwargs)
        self.model._cache_for = ()  # the time inputs of these times may have been cached before
        return ts


def scheduler_grid(s, schedule: Schedule, timesteps_of: NetworkTimesteps, n: int | None, **set_timesteps_kwargs) -> torch.Tensor:
    """The grid diffusers' scheduler ``s`` makes (``s.set_timesteps(n, **kwargs)``: ``timesteps=``,
    ``sigmas=``, ``mu=`` included) as decreasing sdeflow times of ``schedule``, ending where the
    scheduler ends; the network timestep it feeds at each time goes into ``timesteps_of``'s table."""
    s.set_timesteps(n, **set_timesteps_kwargs) if n is not None else s.set_timesteps(**set_timesteps_kwargs)
    timesteps = torch.as_tensor(s.timesteps).to(torch.float64).cpu()
    sigmas = getattr(s, "sigmas", None)
    if sigmas is None:  # DDIM / DDPM / PNDM: integer timesteps, then the scheduler's final alpha
        ts = schedule.t_from_index(timesteps)
        final = float(getattr(s, "final_alpha_cumprod", torch.tensor(1.0)))
        end = 0.0 if final >= 1.0 else float(schedule.t_from_index(0.0))
        pairs = list(zip(ts.tolist(), timesteps.tolist()))
        ts = torch.cat([ts, torch.tensor([end], dtype=torch.float64)]) if end < float(ts[-1]) else ts
    else:
        sig = torch.as_tensor(sigmas).to(torch.float64).cpu()
        keep = torch.cat([torch.tensor([True]), sig[1:] != sig[:-1]])  # Heun-style repeated sigmas
        ts = sig if isinstance(schedule, RectifiedFlow) else sigma_times(sig, schedule)
        # the timestep fed at each evaluation (repeated sigmas are evaluated with their own timestep)
        pairs = list(zip(ts[: len(timesteps)].tolist(), timesteps.tolist()))
        ts = ts[keep]
    timesteps_of.table.update({t: float(c) for t, c in pairs})
    return check_grid(ts)


def from_diffusers(model, scheduler_or_config, *, dtype: torch.dtype | None = None,
                   clip: bool = True) -> DiffusersBridge:
    """A diffusers network (``UNet2DModel``, ``UNet2DConditionModel``, a transformer, ...) with its
    scheduler (an instance, its config dict, or a local ``from_pretrained`` folder) as a sdeflow
    denoiser and grid. ``dtype``: the network's dtype if it differs from the state's; ``clip=False``
    ignores the config's ``clip_sample`` / ``thresholding`` (applied to ``x_hat`` by default, as the
    scheduler would)."""
    s = _scheduler(scheduler_or_config)
    cfg = s.config
    schedule = schedule_from_scheduler(s)
    edm = isinstance(schedule, EDM)
    if isinstance(schedule, RectifiedFlow):
        pred = "flow_prediction"
    else:
        pred = cfg.get("prediction_type", "epsilon")
    if pred not in PREDICTION_TYPES or (edm and pred not in ("epsilon", "v_prediction")):
        raise ValueError(f"unsupported prediction_type {pred!r}; allowed: "
                         f"{'epsilon, v_prediction (EDM)' if edm else ', '.join(PREDICTION_TYPES)}")
    times = NetworkTimesteps(schedule, int(cfg.get("num_train_timesteps", 1000)), edm=edm)
    # EDM's schedulers precondition every prediction type; their v_prediction is the output with c_out negated
    parameterization = "edm" if edm else PREDICTION_TYPES[pred]
    network = _Network(model, sign=-1.0 if edm and pred == "v_prediction" else 1.0)
    inner = ModelDenoiser(network, schedule, parameterization, time_input=times, dtype=dtype)
    den: Denoiser = inner
    settings = ClipSample.settings(cfg)
    if settings is not None and clip is not False:
        den = ClipSample(inner, **settings)
    return DiffusersBridge(den, inner, s, times)


def to_sigma_space(x: torch.Tensor, schedule: Schedule, t: float) -> torch.Tensor:
    """diffusers' sigma-space state ``x_t / alpha_t`` (Euler, Heun, LMS, k-diffusion)."""
    return x / float(schedule.alpha(t))


def from_sigma_space(y: torch.Tensor, schedule: Schedule, t: float) -> torch.Tensor:
    """sdeflow's state ``x_t = alpha_t y`` from a sigma-space state."""
    return y * float(schedule.alpha(t))


__all__ = ["DiffusersBridge", "ClipSample", "PREDICTION_TYPES", "diffusers_class", "from_diffusers", "recognize",
           "schedule_from_scheduler", "scheduler_grid", "from_sigma_space", "to_sigma_space"]

