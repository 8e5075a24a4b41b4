"""Wrap any network or plain function into a :class:`Denoiser`.

``ModelDenoiser(net, schedule, "eps", time_input="index")`` calls
``net(in(t) * x_t, c(t), **cond)`` and maps the output to ``x_hat`` with the parameterization's
affine view. ``c(t)`` is the time input the network was trained with:

- ``"t"``: continuous time in [0, 1];
- ``"sigma"``: the noise level ``sigma / alpha`` (k-diffusion / EDM convention);
- ``"logsnr"``: ``log(alpha / sigma)``;
- ``"index"``: the integer training index of a discrete schedule, ``t N - 1`` (fractional between nodes);
- ``"edm"``: EDM's ``c_noise = log(sigma / alpha) / 4``;
- ``"t1000"``: ``1000 t`` (continuous-time models trained on a 0..1000 scale);
- or any callable ``(schedule, t) -> tensor``.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..parameterizations import Parameterization, affine, as_parameterization
from ..schedules import DiscreteVP, Schedule
from ..shapes import Time, as_time, expand_as_batch
from .base import Denoiser


def _index(schedule, t):
    if not isinstance(schedule, DiscreteVP):
        raise ValueError("time_input='index' needs a DiscreteVP schedule (the index is its training step)")
    return schedule.index_from_t(t)


TIME_INPUTS: dict[str, Callable[[Schedule, torch.Tensor], torch.Tensor]] = {
    "t": lambda schedule, t: t,
    "sigma": lambda schedule, t: schedule.noise_to_signal(t),
    "logsnr": lambda schedule, t: schedule.logsnr(t),
    "index": _index,
    "edm": lambda schedule, t: 0.25 * torch.log(schedule.noise_to_signal(t)),
    "t1000": lambda schedule, t: 1000.0 * t,
}


def unwrap_output(out):
    """A network's output tensor: diffusers' output objects (``UNet2DOutput`` and the like) carry it as
    ``.sample``, and ``return_dict=False`` as the first element of a tuple."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "sample"):
        out = out.sample
    elif isinstance(out, (tuple, list)) and out:
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the network returned {type(out).__name__}, not a tensor (nor an output object with .sample)")
    return out


def checked_output(out, x_t: torch.Tensor) -> torch.Tensor:
    """The network's output tensor (:func:`unwrap_output`), refused unless it has the state's shape (a
    network returning one sample, a scalar or another size would otherwise broadcast into finite garbage)."""
    out = unwrap_output(out)
    if out.shape != x_t.shape:
        raise ValueError(f"the network returned shape {tuple(out.shape)} for an input of shape {tuple(x_t.shape)}: "
                         "a denoiser's network must return one output per input value, shaped like its input")
    return out


