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
from dataclasses import dataclass
from typing import Any

import torch

from ..denoisers import Denoiser, ModelDenoiser, unwrap_output
from ..grids import check_grid, sigma_times
from ..schedules import DiscreteVP, RectifiedFlow, Schedule
from ..shapes import as_time

#: diffusers' ``prediction_type`` -> sdeflow's parameterization.
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0", "flow_prediction": "velocity"}


def _require_diffusers():
    try:
        import diffusers
    except ImportError as err:  # pragma: no cover - exercised only without the optional dependency
        raise ImportError("from_diffusers needs diffusers: pip install diffusers (or sdeflow[peers])") from err
    return diffusers


def _scheduler(scheduler_or_config):
    """A private scheduler instance from a scheduler, its config, or a local folder holding one."""
    d = _require_diffusers()
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
    name = config.get("_class_name")
    cls = getattr(d, name, None) if name else d.DDPMScheduler
    if cls is None:
        raise ValueError(f"diffusers has no scheduler class {name!r}")
    return cls.from_config(config)


def _is_flow(scheduler) -> bool:
    cfg = scheduler.config
    return ("FlowMatch" in type(scheduler).__name__ or bool(cfg.get("use_flow_sigmas", False))
            or cfg.get("prediction_type") == "flow_prediction")


def schedule_from_scheduler(scheduler_or_config) -> Schedule:
    """The forward process of a diffusers scheduler (or its config): ``DiscreteVP`` over its
    ``alphas_cumprod``, or ``RectifiedFlow`` for flow matching. A zero-terminal-SNR schedule
    (``rescale_betas_zero_snr``) has ``alphas_cumprod[-1] = 0``, infinite logSNR; as diffusers' Euler
    scheduler does, that value is raised to ``2**-24`` (or half the previous value if that is smaller)."""
    s = _scheduler(scheduler_or_config)
    if _is_flow(s):
        return RectifiedFlow()
    ac = getattr(s, "alphas_cumprod", None)
    if ac is None:
        raise ValueError(f"{type(s).__name__} has neither alphas_cumprod nor flow sigmas: its process is not "
                         "supported (EDM-style schedulers: use sdeflow.schedules.EDM with the k-diffusion adapter)")
    ac = torch.as_tensor(ac, dtype=torch.float64).clone()
    if float(ac[-1]) <= 0:
        ac[-1] = min(2.0 ** -24, 0.5 * float(ac[-2]))
    return DiscreteVP(ac)


class _Timesteps:
    """The timestep diffusers feeds the network at sdeflow time ``t``: exact values registered by
    :meth:`DiffusersBridge.grid`, else diffusers' own conversion (``1000 t`` for flow models; for
    discrete models the training index, interpolated linearly in ``log sigma`` between indices)."""

    def __init__(self, schedule: Schedule, num_train: int):
        self.table: dict[float, float] = {}
        self.num_train = num_train
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

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, c, **cond):
        out = unwrap_output(self.model(x, c, **cond))
        if out.ndim == x.ndim and out.shape[1] == 2 * x.shape[1] and out.shape[2:] == x.shape[2:]:
            out = out[:, : x.shape[1]]  # learned variance (learned / learned_range): the mean half
        return out


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
    timesteps_of: _Timesteps

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
        s = self.scheduler
        s.set_timesteps(n, **set_timesteps_kwargs)
        timesteps = torch.as_tensor(s.timesteps).to(torch.float64).cpu()
        sigmas = getattr(s, "sigmas", None)
        sch = self.schedule
        if sigmas is None:  # DDIM / DDPM / PNDM: integer timesteps, then the scheduler's final alpha
            ts = sch.t_from_index(timesteps)
            final = float(getattr(s, "final_alpha_cumprod", torch.tensor(1.0)))
            end = 0.0 if final >= 1.0 else float(sch.t_from_index(0.0))
            pairs = list(zip(ts.tolist(), timesteps.tolist()))
            ts = torch.cat([ts, torch.tensor([end], dtype=torch.float64)]) if end < float(ts[-1]) else ts
        else:
            sig = torch.as_tensor(sigmas).to(torch.float64).cpu()
            keep = torch.cat([torch.tensor([True]), sig[1:] != sig[:-1]])  # Heun-style repeated sigmas
            ts = sig if self.flow else sigma_times(sig, sch)
            # the timestep fed at each evaluation (repeated sigmas are evaluated with their own timestep)
            pairs = list(zip(ts[: len(timesteps)].tolist(), timesteps.tolist()))
            ts = ts[keep]
        self.timesteps_of.table.update({t: float(c) for t, c in pairs})
        self.model._cache_for = ()  # the time inputs of these times may have been cached before
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
    if isinstance(schedule, RectifiedFlow):
        pred = "flow_prediction"
    else:
        pred = cfg.get("prediction_type", "epsilon")
    if pred not in PREDICTION_TYPES:
        raise ValueError(f"unsupported prediction_type {pred!r}; allowed: {', '.join(PREDICTION_TYPES)}")
    times = _Timesteps(schedule, int(cfg.get("num_train_timesteps", 1000)))
    inner = ModelDenoiser(_Network(model), schedule, PREDICTION_TYPES[pred], time_input=times, dtype=dtype)
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


__all__ = ["DiffusersBridge", "ClipSample", "PREDICTION_TYPES", "from_diffusers", "schedule_from_scheduler",
           "from_sigma_space", "to_sigma_space"]

