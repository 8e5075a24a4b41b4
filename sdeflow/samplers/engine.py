"""Two engines that run any explicit solver whose update is linear in the state and the model outputs.

- :class:`Multistep`: ``x_s = c_x x + c_hat x_hat + sum_j c_j D_{i-j}`` over stored outputs ``D``
  (``x_hat`` or ``eps_hat``, the method's form), with an optional UniC corrector that reuses the next
  step's evaluation (no extra NFE).
- :class:`SingleStep`: stages ``x^(j) = c_x x + sum_l a_jl D_l`` evaluated at times ``tau_j``, then
  ``x_s = c_x x + sum_l b_l D_l`` (Runge-Kutta and DPM-Solver single-step methods).

Samplers subclass one engine and only compute their coefficients, as the named records of
:mod:`.base` (:class:`~.base.Weights`, :class:`~.base.Tableau` of :class:`~.base.Stage` s); the engine
owns the loop body, the history and the NFE count. Coefficients are Python floats computed once per grid, so a step is
a handful of fused ``add_(alpha=...)`` calls with no scalar kernels or device synchronisation.

Ends of infinite logSNR: a step to clean data (logSNR = +inf) is DDIM, the exact limit of every
method (the update is ``x_hat``). A data-form multistep step from pure noise (logSNR = -inf, t = 1
of rectified flow or of a zero-terminal-SNR schedule) keeps its order and corrector, with weights
at their large-step limits (see :data:`PURE_NOISE_SPAN`); the pure-noise output is then left out
of later steps' interpolation, where it would only contribute at order ``1/h``. Noise-form steps
whose factor ``alpha_s / alpha_t`` would blow up fall back to DDIM.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..schedules import Schedule
from .base import Corrector, Plan, Sampler, Stage, Weights, ode_coefficients
from .expint import unic_weights


#: Largest ``alpha_s / alpha_t`` a noise-form step may multiply the state by (see :meth:`StepInfo64.usable`).
MAX_ALPHA_RATIO = 1e4
# A data-form step from pure noise (logSNR = -inf) is planned from logSNR lam_s - PURE_NOISE_SPAN:
# its weights are continuous in the step size h and reach their h -> inf limits to float64
# round-off there (they differ by terms of order exp(-h)).
PURE_NOISE_SPAN = 40.0


def is_exactly(c, value: float) -> bool:
    """``c == value`` for a Python coefficient; a tensor coefficient (a compiled loop's) is never
    taken as a structural 0 or 1."""
    return not isinstance(c, torch.Tensor) and c == value


def axpy_(out: torch.Tensor, c, term: torch.Tensor) -> torch.Tensor:
    """``out += c term`` in place, for a Python or a 0-d tensor coefficient ``c``."""
    return out.add_(term, alpha=c) if not isinstance(c, torch.Tensor) else out.add_(term * c)


def lincomb(x: torch.Tensor, c_x, terms, inplace: bool = False) -> torch.Tensor:
    """``c_x x + sum c_j T_j`` over ``terms = [(c_j, T_j), ...]``, skipping zero coefficients.
    With ``inplace`` the result is written into ``x`` (which the caller no longer needs).
    Coefficients are Python floats, or 0-d tensors in a compiled fixed-grid loop (see
    :mod:`sdeflow.compiled`)."""
    if inplace and not is_exactly(c_x, 0):
        out = x if is_exactly(c_x, 1) else x.mul_(c_x)
        for c, term in terms:
            if not is_exactly(c, 0):
                axpy_(out, c, term)
        return out
    out = None if is_exactly(c_x, 0) else (x if is_exactly(c_x, 1) else x.mul(c_x))
    for c, term in terms:
        if is_exactly(c, 0):
            continue
        if out is None:
            out = term.mul(c)
        elif out is x:
            out = x.add(term * c) if isinstance(c, torch.Tensor) else x.add(term, alpha=c)
        else:
            axpy_(out, c, term)
    return out if out is not None else torch.zeros_like(x)


class Conversion(NamedTuple):
    """``D = k_x x + k_hat x_hat``: a model output ``x_hat`` in the form ``D`` a method works in (a change
    of variables, not a coefficient of the method)."""

    k_x: float
    k_hat: float
    STRUCTURE = ("k_x", "k_hat")


class CorrectorRow(NamedTuple):
    """A planned UniC correction: ``x_s^c = c_x x_t + sum_j c_hist[j] D_{i-j} + c_new D_new`` with ``D_new``
    the output at the predicted state, in the method's form by ``conv``."""

    c_x: float
    c_hist: tuple
    c_new: float
    conv: Conversion


class MultistepRow(NamedTuple):
    """One planned multistep step: ``x_s = c_x x_t + c_hat x_hat + sum_j c_hist[j] D_{i-j} + c_z z``, the
    current output converted to the method's form by ``conv``; ``corrector`` when UniC follows."""

    c_x: float
    c_hat: float
    c_hist: tuple
    conv: Conversion
    corrector: CorrectorRow | None
    c_z: float


class TableauRow(NamedTuple):
    """One planned single-step update: its stages, the final combination, and each stage's conversion
    (:data:`MODEL_VELOCITY` where a stage takes the model's own velocity)."""

    stages: tuple
    final: Weights
    convs: tuple


def native_conversions(form: str, schedule: Schedule, times) -> list[Conversion]:
    """The :class:`Conversion` at each of ``times`` for the form a method works in.

    ``data``: ``x_hat``; ``noise``: ``eps_hat = (x - alpha x_hat) / sigma``; ``velocity``: the
    probability-flow field ``p x + q x_hat`` in ``t``."""
    if form == "data":
        return [Conversion(0.0, 1.0)] * len(times)
    t = torch.as_tensor(times, dtype=torch.float64)
    a, s = schedule.alpha(t), schedule.sigma(t)
    k_x, k_hat = (1.0 / s, -a / s) if form == "noise" else ode_coefficients(schedule, t)
    return [Conversion(a, b) for a, b in zip(k_x.tolist(), k_hat.tolist())]


#: The conversion of a velocity-form stage on clean data (``sigma = 0``): ``x_hat = x`` there for every
#: model, so the field's noise term is lost; the stage asks the denoiser for its own probability-flow
#: velocity instead (:meth:`~sdeflow.denoisers.Denoiser.ode_velocity`; the plan lists those times in
#: ``Plan.velocity_at``, which :func:`sdeflow.sample` checks the denoiser can answer before it starts).
MODEL_VELOCITY = None


def to_native(x: torch.Tensor, x_hat: torch.Tensor, conv: tuple[float, float]) -> torch.Tensor:
    k_x, k_hat = conv
    return x_hat if is_exactly(k_x, 0) and is_exactly(k_hat, 1) else lincomb(x, k_x, [(k_hat, x_hat)])


def ddim_coefficients(a_t: float, s_t: float, a_s: float, s_s: float) -> tuple[float, float]:
    """DDIM ``x_s = (sigma_s/sigma_t) x + (alpha_s - alpha_t sigma_s/sigma_t) x_hat``: the exact
    first-order step, finite also when ``alpha_t = 0`` or ``sigma_s = 0`` (infinite logSNR)."""
    r = s_s / s_t
    return r, a_s - a_t * r


@dataclass(frozen=True)
class StepInfo64:
    """Float64 scalars of one step from ``t`` to ``s``."""

    t: float
    s: float
    a_t: float
    s_t: float
    a_s: float
    s_s: float
    lam_t: float
    lam_s: float
    pure_noise: bool = False  # planned from PURE_NOISE_SPAN below lam_s (see from_pure_noise)

    @property
    def h(self) -> float:
        return self.lam_s - self.lam_t

    @property
    def finite(self) -> bool:
        """Both ends have finite logSNR, so logSNR-based formulas apply."""
        return math.isfinite(self.lam_t) and math.isfinite(self.lam_s)

    def usable(self, form: str) -> bool:
        """Whether a higher-order formula in ``form`` is well posed on this step. It is not where
        a logSNR is infinite, nor for noise-form updates whose factor ``alpha_s / alpha_t`` would
        amplify the state's round-off (next to zero terminal SNR); DDIM, the exact first-order
        limit, takes such steps."""
        return self.finite and (form == "data" or self.a_s <= MAX_ALPHA_RATIO * self.a_t)

    def from_pure_noise(self, form: str) -> "StepInfo64":
        """A data-form step that starts at pure noise with its start moved to the finite logSNR
        ``lam_s - PURE_NOISE_SPAN``, where its weights equal their limits (see the constant); any
        other step unchanged."""
        if form != "data" or self.lam_t != -math.inf or not math.isfinite(self.lam_s):
            return self
        return dataclasses.replace(self, lam_t=self.lam_s - PURE_NOISE_SPAN, pure_noise=True)


def step_infos(schedule: Schedule, ts: torch.Tensor) -> list[StepInfo64]:
    a, s, lam = schedule.alpha(ts).tolist(), schedule.sigma(ts).tolist(), schedule.logsnr(ts).tolist()
    t = ts.tolist()
    return [StepInfo64(t[i], t[i + 1], a[i], s[i], a[i + 1], s[i + 1], lam[i], lam[i + 1]) for i in range(len(t) - 1)]


@dataclass(frozen=True)
class Multistep(Sampler):
    """Engine for explicit multistep solvers (see the module docstring).

    Subclasses set ``form`` and implement :meth:`weights`; ``corrector=True`` adds the UniC
    corrector of the same order after every step but the last."""

    order: int = 2
    lower_order_final: bool = True
    corrector: bool = False
    form = "data"
    max_order = 3
    has_history = True
    linear_plan = True

    @property
    def carries_evaluation(self) -> bool:
        """With the corrector, the evaluation at a step's end state starts the next step."""
        return self.corrector

    @property
    def evaluates_first(self) -> bool:
        return not self.corrector

    def __post_init__(self):
        if not 1 <= self.order <= self.max_order:
            raise ValueError(f"{type(self).__name__} order must be between 1 and {self.max_order}, got {self.order}")

    @property
    def convergence_order(self) -> int:
        """The corrector raises the order of accuracy by one."""
        return self.order + (1 if self.corrector else 0)

    def step_order(self, i: int, n: int) -> int:
        """Warm up with lower orders; with ``lower_order_final``, also end with them (stabler at
        few steps)."""
        k = min(self.order, i + 1)
        if self.lower_order_final and n < 15:
            k = min(k, n - i)
        return k

    def usable(self, info: StepInfo64) -> bool:
        """Whether the method's own formula takes this step (else DDIM, the exact first-order limit): by
        default where both logSNRs are finite (:meth:`StepInfo64.usable`)."""
        return info.usable(self.form)

    def weights(self, schedule: Schedule, info: StepInfo64, history: list[StepInfo64], k: int) -> Weights:
        """``Weights(c_x, [c_0, c_1, ...])`` for an order-``k`` step; ``c_j`` multiplies the output stored
        ``j`` points back (``c_0``: the current point). ``history[j]`` is the step that started at
        that point."""
        raise NotImplementedError

    def noise_weight(self, info: StepInfo64) -> float:
        """Coefficient of the step's reverse-SDE noise (0 for ODE solvers)."""
        return 0.0

    def corrector_weights(self, info: StepInfo64, history: list[StepInfo64], k: int) -> Corrector:
        """UniC of order ``k`` (B(h) = expm1 variant) as a :class:`~.base.Corrector`."""
        return unic_weights(self.form, info, history, k, "bh2")

    def prepare(self, schedule, ts):
        infos = step_infos(schedule, ts)
        convs = native_conversions(self.form, schedule, ts.tolist())
        n, coef, nfe, fresh = len(infos), [], 0, False
        for i, info in enumerate(infos):
            if not fresh:
                nfe += 1
            k = self.step_order(i, n)
            info = info.from_pure_noise(self.form)
            history = [info] + [infos[i - j] for j in range(1, k)]
            usable = self.usable(info)
            if not usable:
                c_x, c_hat = ddim_coefficients(info.a_t, info.s_t, info.a_s, info.s_s)
                c_hist, c_z = [], 0.0
            else:
                c_x, c_hist = self.weights(schedule, info, history, k)
                c_hat, c_z = 0.0, self.noise_weight(info)
            corr = None
            if self.corrector and i < n - 1 and usable:
                kx, kh, knew = self.corrector_weights(info, history, k)
                corr = CorrectorRow(kx, tuple(kh), knew, convs[i + 1])
                nfe += 1
            fresh = corr is not None
            coef.append(MultistepRow(c_x, c_hat, tuple(c_hist), convs[i], corr, c_z))
        return Plan(ts[:-1].tolist(), ts[1:].tolist(), coef, nfe, history=self.order)

    def init_state(self, x, plan):
        return (), None

    def after_external_update(self, state):
        return state[0], None

    def step(self, field, x, i, plan, state, noise):
        hist, x_hat = state
        c_x, c_hat, c_hist, conv, corr, c_z = plan.coef[i]
        if x_hat is None:
            x_hat = field(x, plan.t[i])
            hist = (hist + (to_native(x, x_hat, conv),))[-plan.history:]
        terms = [(c_hat, x_hat)] + [(c, hist[-1 - j]) for j, c in enumerate(c_hist)]
        if not is_exactly(c_z, 0):
            terms.append((c_z, noise(span=(plan.t[i], plan.s[i]))))
        x_new = lincomb(x, c_x, terms, inplace=plan.inplace and corr is None)
        if corr is None:
            return x_new, (hist, None)
        kx, kh, knew, conv_s = corr
        x_hat_new = field(x_new, plan.s[i])
        d_new = to_native(x_new, x_hat_new, conv_s)
        x_c = lincomb(x, kx, [(c, hist[-1 - j]) for j, c in enumerate(kh)] + [(knew, d_new)])
        return x_c, ((hist + (d_new,))[-plan.history:], x_hat_new)


@dataclass(frozen=True)
class SingleStep(Sampler):
    """Engine for explicit single-step (Runge-Kutta type) solvers.

    Subclasses set ``form`` and implement :meth:`tableau`, returning for one step a
    ``Tableau(stages, final)`` with ``stages = [Stage(tau_j, c_x, [a_j0, ...]), ...]`` (stage 0 is
    ``Stage(t, 1, [])``) and ``final = Weights(c_x, [b_0, ...])``. Steps with an infinite logSNR at either end fall back to
    DDIM, the exact limit, when :meth:`needs_finite_logsnr` says so, and so do steps with a stage
    below the schedule's smallest time. A velocity-form stage on clean data (``sigma(tau) = 0``)
    takes the model's own velocity there (:data:`MODEL_VELOCITY`)."""

    form = "data"
    needs_finite_logsnr = True
    linear_plan = True

    def tableau(self, schedule: Schedule, info: StepInfo64):
        raise NotImplementedError

    def prepare(self, schedule, ts):
        coef, nfe, velocity_at = [], 0, set()
        for info in step_infos(schedule, ts):
            runge_kutta = not (self.needs_finite_logsnr and not info.usable(self.form))
            if runge_kutta:
                (stages, final), form = self.tableau(schedule, info), self.form
                # a stage below the schedule's smallest time (a discrete model's first training
                # index) is outside the model's domain: the step from there is the final denoising step
                runge_kutta = all(tau >= schedule.t_min for tau, _, _ in stages)
            if not runge_kutta:
                c_x, c_hat = ddim_coefficients(info.a_t, info.s_t, info.a_s, info.s_s)
                stages, final, form = [Stage(info.t, 1.0, [])], Weights(c_x, [c_hat]), "data"
            taus = [tau for tau, _, _ in stages]
            convs = native_conversions(form, schedule, taus)
            if form == "velocity":  # a stage on clean data takes the model's own velocity (MODEL_VELOCITY)
                at_data = [j for j, tau in enumerate(taus) if float(schedule.sigma(tau)) == 0]
                for j in at_data:
                    convs[j] = MODEL_VELOCITY
                velocity_at.update(taus[j] for j in at_data)
            coef.append(TableauRow(tuple(stages), final, tuple(convs)))
            nfe += len(stages)
        return Plan(ts[:-1].tolist(), ts[1:].tolist(), coef, nfe, velocity_at=tuple(sorted(velocity_at)))

    def step(self, field, x, i, plan, state, noise):
        stages, (f_x, f_b), convs = plan.coef[i]
        outs = []
        for (tau, c_x, a), conv in zip(stages, convs):
            x_j = lincomb(x, c_x, list(zip(a, outs))) if outs else x
            outs.append(field.ode_velocity(x_j, tau) if conv is MODEL_VELOCITY else to_native(x_j, field(x_j, tau), conv))
        return lincomb(x, f_x, list(zip(f_b, outs)), inplace=plan.inplace), state
