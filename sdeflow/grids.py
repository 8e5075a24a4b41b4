"""Time grids are values: decreasing float64 tensors ``t_0 = t_max > ... > t_n`` of ``n + 1`` times.

A grid of ``n`` steps has ``n + 1`` times. Grids that space their points in noise level
(:func:`logsnr_grid`, :func:`karras_grid`) cannot reach ``t = 0`` (infinite logSNR): they place ``n``
points between ``t_max`` (default :func:`start_time`: 1, or 0.999 for a zero-terminal-SNR schedule,
where logSNR is infinite at 1) and ``t_min`` and, with ``denoise_to_zero=True`` (the default), end with a
final step to ``t = 0`` that lands on the denoised estimate. Transforms such as :func:`shift_grid`
take a grid and return a grid.
"""

from __future__ import annotations

import torch

from .schedules import Schedule

#: Default smallest noise level ``sigma / alpha`` of noise-spaced grids (EDM's sigma_min).
DEFAULT_SIGMA_MIN = 0.002


def check_grid(ts, *, increasing: bool = False) -> torch.Tensor:
    """Validate a user grid: 1-D, at least 2 times, strictly decreasing (``increasing``: strictly
    increasing, a grid for inversion), inside [0, 1]."""
    ts = torch.as_tensor(ts, dtype=torch.float64).flatten().cpu()
    if ts.numel() < 2:
        raise ValueError(f"a grid needs at least 2 times (1 step), got {ts.numel()}")
    if not bool(torch.isfinite(ts).all()) or bool((ts < 0).any()) or bool((ts > 1).any()):
        raise ValueError("grid times must be finite and inside [0, 1] (0 = data, 1 = noise)")
    if increasing and not bool((ts[1:] > ts[:-1]).all()):
        raise ValueError("an inversion grid's times must be strictly increasing (from data towards noise)")
    if not increasing and not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError("grid times must be strictly decreasing (from noise towards data)")
    return ts


def _check_n(n: int) -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"number of steps must be an integer >= 1, got {n!r}")


def default_t_min(schedule: Schedule, sigma_min: float = DEFAULT_SIGMA_MIN) -> float:
    """Time of noise level ``sigma / alpha = sigma_min`` (0.002 by default), or the schedule's
    smallest time if that is later."""
    t = float(schedule.t_from_sigma_ratio(sigma_min))
    return max(t, schedule.t_min) if t > 0 else max(schedule.t_min, 1e-5)


def below_domain(ts: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """Which times of ``ts`` lie strictly between 0 and the schedule's smallest time (below a discrete
    schedule's first training index, where no model was trained; ``t = 0`` itself is clean data)."""
    return (ts > 0) & (ts < schedule.t_min * (1 - 1e-12))


def start_time(schedule: Schedule) -> float:
    """Where a grid for ``schedule`` starts: ``t = 1``, or just below it (0.999) for a zero-terminal-SNR
    schedule, whose logSNR is infinite at 1 (noise-spaced grids and guidance need it finite there)."""
    return 1.0 if bool(schedule.logsnr(1.0) > -30) else 0.999


def uniform_grid(n: int, t_max: float = 1.0, t_min: float = 0.0) -> torch.Tensor:
    """``n`` equal steps in ``t`` from ``t_max`` to ``t_min``."""
    _check_n(n)
    return check_grid(torch.linspace(t_max, t_min, n + 1, dtype=torch.float64))


def quadratic_grid(n: int, t_max: float = 1.0, t_min: float = 0.0) -> torch.Tensor:
    """Uniform in ``sqrt(t)`` (DPM-Solver's "time_quadratic", denser near the data):
    ``t_i = (sqrt(t_max) + (i/n)(sqrt(t_min) - sqrt(t_max)))^2``."""
    _check_n(n)
    u = torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64)
    r = t_max ** 0.5 + u * (t_min ** 0.5 - t_max ** 0.5)
    return check_grid(r * r)


