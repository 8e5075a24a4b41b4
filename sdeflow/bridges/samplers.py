"""Sampling a pinned process: the boot step, DDBM's Heun sampler, the named bridge samplers and
:func:`sample_bridge`, which runs them on the one sampling loop.

On the residual ``y = x_t - b_t x1`` every sampler of :mod:`sdeflow.samplers` applies unchanged. Only
the start is new. A pinned process (``a(1) = c(1) = 0``) starts at ``y = 0`` for every path and its
probability-flow ODE is singular there; :class:`Boot` takes the first step as a draw from the process'
own kernel, ``y_s = a_s x_hat(0, 1) + c_s z`` (DBIM's booting noise; also I2SB's first posterior step,
since ``y(1) = 0`` carries no information), and then runs any sampler on the rest of the grid. A
mean-reverting or residual process starts from its Gaussian start law and needs no boot.

Which published sampler is which update on the residual:

============== ============================================ =============================================
name           sdeflow                                      published
============== ============================================ =============================================
dbim           Boot + DDIM                                  DBIM, eta = 0
dbim-eta1      Boot + DDIM(eta = 1)                         DBIM, eta = 1 (= I2SB's posterior step)
dbim-2/-3      Boot + DPM-Solver++ 2M / 3M, exact integrals DBIM's high-order variants (in log(a/c))
i2sb           Boot + DDPM (posterior variance)             I2SB's DDPM-posterior sampler
ir-sde         Euler-Maruyama (eta = 1)                     IR-SDE's reverse-SDE sampler
mrs-1/-2/-3    DPM-Solver++ 1 / 2M / 3M                     MRS's data-prediction ODE solvers
ddbm-heun      (Boot +) :class:`DDBMHeun`                   DDBM's Heun sampler with SDE churn steps
============== ============================================ =============================================

DBIM's own high-order code also reuses the boot evaluation (at ``t = 1 - 5e-5``) as a history point;
sdeflow's multistep history starts after the boot, where the residual's logSNR is finite.

References: Zheng et al., "Diffusion Bridge Implicit Models", 2024, arXiv:2405.15885; Zhou et al.,
"Denoising Diffusion Bridge Models", 2023, arXiv:2309.16948; Liu et al., "I2SB", 2023,
arXiv:2302.05872; Luo et al., "IR-SDE", 2023, arXiv:2301.11699; Li et al., "MRS: A Fast Sampler for
Mean Reverting Diffusion based on ODE and SDE Solvers", 2024, arXiv:2502.07856.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from ..grids import check_grid, logsnr_grid
from ..names import NameTable
from ..noise import NoiseSource, as_noise
from ..run import SampleResult
from ..samplers import DDIM, DDPM, DPMSolverPP, EulerMaruyama, Heun, SAMPLERS
from ..samplers.base import Plan, Sampler, Wrapper
from ..sampling import sample
from .denoiser import PinnedDenoiser


@dataclass(frozen=True)
class Boot(Wrapper):
    """The first step ``y_s = a_s x_hat(y_t, t) + c_s z`` (one evaluation, draw 0 of step 0), then
    ``inner`` on the rest of the grid. The start of a pinned process, where ``y_t = 0`` for every path."""

    inner: Sampler = field(default_factory=DDIM)
    stochastic = True

    def __post_init__(self):
        self.check_wrapped()
        if isinstance(self.inner, Boot):
            raise ValueError("Boot wraps the sampler of the steps after the boot step, not another Boot")

    @property
    def wrapped(self) -> Sampler:
        return self.inner

    @property
    def convergence_order(self) -> int:
        """The boot step draws from the exact kernel given ``x_hat``: the law converges, not a path."""
        return self.inner.convergence_order

    def count_nfe(self, schedule, ts):
        return 1 + (self.inner.count_nfe(schedule, ts[1:]) if ts.numel() > 2 else 0)

    def prepare(self, schedule, ts) -> Plan:
        t0, t1 = float(ts[0]), float(ts[1])
        boot = (float(schedule.alpha(t1)), float(schedule.sigma(t1)))
        if ts.numel() == 2:
            return Plan([t0], [t1], [boot], 1)
        inner = self.inner.prepare(schedule, ts[1:])
        inner.ts = ts[1:]
        nfe = None if inner.nfe is None else inner.nfe + 1
        return Plan([t0] + list(inner.t), [t1] + list(inner.s), [boot], nfe, inner=(inner,))

    def init_state(self, x, plan):
        return self.inner.init_state(x, plan.inner[0]) if plan.inner else None

    def step(self, field, x, i, plan, state, noise):
        if i == 0:
            a_s, c_s = plan.coef[0]
            x_hat = field(x, plan.t[0])
            out = x_hat * a_s
            return (out + noise(span=(plan.t[0], plan.s[0])) * c_s if c_s != 0 else out), state
        return self.inner.step(field, x, i - 1, plan.inner[0], state, noise)


@dataclass(frozen=True)
class DDBMHeun(Sampler):
    """DDBM's sampler: each step from ``t`` to ``s`` first takes an Euler-Maruyama step of the reverse SDE
    (``eta = 1``) to ``t_hat = t + churn (s - t)``, then a Heun step of the probability-flow ODE from
    ``t_hat`` to ``s`` (Euler where ``s`` is clean data). ``churn = 0`` is Heun alone. Up to three
    evaluations per step."""

    churn: float = 0.33
    order = 2
    nfe_per_step = 3

    def __post_init__(self):
        if not 0.0 <= self.churn < 1.0:
            raise ValueError(f"DDBM's churn step ratio must be in [0, 1), got {self.churn!r}")

    @property
    def stochastic(self) -> bool:
        return self.churn > 0

    @property
    def convergence_order(self) -> int:
        return 2 if self.churn == 0 else 1

    def _grid(self, ts):
        if self.churn == 0:
            return ts
        mids = ts[:-1] + self.churn * (ts[1:] - ts[:-1])
        return torch.stack([ts[:-1], mids], 1).flatten().tolist() + [float(ts[-1])]

    def prepare(self, schedule, ts) -> Plan:
        n = ts.numel() - 1
        if self.churn == 0:
            ode = _HEUN.prepare(schedule, ts)
            return Plan(ode.t, ode.s, [None] * n, ode.nfe, inner=(ode,))
        grid = torch.as_tensor(self._grid(ts), dtype=torch.float64)
        sde, ode = _EM.prepare(schedule, grid), _HEUN.prepare(schedule, grid)
        # the SDE plan covers every sub-step but runs on the even ones, the ODE plan on the odd ones
        nfe = n + sum(_HEUN.prepare(schedule, grid[2 * i + 1:2 * i + 3]).nfe for i in range(n))
        return Plan(ts[:-1].tolist(), ts[1:].tolist(), [None] * n, nfe, inner=(sde, ode))

    def count_nfe(self, schedule, ts):
        return self.prepare(schedule, ts).nfe

    def step(self, field, x, i, plan, state, noise):
        if self.churn == 0:
            return _HEUN.step(field, x, i, plan.inner[0], state, noise)
        sde, ode = plan.inner
        x, _ = _EM.step(field, x, 2 * i, sde, None, noise)
        return _HEUN.step(field, x, 2 * i + 1, ode, state, noise)


_HEUN, _EM = Heun(), EulerMaruyama(eta=1.0)


#: Samplers of pinned processes by name (any name of :data:`sdeflow.samplers.SAMPLERS` works too; see the
#: module docstring for which published sampler each is).
BRIDGE_SAMPLERS = NameTable("bridge sampler", {
    "dbim": (lambda: Boot(DDIM()), "DBIM (eta 0): the boot step, then DDIM on the residual"),
    "dbim-eta1": (lambda: Boot(DDIM(eta=1.0)), "DBIM with eta 1: the boot step, then DDIM(eta 1)"),
    "dbim-2": (lambda: Boot(DPMSolverPP(order=2, variant="heun")), "DBIM's second order: boot, DPM-Solver++(2M) exact"),
    "dbim-3": (lambda: Boot(DPMSolverPP(order=3)), "DBIM's third order: boot, DPM-Solver++(3M) exact"),
    "i2sb": (lambda: Boot(DDPM()), "I2SB: the boot step, then DDPM posterior steps"),
    "ir-sde": (lambda: EulerMaruyama(eta=1.0), "IR-SDE: Euler-Maruyama on the reverse SDE"),
    "mrs-1": (lambda: DPMSolverPP(order=1), "MRS, first order (= DDIM on the residual)"),
    "mrs-2": (lambda: DPMSolverPP(order=2, variant="heun"), "MRS, second order (data prediction)"),
    "mrs-3": (lambda: DPMSolverPP(order=3), "MRS, third order (data prediction)"),
    "ddbm-heun": (DDBMHeun, "DDBM's Heun sampler with SDE churn steps (ratio 0.33)"),
})


def bridge_sampler(name_or_sampler) -> Sampler:
    """A sampler by name: a bridge sampler's, else any of :data:`sdeflow.samplers.SAMPLERS`."""
    if isinstance(name_or_sampler, Sampler):
        return name_or_sampler
    if isinstance(name_or_sampler, str) and name_or_sampler in BRIDGE_SAMPLERS:
        return BRIDGE_SAMPLERS[name_or_sampler]()
    if isinstance(name_or_sampler, str) and name_or_sampler in SAMPLERS:
        return SAMPLERS[name_or_sampler]()
    raise ValueError(f"unknown sampler {name_or_sampler!r}; allowed: {', '.join(BRIDGE_SAMPLERS)} or any of: "
                     f"{', '.join(SAMPLERS)}")