class ModelDenoiser(Denoiser):
    """A network or function with its schedule, parameterization and time input.

    Args:
        model: ``model(x, c, **cond) -> F``; an ``nn.Module`` is registered as a submodule. ``c`` is a
            ``(B,)`` tensor reused across calls at the same time: the model must not modify it in place.
            ``F`` must have the input's shape; diffusers' output objects are unwrapped (``.sample``).
        schedule: the forward process the model was trained on.
        parameterization: a :class:`~sdeflow.parameterizations.Parameterization` or its name.
        time_input: how the model expects time (see the module docstring).
        dtype: the network's dtype (e.g. ``torch.bfloat16``); inputs are cast to it and the output
            back to the state's dtype before the affine map. Default: the dtype of the network's weights
            (an ``nn.Module`` with floating-point weights), else the state's dtype.
    """

    def __init__(self, model: Callable, schedule: Schedule, parameterization: Parameterization | str = "eps",
                 *, time_input: str | Callable = "t", dtype: torch.dtype | None = None):
        super().__init__(schedule)
        if not callable(model):
            raise TypeError("model must be callable: model(x, time, **cond) -> output")
        self.model = model
        self.parameterization = as_parameterization(parameterization)
        if isinstance(time_input, str):
            if time_input not in TIME_INPUTS:
                raise ValueError(f"unknown time_input {time_input!r}; allowed: {', '.join(TIME_INPUTS)} or a callable")
            time_input = TIME_INPUTS[time_input]
        if time_input is _index:
            _index(schedule, 0.5)  # fail at construction, not mid-sampling
        self.time_input = time_input
        self.dtype = dtype
        # the network's own dtype when it has weights (a float64 or fp16 state meets a float32 network cast
        # to its dtype, not with a dtype error): one weight is kept, whose dtype follows module.to()
        weights = [w for w in model.parameters() if w.is_floating_point()] if isinstance(model, torch.nn.Module) else []
        self._weight = tuple(weights[:1])
        self._cache: dict[float, tuple[float, float, float, float]] = {}
        self._cache_for: tuple = ()  # the (schedule, parameterization, time input) the cache holds
        self._times: dict[tuple, torch.Tensor] = {}

    def coefficients(self, t: float) -> tuple[float, float, float, float]:
        """``(in, skip, out, time input)`` at a scalar time, as Python floats, cached per time: the
        sampling loop passes the same grid times every run, so a step costs no scalar arithmetic.
        The cache is emptied when the schedule, parameterization or time input is replaced."""
        owner = (self.schedule, self.parameterization, self.time_input)
        if len(self._cache_for) != 3 or any(a is not b for a, b in zip(owner, self._cache_for)):
            self._cache.clear()
            self._cache_for = owner
        cached = self._cache.get(t)
        if cached is None:
            p, sched, tt = self.parameterization, self.schedule, as_time(t)
            skip, out = p.coefficients(sched, tt)
            cached = (float(p.input_scale(sched, tt)), float(skip), float(out), float(self.time_input(sched, tt)))
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[t] = cached
        return cached

    def _time_tensor(self, c: float, batch: int, dtype, device) -> torch.Tensor:
        """The network's time input ``c`` for a batch, cached like the coefficients (a fresh
        ``torch.full`` per step is a measurable share of a cheap step)."""
        key = (c, batch, dtype, device)
        out = self._times.get(key)
        if out is None:
            if len(self._times) > 4096:
                self._times.clear()
            out = self._times[key] = torch.full((batch,), c, dtype=dtype, device=device)
        return out

    def network_dtype(self, x_t: torch.Tensor) -> torch.dtype:
        """The dtype the network is fed: ``dtype``, else its weights', else the state's."""
        return self.dtype or (self._weight[0].dtype if self._weight else x_t.dtype)

    def time_dtype(self, x_t: torch.Tensor) -> torch.dtype:
        """The dtype of the network's time input: full precision (bf16 cannot tell index 998 from 999;
        the network casts it), float64 for a float64 network."""
        return torch.float64 if self.network_dtype(x_t) == torch.float64 else torch.float32

    def forward(self, x_t, t, **cond):
        net_dtype = self.network_dtype(x_t)
        c_dtype = torch.float64 if net_dtype == torch.float64 else torch.float32
        # A scalar time takes the cached-float path; a traced program (torch.compile) takes the tensor path,
        # so a grid's times are inputs of the program, not constants it is specialised on.
        # A time that carries a gradient (a grid fitted through autograd) takes the tensor path too.
        if isinstance(t, float) or (isinstance(t, torch.Tensor) and t.ndim == 0 and t.device.type == "cpu"
                                    and not t.requires_grad and not torch.compiler.is_compiling()):
            scale, skip, out, c = self.coefficients(float(t))
            x_in = x_t if scale == 1.0 else x_t * scale
            if x_in.dtype != net_dtype:
                x_in = x_in.to(net_dtype)
            f = checked_output(self.model(x_in, self._time_tensor(c, x_t.shape[0], c_dtype, x_t.device), **cond), x_t)
            if f.dtype != x_t.dtype:
                f = f.to(x_t.dtype)
            if skip == 0.0:
                return f if out == 1.0 else f * out
            # skip x + out F in two passes, factoring out the larger coefficient (no overflow in fp16)
            if abs(skip) >= abs(out):
                x_hat = torch.add(x_t, f, alpha=out / skip)
                return x_hat if skip == 1.0 else x_hat.mul_(skip)
            return torch.add(f, x_t, alpha=skip / out).mul_(out)
        t = as_time(t, device=x_t.device)
        return self.parameterization.to_x_hat(self.network_output(x_t, t, **cond).to(x_t.dtype), x_t, self.schedule, t)

    def velocity_coefficients(self, t: Time) -> tuple[torch.Tensor, torch.Tensor]:
        """``(c_x, c_F)`` with the probability-flow field ``dx_t/dt = c_x x_t + c_F F`` in terms of the
        network output ``F`` (float64): ``alpha' x_hat + sigma' eps_hat`` through the parameterization's
        affine views, finite at clean data when the network predicts the noise in some form and
        ``sigma'`` is finite there (see :meth:`ode_velocity`)."""
        p, sched, t = self.parameterization, self.schedule, as_time(t)
        skip, out = p.coefficients(sched, t)
        e_x, e_f = p.eps_coefficients(sched, t)
        da, ds = sched.d_alpha(t), sched.d_sigma(t)
        at_data = sched.sigma(t) == 0  # x_hat = x_t / alpha there, whatever skip * x_t + out * F computes
        skip, out = torch.where(at_data, 1.0 / sched.alpha(t), skip), torch.where(at_data, torch.zeros_like(out), out)
        return da * skip + ds * e_x, da * out + ds * e_f

    def has_ode_velocity(self, t: float) -> bool:
        """Everywhere ``sigma(t) > 0``; at clean data when the parameterization predicts the noise in some
        form (``eps``, ``v``, ``velocity``, ``edm``) and the schedule's ``sigma'`` is finite there
        (rectified flow, EDM, trigonometric; not VP, whose ``sigma ~ sqrt(t)``)."""
        if super().has_ode_velocity(t):
            return True
        return all(bool(torch.isfinite(c)) for c in self.velocity_coefficients(float(t)))

    def ode_velocity(self, x_t: torch.Tensor, t: Time, **cond) -> torch.Tensor:
        """The probability-flow field from the network's own output, ``c_x x_t + c_F F``
        (:meth:`velocity_coefficients`); at clean data it is the network's answer there (a velocity
        network's output itself), which ``x_hat = x_t`` cannot carry."""
        c_x, c_f = self.velocity_coefficients(t)
        if c_x.ndim == 0 and not torch.compiler.is_compiling() and not bool(torch.isfinite(c_x) & torch.isfinite(c_f)):
            raise ValueError(f"a {self.parameterization.name} network on {type(self.schedule).__name__} has no finite "
                             f"probability-flow velocity at t = {float(t):.6g} (sigma = 0): it does not predict the noise, "
                             "or sigma' is infinite there")
        f = self.network_output(x_t, t, **cond).to(x_t.dtype)
        return affine(c_x, x_t, c_f, f)

    @property
    def num_classes(self) -> int:
        """The classes of a class-conditional sdeflow network (its ``config``), 0 otherwise or when unknown."""
        config = getattr(self.model, "config", None)
        return config.get("num_classes", 0) if isinstance(config, dict) else 0

    def check_cond(self, x: torch.Tensor, cond: dict) -> None:
        """A label of a class-conditional sdeflow network must be a class ``0 .. num_classes - 1`` or
        ``num_classes`` (no label), one per sample or one for all."""
        label, classes = (cond or {}).get("label"), self.num_classes
        if label is None or not classes:
            return
        label = torch.as_tensor(label)
        if label.is_floating_point() or label.dtype == torch.bool:
            raise ValueError(f"label must hold integer classes, got a {label.dtype} tensor")
        if label.ndim > 1 or label.numel() not in (1, x.shape[0]):
            raise ValueError(f"label must be one class or one per sample ({x.shape[0]}), got shape {tuple(label.shape)}")
        bad = label[(label < 0) | (label > classes)]
        if bad.numel():
            raise ValueError(f"label {int(bad[0])} is not a class of this model: classes are 0..{classes - 1}, and "
                             f"{classes} means no label")

    def null_cond(self, cond: dict) -> dict:
        """The conditioning of the unconditional pass (classifier-free guidance) for sdeflow's
        networks: label ``num_classes``, the class that label dropout trained as "no label"."""
        classes = self.num_classes
        if not classes:
            raise ValueError("this network has no class labels, so it has no unconditional pass to guide with: "
                             "pass null= to the guided denoiser (the conditioning of the unconditional pass)")
        label = cond.get("label")
        if label is None:
            return {**cond, "label": None}
        label = torch.as_tensor(label)
        return {**cond, "label": torch.full(label.shape or (1,), classes, dtype=torch.long, device=label.device)}

    def network_output(self, x_t: torch.Tensor, t, **cond) -> torch.Tensor:
        """The raw network output ``F(in(t) x_t, c(t))`` at a scalar or per-sample ``(B,)`` time (what
        the training losses compare with their target), in the network's dtype."""
        t = as_time(t, device=x_t.device)
        p, sched = self.parameterization, self.schedule
        scale = expand_as_batch(p.input_scale(sched, t).to(x_t.dtype), x_t)
        c = self.time_input(sched, t)
        if c.ndim == 0:
            c = c.expand(x_t.shape[0])
        return checked_output(self.model((scale * x_t).to(self.network_dtype(x_t)), c.to(self.time_dtype(x_t)), **cond), x_t)