def _noise_spaced(n, schedule, t_max, t_min, denoise_to_zero, spacing):
    _check_n(n)
    t_max = start_time(schedule) if t_max is None else t_max
    t_min = default_t_min(schedule) if t_min is None else t_min
    if not 0 < t_min < t_max:
        raise ValueError(f"need 0 < t_min < t_max for a noise-spaced grid, got t_min={t_min}, t_max={t_max}")
    points = n if denoise_to_zero else n + 1
    lam = schedule.logsnr(torch.tensor([t_max, t_min], dtype=torch.float64))
    if not bool(torch.isfinite(lam).all()):
        raise ValueError("logSNR is infinite at t_max or t_min: choose t_max < 1 for a zero-terminal-SNR schedule")
    u = torch.linspace(0.0, 1.0, points, dtype=torch.float64) if points > 1 else torch.zeros(1, dtype=torch.float64)
    ts = schedule.t_from_logsnr(spacing(lam[0], lam[1], u))
    ts[0], ts[-1] = t_max, (t_min if points > 1 else t_max)
    if denoise_to_zero:
        ts = torch.cat([ts, torch.zeros(1, dtype=torch.float64)])
    return check_grid(ts)


def logsnr_grid(n: int, schedule: Schedule, t_max: float | None = None, t_min: float | None = None,
                *, denoise_to_zero: bool = True) -> torch.Tensor:
    """Uniform in logSNR ``lam`` (DPM-Solver's default), between ``t_max`` and ``t_min``."""
    return _noise_spaced(n, schedule, t_max, t_min, denoise_to_zero, lambda l0, l1, u: l0 + (l1 - l0) * u)


def karras_grid(n: int, schedule: Schedule, rho: float = 7.0, t_max: float | None = None, t_min: float | None = None,
                *, denoise_to_zero: bool = True) -> torch.Tensor:
    """Karras et al.'s rho-spacing of the noise level ``sigma / alpha = exp(-lam)``:
    ``sig_i = (sig_max^(1/rho) + u_i (sig_min^(1/rho) - sig_max^(1/rho)))^rho``.
    Reference: "Elucidating the Design Space of Diffusion-Based Generative Models", 2022, arXiv:2206.00364."""

    def spacing(l0, l1, u):
        a, b = torch.exp(-l0 / rho), torch.exp(-l1 / rho)
        return -rho * torch.log(a + (b - a) * u)

    return _noise_spaced(n, schedule, t_max, t_min, denoise_to_zero, spacing)


def polyexponential_grid(n: int, schedule: Schedule, rho: float = 1.0, t_max: float | None = None,
                         t_min: float | None = None, *, denoise_to_zero: bool = True) -> torch.Tensor:
    """k-diffusion's polyexponential spacing: ``log(sigma/alpha)`` follows ``(1 - u)^rho`` between
    its ends (``rho = 1``: uniform in logSNR; larger ``rho``: more steps at low noise)."""
    return _noise_spaced(n, schedule, t_max, t_min, denoise_to_zero, lambda l0, l1, u: l1 + (1 - u) ** rho * (l0 - l1))


def auto_grid(n: int, schedule: Schedule, t_max: float | None = None) -> torch.Tensor:
    """sdeflow's default grid for few steps: polyexponential in the noise level, ending at a noise
    level that grows as the budget shrinks, then a final denoising step to ``t = 0``.

    With few steps, resolving the smallest noise levels costs more accuracy than it buys: the final
    denoising step from ``sigma_min`` loses only ``O(sigma_min^2)`` while every step saved goes to the
    noise levels where trajectories bend. So ``sigma_min = clip(5 / n^2, 0.002, 0.2)`` and the
    spacing is ``rho = 2`` (denser at low noise) for up to 10 steps, uniform in logSNR beyond. A grid
    that starts at a low ``t_max`` ends at most at half its first noise level.
    The constants were measured on the oracle's problems (see docs/benchmarks.md)."""
    _check_n(n)
    sigma_min = min(max(5.0 / n ** 2, DEFAULT_SIGMA_MIN), 0.2)
    if t_max is not None:  # a grid that starts low (after a teleport) still steps down: at most half its first level
        first = float(schedule.noise_to_signal(torch.tensor(float(t_max), dtype=torch.float64)))
        sigma_min = max(DEFAULT_SIGMA_MIN, min(sigma_min, 0.5 * first))
    t_min = default_t_min(schedule, sigma_min)
    return polyexponential_grid(n, schedule, rho=2.0 if n <= 10 else 1.0, t_max=t_max, t_min=t_min)


DISCRETE_SPACINGS = ("linspace", "leading", "trailing")


