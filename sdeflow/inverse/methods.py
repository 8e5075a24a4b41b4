"""One entry point for every posterior sampler: ``solve(name, denoiser, operator, y, noise_std, nfe, num)``.

Denoiser-transform methods (``mmps``, ``pigdm``, ``dps``, ``ddnm``, ``diffpir``) run with any sampler
of the suite (``sampler=``, default DDIM with ``eta = 1``, the stochastic sampler these methods were
published with); the others bring their own loop. Every method runs along a grid of times like
:func:`sdeflow.sample`: ``ts=`` gives one, else :func:`default_grid` spaces ``nfe``'s worth of steps in
noise level (Karras et al.'s rho = 7) down to a last nonzero noise level below the measurement noise,
so well-measured directions get their posterior spread. ``nfe`` is the number of network evaluations
(forward passes; the gradient methods also take one vector-Jacobian product per evaluation, MMPS
``cg_iters + 1`` of them). Each method takes its own options as keywords.
"""

from __future__ import annotations


import torch

from ..denoisers import Denoiser
from ..grids import DEFAULT_SIGMA_MIN, check_grid, default_t_min, karras_grid
from ..names import NameTable
from ..noise import GeneratorNoise, NoiseSource
from ..sampling import prior_sample, sample
from .daps import daps
from .dpnp import dpnp
from .enkg import enkg
from .guidance import DPS, MMPS, PiGDM
from .operators import Operator
from .projection import DDNM, DiffPIR, ddrm
from .repaint import repaint
from .result import Solution
from .smc import twisted_smc
from .variational import red_diff

TRANSFORMS = {"mmps": MMPS, "pigdm": PiGDM, "dps": DPS, "ddnm": DDNM, "diffpir": DiffPIR}


def _transform(name):
    def run(denoiser, operator, y, noise_std, ts, num, *, sampler=None, noise=None, dtype=torch.float32, device=None,
            progress=False, callback=None, **options):
        from ..samplers import DDIM

        post = TRANSFORMS[name](denoiser, operator, y, noise_std, **options)
        x_init = prior_sample(denoiser.schedule, (num, *operator.shape), t=float(ts[0]), data_std=1.0, noise=noise,
                              dtype=dtype, device=device)
        result = sample(post, sampler or DDIM(eta=1.0), ts, x_init, noise=noise, progress=progress, callback=callback)
        return Solution(result.x, result.nfe, name)
    run.wraps = TRANSFORMS[name]  # what the entry runs (the registration test reads it)
    return run


def _loop(fn):
    def run(denoiser, operator, y, noise_std, ts, num, *, sampler=None, **options):
        return fn(denoiser, operator, y, noise_std, ts, num, **options)
    run.wraps = fn
    return run


def _repaint(denoiser, operator, y, noise_std, ts, num, *, sampler=None, **options):
    return repaint(denoiser, operator, y, ts, num, **options)


_repaint.wraps = repaint


def _steps_of_transform(nfe, sampler=None, **options):
    return nfe // (sampler.nfe_per_step if sampler else 1)


