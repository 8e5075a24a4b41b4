"""Any sdeflow sampler and grid as a diffusers scheduler, for existing diffusers pipelines::

    pipe.scheduler = SdeflowScheduler.from_config(pipe.scheduler.config, sampler="unipc-bh2", grid="logsnr")

The scheduler has diffusers' interface (``set_timesteps``, ``timesteps``, ``scale_model_input``,
``step``, ``init_noise_sigma``, ``order``, ``add_noise``, config save / load) and runs sdeflow's own
loop (:func:`sdeflow.sample`) underneath: ``timesteps`` lists every network evaluation of the
sampler on the grid (two per step for Heun, ...), as the timestep the network was trained with,
and ``step`` hands each network output to the loop and returns the state at which it wants the
next one (the final sample after the last). The loop runs in a helper thread that waits for those
outputs, so samplers with several stages per step need nothing special.

The state is sdeflow's ``x_t`` (for VP models the network input itself: ``scale_model_input`` is
the identity). A pipeline that edits the latents between steps (inpainting blends) is not
supported: the loop continues from its own state.
"""

from __future__ import annotations

import queue
import threading

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput

from ..denoisers import Denoiser
from ..noise import GeneratorNoise
from ..parameterizations import as_parameterization
from ..sampling import sample
from ..schedules import DiscreteVP, RectifiedFlow
from .diffusers import PREDICTION_TYPES, ClipSample, _Timesteps, clip_x_hat


def _registry():
    from .. import registry

    return registry


class _Cancelled(Exception):
    """The pipeline started over (``set_timesteps``) before the loop finished."""


class _Waiting(Denoiser):
    """The loop's denoiser: hands ``(x_t, t)`` to the pipeline and waits for the network's output."""

    def __init__(self, scheduler: "SdeflowScheduler"):
        super().__init__(scheduler.schedule)
        self.owner = scheduler

    def forward(self, x_t, t, **cond):
        own = self.owner
        own._requests.put(("eval", x_t, float(t)))
        reply = own._replies.get()
        if reply is None:
            raise _Cancelled()
        f = reply.to(x_t.dtype)
        x_hat = own.parameterization.to_x_hat(f, x_t, own.schedule, torch.as_tensor(float(t), dtype=torch.float64))
        return clip_x_hat(x_hat, **own._clip) if own._clip is not None else x_hat


class SdeflowScheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler backed by a sdeflow sampler (a name of ``sdeflow list``) and grid (a grid
    name). The schedule comes from the usual diffusers config keys (betas or flow matching), and
    ``clip_sample`` / ``thresholding`` act on ``x_hat`` as in diffusers; see the module docstring for
    how the loop is driven."""

    config_name = "scheduler_config.json"
    order = 1

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, prediction_type: str = "epsilon",
                 rescale_betas_zero_snr: bool = False, clip_sample: bool = False, clip_sample_range: float = 1.0,
                 thresholding: bool = False, dynamic_thresholding_ratio: float = 0.995, sample_max_value: float = 1.0,
                 sampler: str = "unipc-bh2", grid: str = "auto", seed: int | None = None):
        reg = _registry()
        if sampler not in reg.SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; allowed: {', '.join(reg.SAMPLERS)}")
        if grid not in reg.GRIDS:
            raise ValueError(f"unknown grid {grid!r}; allowed: {', '.join(reg.GRIDS)}")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction_type {prediction_type!r}; allowed: {', '.join(PREDICTION_TYPES)}")
        self.sampler = reg.SAMPLERS[sampler]()
        if getattr(self.sampler, "adaptive", False):
            raise ValueError(f"{sampler} chooses its steps from the state: a scheduler needs its timesteps in advance")
        if prediction_type == "flow_prediction":
            self.schedule = RectifiedFlow()
        else:
            from diffusers import DDPMScheduler

            from .diffusers import schedule_from_scheduler

            self.schedule = schedule_from_scheduler(DDPMScheduler(
                num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                beta_schedule=beta_schedule, trained_betas=trained_betas, rescale_betas_zero_snr=rescale_betas_zero_snr))
        self.parameterization = as_parameterization(PREDICTION_TYPES[prediction_type])
        self._clip = ClipSample.settings(self.config)  # x_hat clipped as diffusers clips it (or None)
        self._timesteps_of = _Timesteps(self.schedule, num_train_timesteps)
        self.ts = None
        self.timesteps = None
        self.eval_times: list[float] = []
        self.num_inference_steps = None
        self._worker = None
        self.init_noise_sigma = 1.0

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """From any diffusers scheduler's config (flow-matching configs give a rectified-flow model)."""
        config = dict(config or {})
        if "FlowMatch" in str(config.get("_class_name", "")) or config.get("use_flow_sigmas"):
            config["prediction_type"] = "flow_prediction"
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    # ------------------------------------------------------------------------------------ timesteps
    def set_timesteps(self, num_inference_steps: int, device=None, **unused):
        """Plan ``num_inference_steps`` steps of the sampler on the grid; ``timesteps`` lists the network
        timestep of every evaluation (found by running the loop once with a recording field)."""
        self._stop()
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
        reg = _registry()
        self.ts = reg.GRIDS[self.config.grid](num_inference_steps, self.schedule)
        self.num_inference_steps = num_inference_steps
        times: list[float] = []

        class Record(Denoiser):
            def forward(self, x_t, t, **cond):
                times.append(float(t))
                return torch.zeros_like(x_t)

        sample(Record(self.schedule), self.sampler, self.ts, torch.zeros(1, 1, dtype=torch.float64), check_finite=False)
        self.eval_times = times
        c = torch.stack([self._timesteps_of(self.schedule, t) for t in times]).to(torch.float32)
        self.timesteps = c.to(device) if device is not None else c
        t0 = float(self.ts[0])
        # the pipeline's latents are N(0, init_noise_sigma^2): sigma(t_0) for a flow, 1 (the VP prior) otherwise
        self.init_noise_sigma = float(self.schedule.sigma(t0)) if isinstance(self.schedule, RectifiedFlow) else 1.0

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        return sample

    # ------------------------------------------------------------------------------------ stepping
    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, *args, generator=None,
             return_dict: bool = True, **unused):
        """Give the loop the network output at its pending evaluation; returns the state of the next
        evaluation (``prev_sample``), or the final sample after the last one."""
        if self.ts is None:
            raise RuntimeError("call set_timesteps before step")
        if self._worker is None:
            self._start(sample, generator)
            kind, payload, _ = self._requests.get()  # the first evaluation is at the initial state
            if kind == "error":
                raise payload
        self._replies.put(model_output)
        kind, payload, _ = self._requests.get()
        if kind == "error":
            self._worker = None
            raise payload
        if kind == "done":
            self._worker = None
        out = payload
        return SchedulerOutput(prev_sample=out) if return_dict else (out,)

    def _start(self, x_init: torch.Tensor, generator):
        self._requests: queue.Queue = queue.Queue()
        self._replies: queue.Queue = queue.Queue()
        seed = self.config.seed
        noise = GeneratorNoise(generator if generator is not None else
                               (torch.Generator(device=x_init.device).manual_seed(seed) if seed is not None else None))
        denoiser, requests = _Waiting(self), self._requests

        def run():
            try:
                with torch.no_grad():
                    out = sample(denoiser, self.sampler, self.ts, x_init, noise=noise).x
                requests.put(("done", out, None))
            except _Cancelled:
                pass
            except BaseException as err:  # surfaced in the pipeline's thread by step()
                requests.put(("error", err, None))

        self._worker = threading.Thread(target=run, daemon=True)
        self._worker.start()

    def _stop(self):
        if self._worker is not None:
            self._replies.put(None)
            self._worker.join(timeout=10)
            self._worker = None

    # ------------------------------------------------------------------------------------ training-side helpers
    def _t_of(self, timesteps) -> torch.Tensor:
        c = torch.as_tensor(timesteps, dtype=torch.float64).cpu()
        if isinstance(self.schedule, DiscreteVP):
            return self.schedule.t_from_index(c)
        return c / self.config.num_train_timesteps

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """``x_t = alpha_t x + sigma_t noise`` at the given network timesteps (img2img, SDEdit)."""
        t = self._t_of(timesteps).reshape(-1)
        shape = (-1, *([1] * (original_samples.ndim - 1)))
        a = self.schedule.alpha(t).reshape(shape).to(original_samples.device, original_samples.dtype)
        s = self.schedule.sigma(t).reshape(shape).to(original_samples.device, original_samples.dtype)
        return a * original_samples + s * noise

    def __len__(self):
        return self.config.num_train_timesteps
