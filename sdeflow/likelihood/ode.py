"""Log-likelihood by the probability-flow ODE (the instantaneous change of variables).

Along the probability-flow ODE ``dx/dt = v(x, t) = p(t) x + q(t) x_hat(x, t)`` (see
:func:`~sdeflow.samplers.base.ode_coefficients`) the log-density of the marginals changes by
``d log p_t(x_t) / dt = -div v(x_t, t)``, so for data ``x`` at time ``t_min``

    log p_{t_min}(x) = log p_{t_max}(x_{t_max}) + int_{t_min}^{t_max} div v(x_t, t) dt,
    div v = p D + q tr(d x_hat / d x),

integrating the ODE forwards (towards noise) from ``x_{t_min} = x``. The trace is computed exactly
(the batch repeated once per coordinate, one backward pass: small ``D``) or estimated by
Hutchinson's estimator with ``K`` fixed probes (the batch repeated once per probe), which is unbiased: the result carries its standard
error over the probes. The prior term is the Gaussian ``N(alpha data_mean, (alpha^2 data_std^2 + sigma^2) I)``
at ``t_max``, the exact ``p_{t_max}`` of data with that mean and an isotropic spread; ``log_prior=``
takes any other. Where ``alpha(t_max)`` is not 0 (VP linear at ``t = 1``: ``alpha = 6.7e-3``), the
data's mean is what matters: the centred prior has a mismatch of order ``(alpha |mean|)^2 / 2`` per
coordinate, which ``data_mean`` removes, while ``data_std`` only corrects the variance, a term of
order ``alpha^2`` (both measured in ``docs/likelihood.md``).

The ODE is singular at ``sigma = 0``, so the integral starts at ``t_min > 0`` (default: noise level
``sigma / alpha = 1e-3``): the result is ``log p_{t_min}``, the density of the slightly noised data,
which approaches ``log p_0`` as ``t_min -> 0``. ``to_data=True`` estimates ``log p_0(x)`` instead: with
``s = sigma / alpha`` at ``t_min``, ``p_{t_min}`` at ``z = alpha x`` is ``alpha^-D`` times the data density
blurred by ``N(0, s^2 I)``, and the heat equation undoes the blur to first order,

    log p_0(x) = D log alpha + log p_{t_min}(z) - (sigma^2 / 2) (div score(z) + |score(z)|^2) + O(s^4),

with the score ``(alpha x_hat - z) / sigma^2`` and its divergence from the same trace (one more
evaluation at ``t_min``). Solvers:
``"dopri5"`` (Dormand-Prince 5(4) with error control on the state and the accumulated divergence,
the reference) and any deterministic fixed-grid sampler of sdeflow's, by name (``"rk4"``, ``"heun"``,
``"euler"``, ``"dpm-solver++-2m"``, ``"unipc-bh2"``, ...) or as a :class:`~sdeflow.samplers.Sampler`,
on ``steps`` steps uniform in logSNR (down to logSNR -12 where ``t_max`` is pure noise). A sampler runs
its own step rules forwards (as in :func:`~sdeflow.invert`) on the augmented state ``(x, a)``, so the
divergence is integrated in the same scheme as the state: ``a`` obeys ``da/dt = p D + q tr``, which is
the probability-flow form ``da/dt = p a + q a_hat`` with ``a_hat = (p / q)(D - a) + tr`` (``q`` never
vanishes), and every step rule written for that form applies to it unchanged. The augmented state is
float64; the network sees the data's dtype. Gradients flow to ``x`` and the network's parameters when ``create_graph=True``.

Reference: Chen et al., "Neural Ordinary Differential Equations", 2018 (instantaneous change of
variables); Grathwohl et al., "FFJORD", 2019 (Hutchinson's estimator); Song et al., "Score-Based
Generative Modeling through Stochastic Differential Equations", 2021 (probability-flow likelihood).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..denoisers import Denoiser
from ..samplers import SAMPLERS, deterministic_samplers
from ..run import Run, integrate
from ..samplers.adaptive import DOPRI5, error_ratio, next_step
from ..samplers.base import Sampler, ode_coefficients
from ..sampling import check_denoiser, planned, prior_std
from ..shapes import check_batch

TRACES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")


#: ``"dopri5"`` and every deterministic fixed-grid sampler of the registry.
METHODS = ("dopri5", *deterministic_samplers())
#: Lowest logSNR of a fixed grid (its last point is ``t_max`` itself, also where that is pure noise).
LAM_NOISE = -12.0


@dataclass
class Likelihood:
    """``log_prob``: ``(B,)`` log-density of each sample (nats) at ``at``: ``"t_min"``, the density
    ``p_{t_min}`` of the noised data (the default), or ``"data"``, the estimate of ``log p_0`` of
    ``to_data=True``; ``stderr``: its standard error over Hutchinson probes (zeros for the exact trace);
    ``prior`` and ``divergence``: the two terms of the integral; ``x_end``: the state at ``t_max``;
    ``nfe``: denoiser evaluations (each with its trace products)."""

    log_prob: torch.Tensor
    stderr: torch.Tensor
    prior: torch.Tensor
    divergence: torch.Tensor
    x_end: torch.Tensor
    nfe: int
    t_min: float
    t_max: float
    at: str = "t_min"

    def bits_per_dim(self, levels: int | None = None, scale: float = 1.0) -> torch.Tensor:
        """Negative log-likelihood in bits per dimension. With ``levels`` (the number of values each
        coordinate of the data takes, e.g. 17 for scikit-learn's digits, 256 for 8-bit images) over a
        data range of width ``scale`` (2 for data in [-1, 1]), the density is turned into the
        probability of the bin of width ``scale / (levels - 1)``: uniform dequantization's bound."""
        d = self.x_end[0].numel()
        nll = -self.log_prob
        if levels is not None:
            if levels < 2:
                raise ValueError(f"levels must be >= 2, got {levels}")
            nll = nll - d * math.log(scale / (levels - 1))
        return nll / (d * math.log(2.0))


def default_t_min(schedule) -> float:
    """The time at noise level ``sigma / alpha = 1e-3`` (or the schedule's smallest time, if later)."""
    return max(float(schedule.t_from_sigma_ratio(1e-3)), schedule.t_min)


def log_likelihood(denoiser: Denoiser, x: torch.Tensor, *, cond: dict | None = None, t_min: float | None = None,
                   t_max: float = 1.0, method: str | Sampler = "dopri5", steps: int = 64, rtol: float = 1e-6,
                   atol: float = 1e-6, trace: str = "exact", probes: int = 1, probe: str = "rademacher",
                   generator: torch.Generator | None = None, data_std: float = 0.0, data_mean=0.0,
                   log_prior: Callable[[torch.Tensor], torch.Tensor] | None = None, create_graph: bool = False,
                   max_steps: int = 10_000, to_data: bool = False) -> Likelihood:
    """``log p_{t_min}(x)``, or with ``to_data`` an estimate of ``log p_0(x)``, by the probability-flow ODE
    (see the module docstring).

    Args:
        denoiser: the model, with its schedule.
        x: ``(B, ...)`` data.
        t_min, t_max: the ends of the integral (``t_min`` default: :func:`default_t_min`).
        method: ``"dopri5"`` (``rtol``, ``atol``), or a deterministic fixed-grid sampler (a name of
            :data:`METHODS` or a :class:`~sdeflow.samplers.Sampler`) on ``steps`` steps.
        trace: ``"exact"`` or ``"hutchinson"`` with ``probes`` probes of kind ``probe`` (drawn from ``generator``).
        data_std, data_mean: the data's standard deviation and mean (a number, or a tensor of one sample's
            shape) in the Gaussian prior at ``t_max`` (0 and 0: pure noise).
        log_prior: ``(x_end) -> (B,)`` log-density at ``t_max`` instead of the Gaussian.
        create_graph: keep the graph, so that the result can be differentiated (w.r.t. ``x`` or parameters).
        to_data: return the estimate of ``log p_0(x)`` (module docstring) instead of ``log p_{t_min}(x)``.
    """
    check_denoiser(denoiser)
    sch = denoiser.schedule
    check_batch(x, "x")
    if not (rtol > 0 and atol > 0):
        raise ValueError("rtol and atol must be positive")
    field, t_min, t_max, k = _setup(denoiser, x, cond, t_min, t_max, trace, probes, probe, generator, steps, method,
                                    create_graph)
    start = x * float(sch.alpha(t_min)) if to_data else x
    if method == "dopri5":
        y0 = (start, torch.zeros(x.shape[0], k, dtype=torch.float64, device=x.device))
        x_end, acc = _dopri5(field, y0, t_min, t_max, rtol, atol, max_steps)
    else:
        x_end, acc = _run(field, method, logsnr_grid(sch, t_min, t_max, steps), start, k)
    if to_data:
        acc = acc + _unblur(field, start, t_min)
    result = _result(_prior(sch, x_end, t_max, data_std, data_mean, log_prior), acc, x_end, field, t_min, t_max)
    result.at = "data" if to_data else "t_min"
    return result


def heat_correction(denoiser: Denoiser, z: torch.Tensor, t: float, *, cond: dict | None = None) -> torch.Tensor:
    """``(B,)``: ``log p_0(x) - log p_t(z)`` at ``z = alpha(t) x`` to first order in ``(sigma / alpha)^2``,
    ``D log alpha - (sigma^2 / 2) (div score + |score|^2)`` with the denoiser's score and its divergence
    (exact trace): what ``log_likelihood(..., to_data=True)`` adds (module docstring)."""
    check_denoiser(denoiser)
    check_batch(z, "z")
    field = _Field(denoiser, cond or {}, z[0].numel(), None, False)
    return _unblur(field, z, float(t))[:, 0]


def _unblur(field, z: torch.Tensor, t: float) -> torch.Tensor:
    """``(B, K)``: ``D log alpha - (sigma^2 / 2) (div score + |score|^2)`` at ``(z, t)``, per probe: the step
    from ``log p_t(alpha x)`` to ``log p_0(x)`` (module docstring)."""
    sch = field.denoiser.schedule
    a, s2, d = float(sch.alpha(t)), float(sch.sigma(t)) ** 2, field.d
    x_hat, tr = field.evaluate(z, t)
    score = (a * x_hat.to(torch.float64) - z.to(torch.float64)).reshape(z.shape[0], -1) / s2
    div = (a * tr - d) / s2
    return d * math.log(a) - 0.5 * s2 * (div + score.pow(2).sum(1, keepdim=True))


def _setup(denoiser, x, cond, t_min, t_max, trace, probes, probe, generator, steps, method, create_graph):
    """Checks, the probes and the augmented field; returns ``(field, t_min, t_max, K)``."""
    sch = denoiser.schedule
    if trace not in TRACES:
        raise ValueError(f"trace must be one of {', '.join(TRACES)}, got {trace!r}")
    if probe not in PROBES:
        raise ValueError(f"probe must be one of {', '.join(PROBES)}, got {probe!r}")
    if isinstance(method, Sampler):
        if method.stochastic or method.adaptive:
            raise ValueError(f"method must be a deterministic fixed-grid sampler, got {type(method).__name__} "
                             f"({'stochastic' if method.stochastic else 'adaptive'}): use method='dopri5' for error control")
    elif method not in METHODS:
        raise ValueError(f"method must be 'dopri5', a deterministic fixed-grid sampler or one of its names "
                         f"({', '.join(METHODS[1:])}), got {method!r}")
    if not isinstance(probes, int) or probes < 1:
        raise ValueError(f"probes must be a positive integer, got {probes!r}")
    if method != "dopri5" and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    t_min = default_t_min(sch) if t_min is None else float(t_min)
    t_max = float(t_max)
    if not (0.0 < t_min < t_max <= 1.0 and t_min >= sch.t_min) or float(sch.sigma(t_min)) <= 0:
        raise ValueError(f"need 0 < t_min < t_max <= 1, t_min >= {sch.t_min:g} (the schedule's smallest time) and "
                         f"sigma(t_min) > 0, got t_min={t_min:g}, t_max={t_max:g} (the ODE is singular where sigma = 0)")
    eps = None
    if trace == "hutchinson":
        shape = (probes, *x.shape)
        if probe == "rademacher":
            eps = torch.randint(0, 2, shape, generator=generator, dtype=torch.int64).to(x.dtype).mul_(2).sub_(1)
        else:
            eps = torch.randn(shape, generator=generator, dtype=x.dtype)
        eps = eps.to(x.device)
    field = _Field(denoiser, cond or {}, x[0].numel(), eps, create_graph)
    return field, t_min, t_max, (1 if eps is None else probes)


def logsnr_grid(sch, t_min: float, t_max: float, steps: int) -> torch.Tensor:
    """``steps + 1`` increasing times uniform in logSNR, down to :data:`LAM_NOISE` where ``t_max`` is pure
    noise (logSNR -inf); the ends are ``t_min`` and ``t_max`` exactly."""
    lam_end = max(float(sch.logsnr(t_max)), LAM_NOISE)
    lam = torch.linspace(float(sch.logsnr(t_min)), lam_end, steps + 1, dtype=torch.float64)
    ts = sch.t_from_logsnr(lam)
    ts[0], ts[-1] = t_min, t_max
    return ts


def _prior(sch, x_end, t_max, data_std, data_mean, log_prior) -> torch.Tensor:
    if log_prior is not None:
        return log_prior(x_end).to(torch.float64)
    std = prior_std(sch, t_max, data_std)
    mean = float(sch.alpha(t_max)) * torch.as_tensor(data_mean, dtype=torch.float64, device=x_end.device)
    flat = (x_end.to(torch.float64) - mean).reshape(x_end.shape[0], -1)
    d = flat.shape[1]
    return -0.5 * (flat / std).pow(2).sum(1) - d * (math.log(std) + 0.5 * math.log(2 * math.pi))


def _result(prior, acc, x_end, field, t_min, t_max) -> Likelihood:
    """The estimate over the probes, with its standard error (0 for the exact trace, NaN for one probe)."""
    k = acc.shape[1]
    mean = acc.mean(1)
    stderr = (acc.std(1) / math.sqrt(k)) if k > 1 else torch.full_like(mean, math.nan if field.eps is not None else 0.0)
    return Likelihood(prior + mean, stderr, prior, mean, x_end, field.calls, t_min, t_max)


class _Field:
    """``(x, acc) -> (v, div v per probe)`` at time ``t``."""

    def __init__(self, denoiser, cond, d, eps, create_graph):
        self.denoiser, self.cond, self.d, self.eps, self.create_graph = denoiser, cond, d, eps, create_graph
        self.calls = 0

    def coefficients(self, t) -> tuple[float, float]:
        return tuple(float(c) for c in ode_coefficients(self.denoiser.schedule, torch.as_tensor(t, dtype=torch.float64)))

    def evaluate(self, x, t):
        """``(x_hat, (B, K) trace terms)`` at ``x``, kept in the graph only with ``create_graph``."""
        self.calls += 1
        with torch.enable_grad():
            xg = x if (x.requires_grad and self.create_graph) else x.detach().requires_grad_(True)
            x_hat, tr = self._exact(xg, t) if self.eps is None else self._hutchinson(xg, t)
        if not self.create_graph:
            x_hat, tr = x_hat.detach(), tr.detach()
        return x_hat, tr

    def __call__(self, y, t: float):
        x, _ = y
        p, q = self.coefficients(t)
        x_hat, tr = self.evaluate(x, t)
        return p * x + q * x_hat, p * self.d + q * tr

    def _exact(self, x, t):
        """``x_hat`` and ``(B, 1)`` ``tr(d x_hat / d x)`` in one forward and one backward pass: each sample is
        repeated ``D`` times and copy ``i`` is differentiated along coordinate ``i``."""
        b, d = x.shape[0], self.d
        rows = x.unsqueeze(1).expand(b, d, *x.shape[1:]).reshape(b * d, *x.shape[1:])
        cond = {k: (v.repeat_interleave(d, 0) if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == b else v)
                for k, v in self.cond.items()}
        out = self.denoiser(rows, t, **cond).reshape(b, d, d)
        diag = torch.diagonal(out, dim1=1, dim2=2)
        g, = torch.autograd.grad(diag.sum(), rows, create_graph=self.create_graph)
        tr = torch.diagonal(g.reshape(b, d, d), dim1=1, dim2=2).sum(1).to(torch.float64)
        return out[:, 0].reshape(x.shape), tr[:, None]

    def _hutchinson(self, x, t):
        """``x_hat`` and ``(B, K)`` float64 ``eps_k^T (d x_hat / d x) eps_k``: the batch is repeated once per
        probe, so all K vector-Jacobian products take one forward and one backward pass."""
        b, k = x.shape[0], self.eps.shape[0]
        rows = x.unsqueeze(0).expand(k, *x.shape).reshape(k * b, *x.shape[1:])
        cond = {n: (v.repeat(k, *([1] * (v.ndim - 1))) if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == b
                    else v) for n, v in self.cond.items()}
        out = self.denoiser(rows, t, **cond)
        e = self.eps.reshape(k * b, *x.shape[1:])
        g, = torch.autograd.grad((out * e).sum(), rows, create_graph=self.create_graph)
        products = (g * e).reshape(k, b, -1).sum(2).to(torch.float64).T
        return out[:b], products


def _axpy(y, h, ks, coefs):
    """``y + h sum_j c_j k_j`` on the (state, accumulator) pair."""
    x, acc = y
    for c, (kv, kd) in zip(coefs, ks):
        if c != 0:
            x = x + (h * c) * kv
            acc = acc + (h * c) * kd
    return x, acc


class _Augmented(Denoiser):
    """The field of the state and the divergence accumulator as one denoiser on flat float64 states
    ``(B, D + K)``: ``x_hat`` for ``x`` and ``a_hat = (p / q)(D - a) + tr`` for ``a`` (module docstring)."""

    def __init__(self, field: _Field, like: torch.Tensor):
        super().__init__(field.denoiser.schedule)
        self.field, self.shape, self.dtype = field, like.shape, like.dtype

    def forward(self, y, t, **cond):
        d = self.field.d
        x_hat, tr = self.field.evaluate(y[:, :d].reshape(self.shape).to(self.dtype), t)
        p, q = self.field.coefficients(t)
        a_hat = (p / q) * (d - y[:, d:]) + tr
        return torch.cat([x_hat.reshape(y.shape[0], d).to(y.dtype), a_hat], 1)


def _run(field, method, ts, x, k):
    """Integrate ``(x, 0)`` along the grid ``ts`` (either direction) with a sampler's step rules; returns
    the state at the end and the ``(B, K)`` accumulated divergence."""
    sampler = method if isinstance(method, Sampler) else SAMPLERS[method]()
    flat = x.reshape(x.shape[0], -1)
    y0 = torch.cat([flat.to(torch.float64), torch.zeros(x.shape[0], k, dtype=torch.float64, device=x.device)], 1)
    aug = _Augmented(field, x)
    plan = planned(sampler, aug.schedule, ts, increasing=bool(ts[-1] > ts[0]))
    run = Run(aug)
    y, _ = integrate(run, sampler, plan, y0)
    run.finish(y, plan)
    return y[:, :field.d].reshape(x.shape).to(x.dtype), y[:, field.d:]


def _dopri5(field, y, t0, t1, rtol, atol, max_steps):
    """Dormand-Prince 5(4) with first-same-as-last, error control on the state and the accumulator."""
    t, h, k0, steps = t0, min(1e-3, t1 - t0), None, 0
    while t < t1 - 1e-12:
        h = min(h, t1 - t)
        if k0 is None:
            k0 = field(y, t)
        ks = [k0]
        for j in range(1, 7):
            yj = _axpy(y, h, ks, DOPRI5.a[j])
            ks.append(field(yj, t + DOPRI5.c[j] * h))
        y5 = yj
        y4 = _axpy(y, h, ks, DOPRI5.b_low)
        err = max(error_ratio(y5[0], y4[0], y[0], rtol, atol), error_ratio(y5[1], y4[1], y[1], rtol, atol))
        steps += 1
        if steps > max_steps:
            raise RuntimeError(f"the likelihood integration took more than {max_steps} steps: loosen rtol/atol")
        if err <= 1.0:
            y, t, k0 = y5, t + h, ks[6]
        h = next_step(h, err, 4)
    return y


def sample_with_log_prob(denoiser: Denoiser, x_init: torch.Tensor, *, cond: dict | None = None,
                         t_min: float | None = None, t_max: float = 1.0, method: str | Sampler = "rk4", steps: int = 64,
                         trace: str = "exact", probes: int = 1, probe: str = "rademacher",
                         generator: torch.Generator | None = None, data_std: float = 0.0, data_mean=0.0,
                         log_prior: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Likelihood:
    """Generate by the probability-flow ODE from ``x_init`` (a draw of ``p_{t_max}``) down to ``t_min`` with a
    deterministic fixed-grid sampler (``method``: a name or a :class:`~sdeflow.samplers.Sampler`; ``steps``
    steps uniform in logSNR) and integrate the divergence in the same scheme: ``log_prob`` is the
    log-density of each generated sample, ``x_end`` the sample, ``prior`` the log-density of ``x_init``.
    Costs the trace at every evaluation (see :func:`log_likelihood`)."""
    check_denoiser(denoiser)
    sch = denoiser.schedule
    check_batch(x_init, "x_init")
    if isinstance(method, str) and method == "dopri5":
        raise ValueError("method must be a fixed-grid sampler (rk4, heun, dpm-solver++-2m, ...), got 'dopri5'")
    field, t_min, t_max, k = _setup(denoiser, x_init, cond, t_min, t_max, trace, probes, probe, generator, steps,
                                    method, create_graph=False)
    x_end, acc = _run(field, method, logsnr_grid(sch, t_min, t_max, steps).flip(0), x_init, k)
    prior = _prior(sch, x_init, t_max, data_std, data_mean, log_prior)
    # the accumulator integrated int_{t_max}^{t_min} div v dt, the negative of the likelihood's integral
    return _result(prior, -acc, x_end, field, t_min, t_max)