#: Every posterior sampler by name (a :class:`~sdeflow.names.NameTable`): the run (``run(denoiser, operator, y,
#: noise_std, ts, num, sampler=, noise=, dtype=, device=, **options) -> Solution``), when it is exact (``sdeflow
#: list`` prints it), and as ``info`` the steps an NFE budget buys (``steps(nfe, **options)``).
METHODS = NameTable("inverse method", {
    "mmps": (_transform("mmps"), "exact for a Gaussian prior of any covariance and a linear operator", _steps_of_transform),
    "pigdm": (_transform("pigdm"), "exact for an isotropic Gaussian prior whose variance is data_var", _steps_of_transform),
    "dps": (_transform("dps"), "approximate at every NFE (its step size zeta sets the bias)", _steps_of_transform),
    "ddnm": (_transform("ddnm"), "exact for an isotropic Gaussian prior and noiseless measurements; biased when the prior "
             "correlates measured and unmeasured directions", _steps_of_transform),
    "diffpir": (_transform("diffpir"), "approximate", _steps_of_transform),
    "ddrm": (_loop(ddrm), "exact for an isotropic Gaussian prior (to O(1/steps)); biased when the prior correlates measured "
             "and unmeasured directions", lambda nfe, **o: nfe),
    "repaint": (_repaint, "approximate; masks only (more resampling, smaller error)",
                lambda nfe, resample=2, **o: nfe // resample),
    "daps": (_loop(daps), "approximate (Langevin on a Gaussian approximation of p(x | x_t))",
             lambda nfe, ode_steps=3, **o: nfe // max(1, ode_steps)),
    "red-diff": (_loop(red_diff), "a point estimate: no posterior spread", lambda nfe, **o: nfe),
    "enkg": (_loop(enkg), "approximate; needs no gradient of the operator, and more particles than measured dimensions",
             lambda nfe, **o: nfe),
    "dpnp": (_loop(dpnp), "asymptotically exact as the noise level anneals to 0, for a linear operator (exact likelihood "
             "step, prior step by denoising steps)", lambda nfe, denoise_steps=4, **o: nfe // max(1, denoise_steps)),
    "smc": (_loop(twisted_smc), "asymptotically exact as the particles grow, for any prior (reports its effective sample "
            "size)", lambda nfe, **o: nfe),
})
LOOPS = tuple(m for m in METHODS if m not in TRANSFORMS)


def check_problem(denoiser: Denoiser, operator: Operator, y, noise_std: float, num: int) -> torch.Tensor:
    """Refuse, before any work, a problem no method can solve, and return the measurement shaped as one
    measurement, ``operator.out_shape``: the operator must act on the model's samples (when the denoiser
    knows their shape, :attr:`~sdeflow.denoisers.Denoiser.sample_shape`), ``y`` be one finite measurement
    of the operator's output shape (or that with a leading 1), ``noise_std`` a finite number >= 0 and
    ``num`` a count >= 1."""
    import math

    if not isinstance(denoiser, Denoiser):
        raise TypeError("denoiser must be a sdeflow Denoiser (wrap a network with ModelDenoiser)")
    if not isinstance(operator, Operator):
        raise TypeError(f"operator must be a sdeflow.inverse Operator (Mask, Downsample, Blur, Matrix, Nonlinear, ...), "
                        f"got {type(operator).__name__}")
    shape = denoiser.sample_shape
    if shape is not None and tuple(shape) != tuple(operator.shape):
        raise ValueError(f"the operator acts on samples of shape {tuple(operator.shape)}, but the model's samples have "
                         f"shape {tuple(shape)}: build the operator for {tuple(shape)}")
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"num must be an integer >= 1 (posterior samples), got {num!r}")
    if isinstance(noise_std, bool) or not isinstance(noise_std, (int, float)) or not math.isfinite(noise_std) \
            or noise_std < 0:
        raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std!r}")
    if not isinstance(y, torch.Tensor):
        y = torch.as_tensor(y)
    out = tuple(operator(torch.zeros(1, *operator.shape, dtype=torch.float64)).shape[1:]) if not operator.linear \
        else tuple(operator.out_shape)
    if tuple(y.shape) not in (out, (1, *out)):
        raise ValueError(f"y has shape {tuple(y.shape)}; the operator measures {out} per sample: give one measurement "
                         f"of shape {out} (or {(1, *out)})")
    if not y.is_floating_point() or not bool(torch.isfinite(y).all()):
        raise ValueError("y must be a floating-point measurement with finite values (it holds NaN, Inf or integers)")
    return y.reshape(out)


def default_grid(steps: int, schedule, noise_std: float) -> torch.Tensor:
    """``steps`` steps spaced in noise level from the schedule's start to clean data, whose last
    nonzero noise level ``sigma / alpha`` is 0.002 or half the measurement noise, the smaller (a
    coarser end would leave well-measured directions with too little spread)."""
    sigma_min = DEFAULT_SIGMA_MIN if noise_std <= 0 else min(DEFAULT_SIGMA_MIN, 0.5 * noise_std)
    return karras_grid(max(1, steps), schedule, t_min=default_t_min(schedule, sigma_min))


class Bound(Denoiser):
    """A denoiser with fixed conditioning keywords (e.g. ``label=`` of a class-conditional model)."""

    def __init__(self, denoiser: Denoiser, **cond):
        super().__init__(denoiser.schedule)
        self.inner, self.cond = denoiser, cond

    def forward(self, x_t, t, **cond):
        extra = {k: (v.expand(x_t.shape[0]) if torch.is_tensor(v) and v.ndim == 1 and v.numel() == 1 else v)
                 for k, v in self.cond.items()}
        return self.inner(x_t, t, **extra, **cond)

    def check_cond(self, x, cond):
        self.inner.check_cond(x, {**self.cond, **cond})


def solve(name: str, denoiser: Denoiser, operator: Operator, y: torch.Tensor, noise_std: float, nfe: int | None,
          num: int, *, sampler=None, ts=None, seed: int = 0, noise: NoiseSource | None = None, dtype=torch.float32,
          device=None, progress: bool = False, callback=None, **options) -> Solution:
    """``num`` posterior samples (RED-diff: estimates) of ``x`` given ``y = A(x) + noise_std n``.

    Args:
        name: one of :data:`METHODS`.
        nfe: the evaluation budget the default grid is built for (ignored when ``ts`` is given).
        sampler: the sampler of a denoiser-transform method (default DDIM with ``eta = 1``).
        ts: a decreasing grid ending at 0 (default :func:`default_grid`).
        noise: a :class:`~sdeflow.noise.NoiseSource` (default: a generator seeded with ``seed``).
        progress: a progress bar counting the network evaluations.
        callback: called with a :class:`~sdeflow.run.StepInfo` after every step of the method's loop.
    """
    run, steps_for = METHODS.lookup(name), METHODS.info(name)
    y = check_problem(denoiser, operator, y, noise_std, num)
    sched = denoiser.schedule
    if ts is None:
        if nfe is None or nfe < 2:
            raise ValueError(f"nfe must be >= 2 (or give a grid ts), got {nfe}")
        ts = default_grid(steps_for(nfe, sampler=sampler, **options), sched, noise_std)
    ts = check_grid(ts)
    if float(ts[-1]) != 0.0:
        raise ValueError(f"the grid of a posterior sampler must end at t = 0 (clean data), got {float(ts[-1]):.6g}")
    noise = noise if noise is not None else GeneratorNoise(torch.Generator().manual_seed(seed))
    sol = run(denoiser, operator, y, noise_std, ts, num, sampler=sampler, noise=noise, dtype=dtype, device=device,
              progress=progress, callback=callback, **options)
    sol.x = sol.x.to(dtype)
    sol.method = name
    return sol
