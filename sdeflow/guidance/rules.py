"""Guidance rules: how a guided ``x_hat`` is made from a positive and a negative prediction.

A rule sees ``pos`` (the conditional ``x_hat_c``, or the good model's) and ``neg`` (the
unconditional ``x_hat_u``, or the weaker guide's) at one state ``x_t`` and time ``t``, and returns
the guided ``x_hat``. For a fixed ``(x_t, t)`` every parameterization (eps, v, score, velocity) is an
affine function of ``x_hat`` with the same coefficients for both predictions, so a rule that is
affine in the predictions means the same thing in every parameterization; the nonlinear ones say
which quantity they act on.

- :class:`CFG`: ``x_hat = neg + w (pos - neg)`` (Ho and Salimans, 2022, arXiv:2207.12598).
- :class:`CFGRescale`: CFG whose result is rescaled to the per-sample standard deviation of ``pos``
  and blended back with weight ``phi`` (Lin et al., 2024, arXiv:2305.08891), applied to ``x_hat``.
- :class:`APG`: adaptive projected guidance: the guidance direction ``pos - neg`` (with momentum
  and a norm cap) split into its part parallel to ``pos`` and the orthogonal rest; the parallel
  part, which oversaturates, is weighted by ``eta`` (Sadat et al., 2024, arXiv:2410.02416).
- :class:`CFGZeroStar`: on the probability-flow velocity ``v = a x_hat + b x_t``, the negative
  velocity is first scaled by the per-sample least-squares ``s* = <v_pos, v_neg> / |v_neg|^2``, and
  the velocity is zero above a noise level (zero-init) (Fan et al., 2025, arXiv:2503.18886).

Each rule has a ``scale``; ``scale = 1`` returns ``pos`` to round-off (exactly for CFG, rescale
and APG, which then skip the negative pass); ``scale = 0`` returns ``neg`` for CFG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..schedules import Schedule
from ..shapes import as_time, expand_as_batch


def _dims(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(1, x.ndim))


def _check_scale(scale) -> None:
    if not (isinstance(scale, (int, float)) and math.isfinite(scale)):
        raise ValueError(f"the guidance scale must be a finite number, got {scale!r}")


class Rule:
    """Base class: ``rule(pos, neg, x_t, t, schedule, state) -> x_hat``; ``state`` is a dict the
    guided denoiser keeps for one sampling run (emptied when a new run starts)."""

    scale: float

    @property
    def is_identity(self) -> bool:
        """True when the rule returns ``pos`` without needing ``neg`` (the negative pass is skipped)."""
        return False

    def __call__(self, pos, neg, x_t, t, schedule: Schedule, state: dict) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


@dataclass(frozen=True)
class CFG(Rule):
    """``x_hat = neg + scale (pos - neg)``."""

    scale: float = 3.0

    def __post_init__(self):
        _check_scale(self.scale)

    @property
    def is_identity(self) -> bool:
        return self.scale == 1.0

    def __call__(self, pos, neg, x_t, t, schedule, state):
        return torch.lerp(neg, pos, float(self.scale))  # exact at both ends: scale 0 gives neg, 1 gives pos


@dataclass(frozen=True)
class CFGRescale(Rule):
    """CFG, then ``phi * x_cfg * std(pos) / std(x_cfg) + (1 - phi) x_cfg`` (per-sample standard deviations,
    in float32 or the state's wider dtype; a state of one value per sample has no spread: plain CFG)."""

    scale: float = 3.0
    phi: float = 0.7

    def __post_init__(self):
        _check_scale(self.scale)
        if not 0.0 <= self.phi <= 1.0:
            raise ValueError(f"phi must lie in [0, 1], got {self.phi!r}")

    @property
    def is_identity(self) -> bool:
        return self.scale == 1.0

    def __call__(self, pos, neg, x_t, t, schedule, state):
        cfg = torch.lerp(neg, pos, float(self.scale))
        d = _dims(pos)
        if not d:  # one value per sample has no spread to match: CFG itself
            return cfg
        wide = torch.promote_types(cfg.dtype, torch.float32)  # at least float32, float64 for a float64 state
        ratio = pos.to(wide).std(dim=d, keepdim=True) / cfg.to(wide).std(dim=d, keepdim=True).clamp_min(1e-12)
        return torch.lerp(cfg, cfg * ratio.to(cfg.dtype), float(self.phi))


@dataclass(frozen=True)
class APG(Rule):
    """Adaptive projected guidance: ``x_hat = pos + (scale - 1) (d_perp + eta d_par)`` where
    ``d = pos - neg + momentum * d_previous`` (a running sum over the run's evaluations; negative
    momentum damps the direction's drift), capped at Euclidean norm ``norm_threshold`` per sample,
    and split into ``d_par``, its projection on ``pos``, and ``d_perp = d - d_par``. ``eta = 1``,
    no momentum and no cap is CFG."""

    scale: float = 3.0
    eta: float = 0.0
    norm_threshold: float | None = None
    momentum: float = -0.5

    def __post_init__(self):
        _check_scale(self.scale)
        if not math.isfinite(self.eta):
            raise ValueError(f"eta must be finite, got {self.eta!r}")
        if self.norm_threshold is not None and not self.norm_threshold > 0:
            raise ValueError(f"norm_threshold must be > 0 (or None for no cap), got {self.norm_threshold!r}")
        if not -1.0 < self.momentum < 1.0:
            raise ValueError(f"momentum must lie in (-1, 1), got {self.momentum!r}")

    @property
    def is_identity(self) -> bool:
        return self.scale == 1.0

    def __call__(self, pos, neg, x_t, t, schedule, state):
        work = torch.float64 if pos.dtype == torch.float64 else torch.float32
        p, d = pos.to(work), (pos - neg).to(work)
        if self.momentum != 0.0:
            prev = state.get("apg")
            if prev is not None and prev.shape == d.shape:
                d = d + self.momentum * prev
            state["apg"] = d
        dims = _dims(d)
        if self.norm_threshold is not None:
            norm = torch.linalg.vector_norm(d, dim=dims, keepdim=True)
            d = d * torch.clamp(self.norm_threshold / norm.clamp_min(1e-12), max=1.0)
        unit = p / torch.linalg.vector_norm(p, dim=dims, keepdim=True).clamp_min(1e-12)
        par = (d * unit).sum(dim=dims, keepdim=True) * unit
        update = (d - par) + self.eta * par
        return (p + (self.scale - 1.0) * update).to(pos.dtype)


@dataclass(frozen=True)
class CFGZeroStar(Rule):
    """CFG on the probability-flow velocity with the negative velocity scaled by the per-sample
    optimum ``s*``: ``v = s* v_neg + scale (v_pos - s* v_neg)``; ``v = 0`` (the state is held) where
    the noise level ``sigma / alpha`` exceeds ``zero_sigma`` (``None``: no zero-init).

    Written on ``x_hat`` with ``v = a x_hat + b x_t`` (``a = alpha' - sigma' alpha / sigma``,
    ``b = sigma' / sigma``): ``x_hat = (1 - w) s* neg + w pos + (b / a)(1 - w)(s* - 1) x_t``."""

    scale: float = 3.0
    zero_sigma: float | None = None

    def __post_init__(self):
        _check_scale(self.scale)
        if self.zero_sigma is not None and not self.zero_sigma > 0:
            raise ValueError(f"zero_sigma must be a noise level > 0 (or None), got {self.zero_sigma!r}")

    def __call__(self, pos, neg, x_t, t, schedule, state):
        tt = as_time(t)
        sig, d_sig = schedule.sigma(tt), schedule.d_sigma(tt)
        a = schedule.d_alpha(tt) - d_sig * schedule.alpha(tt) / sig
        b = d_sig / sig
        work = torch.float64 if pos.dtype == torch.float64 else torch.float32
        x, p, n = x_t.to(work), pos.to(work), neg.to(work)
        a_, b_ = expand_as_batch(a.to(work), x), expand_as_batch(b.to(work), x)
        v_p, v_n = a_ * p + b_ * x, a_ * n + b_ * x
        dims = _dims(x)
        s = (v_p * v_n).sum(dim=dims, keepdim=True) / (v_n * v_n).sum(dim=dims, keepdim=True).clamp_min(1e-30)
        w = float(self.scale)
        out = (1.0 - w) * s * n + w * p + (b_ / a_) * ((1.0 - w) * (s - 1.0)) * x
        if self.zero_sigma is not None:
            zero = schedule.noise_to_signal(tt) > self.zero_sigma
            if bool(zero.any()):
                out = torch.where(expand_as_batch(zero, x) if zero.ndim else zero, -(b_ / a_) * x, out)
        return out.to(pos.dtype)
