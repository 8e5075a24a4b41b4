"""The guided denoiser: a conditional denoiser and a negative prediction combined by a rule.

``Guided(denoiser, CFG(3.0))`` is a :class:`~sdeflow.denoisers.Denoiser` like any other, so every
sampler, grid, schedule and parameterization samples it unchanged. The negative prediction is

- the same denoiser under the *null* conditioning (classifier-free guidance; the default), run as
  **one batched forward** of ``2B`` rows (the conditioning of both halves stacked) or, with
  ``batched=False``, as two forwards of ``B`` rows (less memory);
- or a second, weaker denoiser of the same task under the same conditioning (``guide=``:
  autoguidance, Karras et al., 2024, arXiv:2406.02507).

``interval`` applies guidance only at noise levels inside an :class:`Interval` (Kynkaanniemi et al.,
2024, arXiv:2404.07724); outside it the conditional prediction is returned and the negative pass
is skipped. The interval is a range of noise levels, never a fraction of steps, so it means the
same on every grid.

The rule's state (APG's momentum) belongs to one run: inside sdeflow's loops it lives in the run
(:meth:`sdeflow.run.Run.local`) and ends with it; called from another loop (a peer's sampler), the
denoiser starts a new state when an evaluation comes back to the top of the grid (or higher), and
at :meth:`Guided.reset`. ``forwards`` counts network forwards per sample (a
batched CFG evaluation is 2, a skipped negative
pass 1) summed over the samples evaluated: one run over ``B`` samples adds ``B`` times its
forwards per sample. It stands beside the sampler's NFE, which counts denoiser evaluations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..denoisers import Denoiser
from ..run import run_local
from ..shapes import as_time
from .rules import CFG, Rule


@dataclass(frozen=True)
class Interval:
    """Noise levels where guidance is on: ``lo < level <= hi``, with ``level`` the noise-to-signal
    ratio ``sigma / alpha`` (``kind="sigma"``, the EDM / k-diffusion convention) or sdeflow's
    ``schedule.logsnr = log(alpha / sigma) = -log(sigma / alpha)`` (``kind="logsnr"``, on whose scale
    the bounds then lie; a high logSNR is a low noise level)."""

    lo: float
    hi: float
    kind: str = "sigma"

    def __post_init__(self):
        if self.kind not in ("sigma", "logsnr"):
            raise ValueError(f"an interval is given in 'sigma' or 'logsnr', got {self.kind!r}")
        if math.isnan(self.lo) or math.isnan(self.hi) or not self.lo < self.hi:
            raise ValueError(f"a guidance interval needs lo < hi, got ({self.lo}, {self.hi})")
        if self.kind == "sigma" and self.lo < 0:
            raise ValueError(f"a sigma interval needs lo >= 0, got {self.lo}")

    def contains(self, schedule, t) -> torch.Tensor:
        """Boolean (0-d or ``(B,)``) mask of the times whose noise level lies in the interval."""
        t = as_time(t)
        if self.kind == "sigma":
            level = schedule.noise_to_signal(t)
        else:  # lo < logsnr <= hi
            level = -schedule.logsnr(t)
            return (level >= -self.hi) & (level < -self.lo)
        return (level > self.lo) & (level <= self.hi)


def parse_interval(text: str | tuple | None, kind: str = "sigma") -> Interval | None:
    """``"LO,HI"`` (or a pair) as an :class:`Interval`; ``inf`` is allowed for an open upper end."""
    if text is None:
        return None
    if isinstance(text, Interval):
        return text
    try:
        parts = [float(v) for v in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        parts = []
    if len(parts) != 2:
        raise ValueError(f"a guidance interval is two noise levels LO,HI (e.g. 0.3,5), got {text!r}")
    return Interval(parts[0], parts[1], kind)


def _null_of(denoiser) -> Callable[[dict], dict]:
    """The denoiser's own ``null_cond``, checked now (a network without labels has none)."""
    null = getattr(denoiser, "null_cond", None)
    if null is None:
        raise ValueError(f"{type(denoiser).__name__} does not say what its unconditional input is: pass "
                         "null= (a dict of conditioning for the unconditional pass, e.g. an empty-prompt embedding, "
                         "or a function cond -> null cond)")
    null({})
    return null


