"""Any sdeflow sampler and grid as a diffusers scheduler, for existing diffusers pipelines::

    pipe.scheduler = SdeflowScheduler.from_config(pipe.scheduler.config)          # sdeflow's best for the budget
    pipe.scheduler = SdeflowScheduler.from_config(pipe.scheduler.config, sampler="unipc-bh2", grid="logsnr")

The scheduler has diffusers' interface (``set_timesteps`` with ``num_inference_steps``, ``timesteps=``
or ``sigmas=``, ``timesteps``, ``sigmas``, ``scale_model_input``, ``step``, ``set_begin_index``,
``init_noise_sigma``, ``add_noise`` / ``scale_noise``, ``betas`` / ``alphas`` / ``alphas_cumprod``,
config save / load) and takes sdeflow's own steps (the sampler's ``step`` on its planned grid, as
:func:`sdeflow.sample` does). ``timesteps`` lists every network evaluation of the sampler on the grid
(two per step for Heun, ...), as the timestep the network was trained with, and ``step`` takes the
network output at the pending evaluation and returns the state at which the next one is wanted (the
final sample after the last).

``step`` is a function of what it is given, in the caller's thread, with no loop running behind it:
a step of the sampler is recomputed from its start state and the outputs given so far until it asks
for an evaluation it has not been given (a few multiply-adds per evaluation; noise drawn inside a
step is kept for the step). So:

- the ``sample`` passed at the first evaluation of each step is the state that step starts from: a
  pipeline that edits the latents between steps (``callback_on_step_end``, inpainting blends) is
  followed (an edit of an intermediate stage's state, Heun's predictor say, is not);
- gradients flow from ``prev_sample`` to ``model_output`` when autograd is on;
- img2img / SDEdit: the first ``step`` at ``timesteps[k]`` (or after ``set_begin_index(k)``) starts the
  sampler fresh from that step's time, as diffusers' multistep schedulers restart their history.

The process comes from the config's keys (:func:`~sdeflow.adapters.diffusers.recognize`): betas
(``DiscreteVP``), flow matching (``RectifiedFlow``; ``shift`` warps any grid as the model was trained)
or EDM (``sigma_min``, ``sigma_max``, ``sigma_data``: EDM's preconditioning and time input). A config
that is none of these is refused. ``grid="scheduler"`` reproduces the grid of the scheduler the config
came from (its ``timestep_spacing``, ``steps_offset``, ``use_karras_sigmas``, ``final_sigmas_type``,
``set_alpha_to_one``, ``shift``, ... are kept in the config), so a switch can start from identical
results; the default sampler and grid are sdeflow's best for the budget (``sdeflow list``).
"""

from __future__ import annotations

import math
import numbers

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput

from ..denoisers import ModelDenoiser
from ..grids import GRIDS, check_grid, shift_grid
from ..noise import GeneratorNoise
from ..parameterizations import as_parameterization
from ..samplers import SAMPLERS, default_sampling
from ..sampling import planned
from ..schedules import EDM, DiscreteVP, RectifiedFlow
from .step_replay import Given, Pending, Replay, StepRun
from .diffusers import (PREDICTION_TYPES, ClipSample, NetworkTimesteps, diffusers_class, recognize, scheduler_grid,
                        schedule_from_scheduler)


#: The diffusers scheduler a process's config is taken to come from when it names none (``grid="scheduler"``).
DEFAULT_SOURCE = {"vp": "DPMSolverMultistepScheduler", "flow": "FlowMatchEulerDiscreteScheduler",
                  "edm": "EDMEulerScheduler"}


class SdeflowScheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler backed by a sdeflow sampler and grid (see the module docstring).

    ``sampler``: a name of ``sdeflow list`` or ``"auto"`` (sdeflow's default for the process and the
    budget ``num_inference_steps``); ``grid``: a grid name, ``"scheduler"`` (the source scheduler's own
    grid) or None (the sampler's default). ``process``: ``"vp"``, ``"flow"`` or ``"edm"`` (default: read
    from the other keys). The remaining keys are diffusers' own, read as its schedulers read them."""

    config_name = "scheduler_config.json"
    order = 1
    _compatibles = ["DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
                    "HeunDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DPMSolverSinglestepScheduler",
                    "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "DEISMultistepScheduler",
                    "UniPCMultistepScheduler", "DPMSolverSDEScheduler", "DPMSolverMultistepScheduler"]

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, prediction_type: str = "epsilon",
                 rescale_betas_zero_snr: bool = False, clip_sample: bool = False, clip_sample_range: float = 1.0,
                 thresholding: bool = False, dynamic_thresholding_ratio: float = 0.995, sample_max_value: float = 1.0,
                 sampler: str = "auto", grid: str | None = None, seed: int | None = None, process: str | None = None,
                 timestep_spacing: str | None = None, steps_offset: int = 0,
                 set_alpha_to_one: bool | None = None, final_sigmas_type: str | None = None,
                 use_karras_sigmas: bool = False, use_exponential_sigmas: bool = False, use_beta_sigmas: bool = False,
                 shift: float = 1.0, use_dynamic_shifting: bool = False, base_shift: float | None = None,
                 max_shift: float | None = None, base_image_seq_len: int | None = None,
                 max_image_seq_len: int | None = None, shift_terminal: float | None = None,
                 time_shift_type: str | None = None, invert_sigmas: bool = False, sigma_min: float | None = None,
                 sigma_max: float | None = None, sigma_data: float | None = None, rho: float | None = None,
                 sigma_schedule: str | None = None):
        if sampler != "auto" and sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; allowed: auto, {', '.join(SAMPLERS)}")
        if grid is not None and grid != "scheduler" and grid not in GRIDS:
            raise ValueError(f"unknown grid {grid!r}; allowed: scheduler, {', '.join(GRIDS)}")
        if sampler != "auto" and SAMPLERS[sampler]().adaptive:
            raise ValueError(f"{sampler} chooses its steps from the state: a scheduler needs its timesteps in advance")
        process = process or ("flow" if prediction_type == "flow_prediction" else "edm" if sigma_data is not None
                              else "vp")
        if process not in DEFAULT_SOURCE:
            raise ValueError(f"unknown process {process!r}; allowed: {', '.join(DEFAULT_SOURCE)}")
        if process == "edm":
            if prediction_type not in ("epsilon", "v_prediction"):
                raise ValueError(f"EDM schedulers take prediction_type epsilon or v_prediction, got {prediction_type!r}")
            self.schedule = EDM(sigma_max=float(sigma_max or 80.0), sigma_min=float(sigma_min or 0.002),
                                sigma_data=float(sigma_data or 0.5))
            self.parameterization = as_parameterization("edm")
        else:
            if prediction_type not in PREDICTION_TYPES:
                raise ValueError(f"unknown prediction_type {prediction_type!r}; allowed: {', '.join(PREDICTION_TYPES)}")
            if process == "flow":
                self.schedule = RectifiedFlow()
            else:
                from diffusers import DDPMScheduler

                self.schedule = schedule_from_scheduler(DDPMScheduler(
                    num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                    beta_schedule=beta_schedule, trained_betas=trained_betas,
                    rescale_betas_zero_snr=rescale_betas_zero_snr))
            self.parameterization = as_parameterization(PREDICTION_TYPES[prediction_type])
        self.process = process
        self._sign = -1.0 if process == "edm" and prediction_type == "v_prediction" else 1.0
        self._clip = ClipSample.settings(self.config)  # x_hat clipped as diffusers clips it (or None)
        self._timesteps_of = NetworkTimesteps(self.schedule, num_train_timesteps, edm=process == "edm")
        self.ts = self.timesteps = self.sigmas = self.num_inference_steps = None
        self.eval_times: list[float] = []
        self._begin_index = self._run = None
        self.init_noise_sigma = 1.0
        self.sampler = None if sampler == "auto" else SAMPLERS[sampler]()

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """From any diffusers scheduler's config (or the scheduler itself): its process recognised from its
        keys (flow matching, EDM or betas; see :func:`~sdeflow.adapters.diffusers.recognize`), anything
        else refused."""
        if hasattr(config, "set_timesteps") and hasattr(config, "config"):  # a scheduler instance: its exact class
            config = {**config.config, "_class_name": type(config).__name__}
        config = dict(config or {})
        source = config.get("_source")
        if config.get("_class_name") != cls.__name__:
            name, process = recognize(config)
            # the scheduler the config came from, which grid="scheduler" rebuilds (a private key: the config
            # stays what diffusers' compatible schedulers round-trip)
            flow_grid = "FlowMatch" in name or bool(config.get("use_flow_sigmas"))
            source = name if process != "flow" or flow_grid else None
            if process == "flow":
                config["prediction_type"] = "flow_prediction"
                if config.get("use_flow_sigmas") and "flow_shift" in config:
                    config["shift"] = config["flow_shift"]
            elif process == "edm":  # the sigmas define the process: kept even where EDM's defaults
                keys = ("sigma_min", "sigma_max", "sigma_data")
                config.update({k: config.get(k, v) for k, v in zip(keys, (0.002, 80.0, 0.5))}, process="edm")
                config["_use_default_values"] = [k for k in config.get("_use_default_values", []) if k not in keys]
        made = super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)
        scheduler = made[0] if return_unused_kwargs else made
        if source is not None:
            scheduler.register_to_config(_source=source)
        return made

    # ------------------------------------------------------------------------------------ the process
    def _ac(self) -> torch.Tensor:
        if not isinstance(self.schedule, DiscreteVP):
            raise AttributeError(f"a {self.process} process has no betas or alphas_cumprod")
        return self.schedule.alphas_cumprod.to(torch.float32)

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """``prod_{m <= n} alpha_m`` of the training steps (float32, as diffusers' schedulers hold it)."""
        return self._ac()

    @property
    def alphas(self) -> torch.Tensor:
        ac = self.schedule.alphas_cumprod.to(torch.float64) if isinstance(self.schedule, DiscreteVP) else self._ac()
        return torch.cat([ac[:1], ac[1:] / ac[:-1]]).to(torch.float32)

    @property
    def betas(self) -> torch.Tensor:
        return 1.0 - self.alphas

    # ------------------------------------------------------------------------------------ timesteps
    def _source_scheduler(self):
        """The diffusers scheduler the config came from (or the process's usual one), for its grid."""
        cls = diffusers_class(self.config.get("_source") or DEFAULT_SOURCE[self.process])
        keys = {k: v for k, v in self.config.items() if v is not None and not k.startswith("_")}
        if self.process == "flow":
            keys.pop("prediction_type", None)
        return cls.from_config(keys)

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, timesteps=None, sigmas=None,
                      mu: float | None = None, **unused):
        """Plan the run: ``num_inference_steps`` steps of the sampler on its grid, or the grid the source
        scheduler makes of ``timesteps=`` (network timesteps) or ``sigmas=`` (noise levels; ``mu`` for
        dynamic shifting), as diffusers' ``retrieve_timesteps`` passes them. ``timesteps`` lists the network
        timestep of every evaluation."""
        if timesteps is not None and sigmas is not None:
            raise ValueError("give timesteps= or sigmas=, not both")
        custom = timesteps is not None or sigmas is not None
        if not custom:
            if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, numbers.Integral) \
                    or num_inference_steps < 1:
                raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
            num_inference_steps = int(num_inference_steps)
        name = self.config.sampler
        grid = self.config.grid
        if name == "auto":
            name, default_grid = default_sampling(self.schedule, num_inference_steps or 10)
            grid = grid or default_grid
        self.sampler, grid = SAMPLERS[name](), grid or "auto"
        if custom or grid == "scheduler":
            kw = {k: v for k, v in (("timesteps", timesteps), ("sigmas", sigmas), ("mu", mu)) if v is not None}
            self.ts = scheduler_grid(self._source_scheduler(), self.schedule, self._timesteps_of,
                                     None if custom else num_inference_steps, **kw)
        else:
            self.ts = GRIDS[grid](num_inference_steps, self.schedule)
            if self.process == "flow" and self.config.shift != 1.0:  # the resolution shift the model was trained for
                self.ts = check_grid(shift_grid(self.ts, float(self.config.shift)))
        plan = planned(self.sampler, self.schedule, self.ts)
        self._plan = plan
        self.num_inference_steps = len(plan.t)
        self.eval_times, self._eval_step = self._evaluations(plan)
        c = torch.stack([self._timesteps_of(self.schedule, t) for t in self.eval_times]).to(torch.float32)
        self.timesteps = c.to(device) if device is not None else c
        level = self.schedule.noise_to_signal(torch.tensor(self.eval_times + [float(self.ts[-1])], dtype=torch.float64))
        self.sigmas = level.to(torch.float32)
        t0 = float(self.ts[0])
        # the pipeline's latents are N(0, init_noise_sigma^2): the VP prior's 1, a flow's sigma(t_0), EDM's
        # sqrt(sigma^2 + 1) (diffusers' EDM schedulers' choice)
        sigma0 = float(self.schedule.sigma(t0))
        self.init_noise_sigma = {"vp": 1.0, "flow": sigma0, "edm": math.sqrt(sigma0 ** 2 + 1.0)}[self.process]
        self._begin_index = self._run = None

    def _evaluations(self, plan) -> tuple[list[float], list[tuple[int, bool]]]:
        """Every evaluation's time and ``(step, whether it is at the step's start state)``, by one run of
        the steps that records them."""
        times, where = [], []
        x, state = torch.zeros(1, 1, dtype=torch.float64), None
        step = {"i": 0}

        class Record:
            last = None

            def __call__(self, x_j, t):
                times.append(float(t))
                where.append((step["i"], x_j is x))
                return torch.zeros_like(x_j)

            def ode_velocity(self, x_j, t):
                return self(x_j, t)

        state = self.sampler.init_state(x, plan)
        field = Record()
        for i in range(len(plan.t)):
            step["i"] = i
            x, state = self.sampler.step(field, x, i, plan, state, lambda draw=0, span=None: torch.zeros_like(x))
        return times, where

    def set_begin_index(self, begin_index: int = 0):
        """Start the next run at evaluation ``begin_index`` of :attr:`timesteps` (img2img pipelines call
        this); it must be the first evaluation of a step."""
        self._begin_index = int(begin_index)

    @property
    def begin_index(self):
        return self._begin_index

    @property
    def step_index(self):
        """The evaluation (an index of :attr:`timesteps`) the next :meth:`step` call answers (None before the first)."""
        return None if self._run is None else self._run.first + self._run.given

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """The network's input: the state itself (VP, flows), ``c_in x`` for EDM's preconditioning."""
        if self.process != "edm":
            return sample
        t = self._pending_time(timestep)
        return sample * float(self.parameterization.input_scale(self.schedule, torch.tensor(t, dtype=torch.float64)))

    def _pending_time(self, timestep) -> float:
        if self._run is not None and self._run.pending_t is not None:
            return self._run.pending_t
        return self.eval_times[self._index_of(timestep)]

    def _index_of(self, timestep) -> int:
        """The evaluation whose network timestep is ``timestep`` (the first of equal ones), else 0."""
        if timestep is None or self.timesteps is None:
            return 0
        value = float(torch.as_tensor(timestep).reshape(-1)[0])
        hits = (self.timesteps.cpu().double() - value).abs() <= 1e-4 * max(1.0, abs(value))
        return int(hits.nonzero()[0, 0]) if bool(hits.any()) else 0

    # ------------------------------------------------------------------------------------ stepping
    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, *args, generator=None,
             return_dict: bool = True, **unused):
        """Give the pending evaluation its network output; returns the state of the next evaluation
        (``prev_sample``), or the final sample after the last one (see the module docstring)."""
        if self.ts is None:
            raise RuntimeError("call set_timesteps before step")
        if self._run is None:
            self._begin(timestep, sample)
        run = self._run
        if run.done:
            raise RuntimeError("the sampling loop has finished; call set_timesteps to start another run")
        if not run.outputs and run.pending_at_start:
            run.x = sample  # the pipeline's state at the start of this step (edited or not)
        run.noise.source = GeneratorNoise(generator if generator is not None else self._generator(sample))
        run.outputs.append(model_output)
        run.given += 1
        out = self._advance()
        return SchedulerOutput(prev_sample=out) if return_dict else (out,)

    def _generator(self, like):
        seed = self.config.seed
        if seed is None:
            return None
        if getattr(self, "_seeded", None) is None:
            self._seeded = torch.Generator(device=like.device).manual_seed(seed)
        return self._seeded

    def _begin(self, timestep, sample):
        """The run starts at the step whose first evaluation is ``begin_index`` (or ``timestep``): at 0 on
        the planned grid, later on a fresh plan of the rest of the grid (img2img)."""
        j = self._begin_index if self._begin_index is not None else self._index_of(timestep)
        if not 0 <= j < len(self.eval_times):
            raise ValueError(f"begin index {j} is outside the {len(self.eval_times)} evaluations of this run")
        k, at_start = self._eval_step[j]
        if not at_start:  # the evaluation a corrector makes at the end of step k, which step k + 1 starts from
            if self.eval_times[j] != self._plan.s[k]:
                raise ValueError(f"evaluation {j} lies inside step {k} of {type(self.sampler).__name__}: a run can "
                                 "only begin at the first evaluation of a step")
            k += 1
        elif j > 0 and self._eval_step[j - 1][0] == k:
            raise ValueError(f"evaluation {j} lies inside step {k} of {type(self.sampler).__name__}: a run can "
                             "only begin at the first evaluation of a step")
        plan = self._plan if k == 0 else planned(self.sampler, self.schedule, self.ts[k:])
        plan.inplace = False
        self._run = StepRun(plan, sample, self.sampler)
        self._run.first = j
        self._seeded = None
        given = Given(self._sign)
        den = ModelDenoiser(given, self.schedule, self.parameterization, time_input="t")
        self._given, self._denoiser = given, (den if self._clip is None else ClipSample(den, **self._clip))

    def _advance(self) -> torch.Tensor:
        """Run the current step on the outputs given; at its end, the next steps until one asks for an
        evaluation. Returns the state of that evaluation, or the final sample."""
        run = self._run
        while True:
            run.noise.x = run.x
            field = Replay(self._denoiser, self._given, run.outputs)
            try:
                x, state = self.sampler.step(field, run.x, run.i, run.plan, run.state, run.noise)
            except Pending as p:
                run.pending_at_start, run.pending_t = p.x is run.x, p.t
                return p.x
            run.i, run.x, run.state, run.outputs = run.i + 1, x, state, []
            run.noise.kept.clear()
            if run.i == len(run.plan.t):
                run.done, run.pending_t = True, None
                return x

    # ------------------------------------------------------------------------------------ training-side helpers
    def _t_of(self, timesteps) -> torch.Tensor:
        c = torch.as_tensor(timesteps, dtype=torch.float64).cpu()
        if isinstance(self.schedule, DiscreteVP):
            return self.schedule.t_from_index(c)
        if self.process == "edm":  # c_noise = log(sigma) / 4
            return torch.exp(4.0 * c) / self.schedule.sigma_max
        return c / self.config.num_train_timesteps

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """``x_t = alpha_t x + sigma_t noise`` at the given network timesteps (img2img, SDEdit)."""
        t = self._t_of(timesteps).reshape(-1)
        shape = (-1, *([1] * (original_samples.ndim - 1)))
        a = self.schedule.alpha(t).reshape(shape).to(original_samples.device, original_samples.dtype)
        s = self.schedule.sigma(t).reshape(shape).to(original_samples.device, original_samples.dtype)
        return a * original_samples + s * noise

    def scale_noise(self, sample: torch.Tensor, timestep, noise: torch.Tensor) -> torch.Tensor:
        """diffusers' flow-matching name of :meth:`add_noise` (``(1 - t) x + t noise``)."""
        return self.add_noise(sample, noise, timestep)

    def __len__(self):
        return self.config.num_train_timesteps