#: where a bridge grid's first step lands (residual logSNR): the boot step draws ``y = a x_hat + c z``, whose
#: variance misses ``a^2 Cov[x0 | x1]``, a share ``exp(2 lam) Var / c^2`` (2e-3 of the state's for unit variance)
BOOT_LOGSNR = -3.0


def bridge_sigma_min(n: int) -> float:
    """The lowest noise level ``c / a`` of an ``n``-step bridge grid before its final step to clean data,
    ``clip(3 / n^2, 0.002, 0.03)``: the final step loses ``O(sigma_min^2)``, which must shrink as the
    steps grow, while few steps are better spent where the paths bend."""
    return min(max(3.0 / n ** 2, 0.002), 0.03)


def bridge_grid(process, n: int, *, lam_start: float = BOOT_LOGSNR, sigma_min: float | None = None) -> torch.Tensor:
    """sdeflow's default grid of ``n`` steps for a process pinned at a source: from ``t = 1`` a first step to
    the time where the residual's logSNR is ``lam_start``, then steps uniform in logSNR down to the noise
    level ``c / a = sigma_min`` (default :func:`bridge_sigma_min`) and a final step to clean data. A process whose start already has a
    logSNR above ``lam_start`` (IR-SDE's) spends all ``n`` steps on the logSNR-uniform part from ``t = 1``.
    The constants were chosen on one 2-D problem (a ring of 8 through a 2x2 link) and are validated on
    the others of ``benchmarks/bridges.py``."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"a grid needs a whole number of steps >= 1, got {n!r}")
    residual = process.residual
    if n == 1:
        return torch.tensor([1.0, 0.0], dtype=torch.float64)
    sigma_min = bridge_sigma_min(n) if sigma_min is None else sigma_min
    t_min = float(residual.t_from_sigma_ratio(torch.tensor(sigma_min, dtype=torch.float64)))
    if float(residual.logsnr(1.0)) > lam_start:
        return logsnr_grid(n, residual, t_max=1.0, t_min=t_min)
    t_start = float(residual.t_from_logsnr(torch.tensor(lam_start, dtype=torch.float64)))
    return check_grid(torch.cat([torch.ones(1, dtype=torch.float64), logsnr_grid(n - 1, residual, t_max=t_start, t_min=t_min)]))


def sample_bridge(denoiser: PinnedDenoiser, sampler, ts, source: torch.Tensor, *, noise: NoiseSource | None = None,
                  generator: torch.Generator | None = None, cond: dict | None = None, **options) -> SampleResult:
    """Restore ``source`` with a bridge model: start the process from the source, run ``sampler`` on the
    residual over the grid ``ts`` (from ``t = 1``), and return the clean estimate ``x0`` (``result.x``).

    A pinned process starts from ``y = 0`` with a :class:`Boot` step in front of ``sampler`` (added
    unless the sampler is one); the others start from ``y(1) = x1 - b(1) x1 + start_std z`` (draw -1 of
    the noise source). ``options`` go to :func:`sdeflow.sample` (callback, progress, check_finite, ...).
    Everything is checked before any evaluation. The result holds the process' states ``x_t`` (its
    trajectory too, when asked for), not the residuals."""
    if not isinstance(denoiser, PinnedDenoiser):
        raise TypeError(f"sample_bridge needs a bridge denoiser (BridgeDenoiser, BridgeOracle), got "
                        f"{type(denoiser).__name__}")
    sampler = for_process(denoiser.process, sampler)
    ts = check_grid(ts)
    if float(ts[0]) != 1.0:
        raise ValueError(f"a bridge run starts at the source, t = 1; the grid starts at {float(ts[0]):.6g}")
    cond = {**(cond or {}), "source": source}
    denoiser.check_cond(source, cond)
    process = denoiser.process
    noise = as_noise(noise, generator)
    if process.pinned:
        y = torch.zeros_like(source)
    else:
        y = process.start_residual(source, noise(source, -1))
    result = sample(denoiser, sampler, ts, y, cond=cond, noise=noise, **options)
    return to_states(result, process, source)


#: sdeflow's sampler for pinned processes (after the boot step): the one the benchmarks measure best at 5-10 NFE
DEFAULT_BRIDGE_SAMPLER = "unipc-bh2"


def for_process(process, sampler) -> Sampler:
    """``sampler`` (or its name) as it runs on ``process``: behind a :class:`Boot` step where the process is pinned."""
    sampler = bridge_sampler(sampler)
    if isinstance(sampler, Boot) and not process.pinned:
        raise ValueError(f"{type(process).__name__} is not pinned: it starts from its own Gaussian start law, not with a "
                         "boot step; use a sampler without one (mrs-2, unipc-bh2, ir-sde, ...)")
    return Boot(sampler) if process.pinned and not isinstance(sampler, Boot) else sampler


def bridge_steps(process, sampler, nfe: int) -> int:
    """The most steps of :func:`bridge_grid` whose run of ``sampler`` on ``process`` takes at most ``nfe``
    evaluations (at least one step)."""
    if not isinstance(nfe, int) or isinstance(nfe, bool) or nfe < 1:
        raise ValueError(f"nfe must be a whole number >= 1, got {nfe!r}")
    sampler = for_process(process, sampler)
    lo, hi = 1, nfe
    while lo < hi:  # the NFE of a run grows with its steps
        mid = (lo + hi + 1) // 2
        if sampler.prepare(process.residual, bridge_grid(process, mid)).nfe <= nfe:
            lo = mid
        else:
            hi = mid - 1
    return lo


def restore(denoiser: PinnedDenoiser, source: torch.Tensor, nfe: int, sampler=DEFAULT_BRIDGE_SAMPLER,
            **options) -> SampleResult:
    """Restore ``source`` (one per sample) with a bridge model in at most ``nfe`` evaluations: ``sampler`` on
    :func:`bridge_grid` with the most steps that fit (:func:`bridge_steps`). ``options`` go to :func:`sample_bridge`."""
    steps = bridge_steps(denoiser.process, sampler, nfe)
    return sample_bridge(denoiser, sampler, bridge_grid(denoiser.process, steps), source, **options)


def to_states(result: SampleResult, process, source: torch.Tensor) -> SampleResult:
    """A run on the residual with its states ``x_t = y + b_t x1`` (the result at ``t = 0`` is unchanged)."""
    b = process.abc(result.ts)[1]
    x = result.x if float(b[-1]) == 0 else result.x + float(b[-1]) * source
    traj = result.trajectory
    if traj is not None:
        traj = traj + b.to(traj.dtype).reshape(-1, *([1] * source.ndim)) * source
    return replace(result, x=x, trajectory=traj)