def discrete_grid(n: int, schedule, spacing: str = "trailing", steps_offset: int = 0) -> torch.Tensor:
    """Times of the integer training indices a discrete-time checkpoint is sampled at, then ``t = 0``.

    ``spacing`` follows the common conventions for ``N`` training steps: ``"linspace"``
    (``round(linspace(0, N - 1, n))``), ``"leading"`` (``k * (N // n) + steps_offset``) and
    ``"trailing"`` (``round(N - k N / n) - 1``, which starts at the last index). Index ``m`` is at
    ``t = (m + 1) / N``; the final step goes to clean data (``alpha = 1``)."""
    _check_n(n)
    num = getattr(schedule, "num_steps", None)
    if num is None:
        raise ValueError("discrete spacings need a discrete-time schedule (DiscreteVP)")
    if n > num:
        raise ValueError(f"{n} steps exceed the schedule's {num} training steps")
    if spacing == "linspace":
        idx = torch.linspace(0, num - 1, n, dtype=torch.float64).round().flip(0)
    elif spacing == "leading":
        idx = (torch.arange(n, dtype=torch.float64) * (num // n)).round().flip(0) + steps_offset
    elif spacing == "trailing":
        idx = torch.round(num - torch.arange(n, dtype=torch.float64) * (num / n)) - 1
    else:
        raise ValueError(f"unknown spacing {spacing!r}; allowed: {', '.join(DISCRETE_SPACINGS)}")
    if int(idx.max()) > num - 1 or int(idx.min()) < 0:
        raise ValueError(f"steps_offset={steps_offset} puts an index outside 0..{num - 1}")
    return check_grid(torch.cat([schedule.t_from_index(idx), torch.zeros(1, dtype=torch.float64)]))


def reference_grid(ts: torch.Tensor, schedule: Schedule, n: int = 500) -> torch.Tensor:
    """A fine grid over the same interval as ``ts`` for reference solves: the union of ``n`` uniform
    steps in ``t`` and ``n`` Karras-spaced noise levels, so it is fine at every noise level, and
    of a discrete schedule's knots, where its coefficients bend. It never goes below the schedule's
    smallest time except to end at ``t = 0``."""
    ts = check_grid(ts)
    t0, t1 = float(ts[0]), float(ts[-1])
    fine = [uniform_grid(n, t0, t1)]
    if t1 == 0:  # resolve the noise levels down to 1e-4 (or the schedule's smallest time)
        lo = max(float(schedule.t_from_sigma_ratio(1e-4)), schedule.t_min)
        lo = lo if 0 < lo < t0 else default_t_min(schedule)
    else:
        lo = t1
    hi = t0 if bool(torch.isfinite(schedule.logsnr(t0))) else min(t0, 1 - 1e-4)
    if lo < hi:
        fine.append(karras_grid(n, schedule, t_max=hi, t_min=lo, denoise_to_zero=False))
    if hasattr(schedule, "num_steps"):  # a discrete schedule bends at its knots: step onto each of them
        fine.append(torch.arange(schedule.num_steps + 1, dtype=torch.float64) / schedule.num_steps)
    merged = torch.unique(torch.cat(fine)).flip(0)
    # never below the schedule's smallest time (a discrete model's first index): from there the
    # reference, like every sampler, takes the final denoising step
    return check_grid(merged[(merged <= t0) & (merged >= t1) & ~below_domain(merged, schedule)])


def within_domain(make, n: int, schedule: Schedule) -> torch.Tensor:
    """``make(n, t_min)`` (a grid function of the step count and the last time), unless its points would
    fall below the schedule's smallest time (a discrete schedule's first training index, where no model
    was trained): then ``n - 1`` steps down to that time and a final step to clean data."""
    ts = make(n, 0.0)
    if n > 1 and bool(below_domain(ts, schedule).any()):
        ts = torch.cat([make(n - 1, schedule.t_min), torch.zeros(1, dtype=torch.float64)])
    return check_grid(ts)


def shift_grid(ts: torch.Tensor, shift: float) -> torch.Tensor:
    """Resolution shift of flow models: ``t -> shift t / (1 + (shift - 1) t)`` (``shift > 1`` spends
    more steps at high noise). Reference: Esser et al., "Scaling Rectified Flow Transformers", 2024,
    arXiv:2403.03206."""
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    ts = check_grid(ts)
    return check_grid(shift * ts / (1.0 + (shift - 1.0) * ts))


def sigma_times(sigmas, schedule: Schedule) -> torch.Tensor:
    """Times where ``schedule`` has the noise levels ``sigma / alpha`` of ``sigmas`` (0 for 0), not
    checked as a grid (repeats allowed). Levels a rounding error beyond the schedule's range (float32
    tables of other libraries) are clamped into ``[t_min, 1]``."""
    sig = torch.as_tensor(sigmas, dtype=torch.float64).flatten().cpu()
    if not bool(torch.isfinite(sig).all()) or bool((sig < 0).any()):
        raise ValueError("sigmas must be finite and >= 0")
    t = schedule.t_from_sigma_ratio(sig.clamp_min(1e-300)).clamp(schedule.t_min, 1.0)
    return torch.where(sig > 0, t, torch.zeros_like(t))


def from_sigmas(sigmas, schedule: Schedule) -> torch.Tensor:
    """A grid from decreasing noise levels ``sigma / alpha`` (k-diffusion's ``sigmas`` arrays, diffusers'
    ``scheduler.sigmas``): each is mapped to the time where the schedule has that noise level, and a
    final ``0`` to ``t = 0`` (clean data); see :func:`sigma_times`."""
    return check_grid(sigma_times(sigmas, schedule))


def _named():
    from .names import NameTable

    return NameTable("grid", {
        "auto": (lambda n, schedule, t_max=None: auto_grid(n, schedule, t_max=t_max),
                 "sdeflow's few-step default: polyexponential in the noise level, ending higher as the budget shrinks"),
        "uniform": (lambda n, schedule, t_max=None: within_domain(lambda k, lo: uniform_grid(k, t_max=t_max or 1.0, t_min=lo),
                                                                  n, schedule), "uniform in t"),
        "quadratic": (lambda n, schedule, t_max=None: within_domain(
            lambda k, lo: quadratic_grid(k, t_max=t_max or 1.0, t_min=lo), n, schedule), "quadratic in t (DDIM's quadratic spacing)"),
        "logsnr": (lambda n, schedule, t_max=None: logsnr_grid(n, schedule, t_max=t_max), "uniform in logSNR (DPM-Solver's default)"),
        "karras": (lambda n, schedule, t_max=None: karras_grid(n, schedule, t_max=t_max),
                   "Karras et al.'s rho = 7 spacing of the noise level"),
        "polyexponential": (lambda n, schedule, t_max=None: polyexponential_grid(n, schedule, rho=2.0, t_max=t_max),
                            "k-diffusion's polyexponential, rho = 2"),
        "shifted": (_top_only(lambda n, schedule: shift_grid(uniform_grid(n), 3.0)),
                    "uniform in t shifted by 3 (SD3's flow resolution shift)"),
        "linspace": (_top_only(lambda n, schedule: discrete_grid(n, schedule, "linspace")),
                     "a discrete schedule's indices, linspace spacing"),
        "leading": (_top_only(lambda n, schedule: discrete_grid(n, schedule, "leading", steps_offset=1)),
                    "a discrete schedule's indices, leading spacing with steps_offset 1"),
        "trailing": (_top_only(lambda n, schedule: discrete_grid(n, schedule, "trailing")),
                     "a discrete schedule's indices, trailing spacing"),
    })


def _top_only(make):
    """A grid whose spacing fixes its own start: it takes no ``t_max``."""
    def grid(n, schedule, t_max=None):
        if t_max is not None:
            raise ValueError("this grid fixes its own start and takes no t_max (a teleported run starts below the top: use "
                             "auto, uniform, quadratic, logsnr, karras or polyexponential)")
        return make(n, schedule)
    return grid


#: Grids by name: ``(n_steps, schedule, t_max=None) -> ts`` (a :class:`~sdeflow.names.NameTable`). Discrete spacings
#: need a discrete schedule; they and ``shifted`` fix their own start (no ``t_max``).
GRIDS = _named()


def parse_grid(text: str, n: int, schedule: Schedule, t_max: float | None = None) -> torch.Tensor:
    """A grid name from :data:`GRIDS` (starting at ``t_max`` when given, for the grids that take one), or a
    user array of decreasing times ``"1,0.6,0.3,0"``."""
    if "," in text:
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError:
            raise ValueError(f"a user grid is comma-separated numbers, got {text!r}") from None
        return check_grid(values)
    return GRIDS.lookup(text)(n, schedule) if t_max is None else GRIDS.lookup(text)(n, schedule, t_max=t_max)