def _stacked(cond: dict, null: dict, batch: int) -> dict | None:
    """The conditioning of a ``2B`` batch (``cond`` rows then ``null`` rows), or None when a value
    cannot be stacked (then the two passes run separately)."""
    out = {}
    for key in set(cond) | set(null):
        a, b = cond.get(key), null.get(key)
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            a = a.reshape(1) if a.ndim == 0 else a
            b = b.reshape(1) if b.ndim == 0 else b
            if a.shape[0] not in (1, batch) or b.shape[0] not in (1, batch) or a.shape[1:] != b.shape[1:]:
                return None
            out[key] = torch.cat([a.expand(batch, *a.shape[1:]), b.expand(batch, *b.shape[1:]).to(a.device)])
        elif a is b or (not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor) and a == b):
            out[key] = a
        else:
            return None
    return out


@dataclass
class GuidedRun:
    """A guided denoiser's state in one run: the rule's (APG's momentum), whether a sampler asked for
    the negative pass even where the rule would skip it (CFG++ re-noises with it), and the last
    negative prediction."""

    rule: dict = field(default_factory=dict)
    keep_negative: bool = False
    last_unconditional: torch.Tensor | None = None


class Guided(Denoiser):
    """A guided denoiser (see the module docstring).

    Args:
        denoiser: the conditional denoiser (its conditioning arrives through ``cond=`` of the sampler).
        rule: a :class:`~sdeflow.guidance.rules.Rule` (:class:`CFG`, :class:`CFGRescale`, :class:`APG`,
            :class:`CFGZeroStar`) or a number (the CFG scale).
        guide: a weaker denoiser of the same task for autoguidance (evaluated under the same
            conditioning); None: the unconditional pass of ``denoiser`` itself.
        interval: an :class:`Interval` (or ``(lo, hi)`` in sigma); None: guidance at every noise level.
        null: the unconditional conditioning: a dict merged over the conditioning, or a function
            ``cond -> null cond``; None: the denoiser's own ``null_cond`` (sdeflow's networks: label
            ``num_classes``; the labelled oracle: label -1).
        batched: run the conditional and unconditional passes as one forward of ``2B`` rows.
    """

    def __init__(self, denoiser: Denoiser, rule: Rule | float = 3.0, *, guide: Denoiser | None = None,
                 interval: Interval | tuple | None = None, null: dict | Callable | None = None, batched: bool = True):
        super().__init__(denoiser.schedule)
        if isinstance(rule, (int, float)) and not isinstance(rule, bool):
            rule = CFG(float(rule))
        if not isinstance(rule, Rule):
            raise TypeError(f"rule must be a guidance rule (CFG, CFGRescale, APG, CFGZeroStar) or a scale, got {rule!r}")
        if guide is not None:
            if not isinstance(guide, Denoiser):
                raise TypeError("guide must be a sdeflow Denoiser (the weaker model of autoguidance)")
            if type(guide.schedule) is not type(denoiser.schedule):
                raise ValueError("the guide must be trained on the same schedule as the denoiser "
                                 f"({type(denoiser.schedule).__name__}), got {type(guide.schedule).__name__}")
        self.inner, self.rule, self.guide, self.batched = denoiser, rule, guide, bool(batched)
        self.interval = parse_interval(interval) if interval is not None and not isinstance(interval, Interval) else interval
        if guide is None:
            if isinstance(null, dict):
                fixed = dict(null)
                self.null = lambda cond: {**cond, **fixed}
            else:
                self.null = null if null is not None else _null_of(denoiser)
        else:
            self.null = None
        self.forwards = 0.0
        self._outside = GuidedRun()  # the state of evaluations outside sdeflow's loops
        self._last_t = self._start = -math.inf  # times of the last such evaluation and of its run's first

    def reset(self) -> None:
        """Empty the forward count and the state of evaluations outside sdeflow's loops (a run's own
        state ends with the run)."""
        self.forwards, self._outside = 0.0, GuidedRun()
        self._last_t = self._start = -math.inf

    def run_state(self) -> "GuidedRun":
        """This denoiser's state in the active run (outside any: the state of the current guessed run)."""
        mine = run_local(self, GuidedRun)
        return mine if mine is not None else self._outside

    def _negative(self, x_t, t, cond: dict):
        """``(pos, neg)``: the conditional prediction and the negative one."""
        self.forwards += 2 * x_t.shape[0]
        if self.guide is not None:
            return self.inner(x_t, t, **cond), self.guide(x_t, t, **cond)
        null = self.null(cond)
        b = x_t.shape[0]
        both = _stacked(cond, null, b) if self.batched else None
        if both is None:
            return self.inner(x_t, t, **cond), self.inner(x_t, t, **null)
        tt = t if not (isinstance(t, torch.Tensor) and t.ndim == 1) else torch.cat([t, t])
        out = self.inner(torch.cat([x_t, x_t]), tt, **both)
        return out[:b], out[b:]

    def forward(self, x_t, t, **cond):
        mine = run_local(self, GuidedRun)
        if mine is None:  # a loop outside sdeflow: a new run starts when an evaluation is back at the top of a grid
            t_now = float(torch.as_tensor(t, dtype=torch.float64).reshape(-1).max())
            if t_now > self._start or (t_now == self._start and self._last_t < self._start):
                self._outside, self._start = GuidedRun(), t_now
            self._last_t = t_now
            mine = self._outside
        active = None if self.interval is None else self.interval.contains(self.schedule, t)
        if (self.rule.is_identity and not mine.keep_negative) or (active is not None and not bool(active.any())):
            self.forwards += x_t.shape[0]
            mine.last_unconditional = None
            return self.inner(x_t, t, **cond)
        pos, neg = self._negative(x_t, t, cond)
        mine.last_unconditional = neg
        out = self.rule(pos, neg, x_t, t, self.schedule, mine.rule)
        if active is not None and active.ndim == 1 and not bool(active.all()):
            out = torch.where(active.to(out.device).reshape(-1, *([1] * (out.ndim - 1))), out, pos)
        return out

    def has_ode_velocity(self, t: float) -> bool:
        """Above clean data always; on clean data (``sigma = 0``) when the rule is :class:`CFG`, which is
        affine in the predictions and so means the same on velocities as on ``x_hat``, and the models
        give their velocity there."""
        if super().has_ode_velocity(t):
            return True
        models = [self.inner] + ([self.guide] if self.guide is not None else [])
        return type(self.rule) is CFG and all(m.has_ode_velocity(t) for m in models)

    def ode_velocity(self, x_t, t, **cond):
        """The guided probability-flow velocity: from the guided ``x_hat`` above clean data; on clean
        data CFG on the models' own velocities (see :meth:`has_ode_velocity`)."""
        if super().has_ode_velocity(float(t)):
            return super().ode_velocity(x_t, t, **cond)
        if not self.has_ode_velocity(float(t)):
            raise ValueError(f"guidance by {type(self.rule).__name__} has no velocity on clean data (t = {float(t):.6g}): "
                             "there only CFG on models that predict the noise (eps, v, velocity, edm) has one")
        active = None if self.interval is None else self.interval.contains(self.schedule, t)
        if self.rule.is_identity or (active is not None and not bool(active.any())):
            self.forwards += x_t.shape[0]
            return self.inner.ode_velocity(x_t, t, **cond)
        self.forwards += 2 * x_t.shape[0]
        pos = self.inner.ode_velocity(x_t, t, **cond)
        neg = self.guide.ode_velocity(x_t, t, **cond) if self.guide is not None else \
            self.inner.ode_velocity(x_t, t, **self.null(cond))
        return self.rule(pos, neg, x_t, t, self.schedule, self.run_state().rule)
