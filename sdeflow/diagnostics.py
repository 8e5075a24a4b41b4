"""Look inside a model: what its field is, beyond how to integrate it.

Every diagnostic reads the model's score ``s(x, t) = (alpha x_hat - x) / sigma^2`` (any parameterization,
through the denoiser) with autograd, and is exact on the oracle:

- :func:`fokker_planck_residual`: the residual of the score Fokker-Planck equation. For the forward
  process ``dx = f x dt + g dW`` (``f = alpha'/alpha``, ``g^2 = (sigma^2)' - 2 f sigma^2``) every true score
  satisfies ``d s / dt = grad_x [ (g^2 / 2)(div s + |s|^2) - f x . s ]``; a learned field need not, and
  the gap is what separates its probability-flow ODE from its reverse SDE (their marginals agree
  only for a score that solves it). ``d s / dt`` by central differences in ``t``, ``div s`` exactly
  (``D`` backward passes) or by Hutchinson's estimator, its gradient by a second backward pass.
- :func:`jacobian_asymmetry`: ``||J - J^T||_F / ||J||_F`` of the score's Jacobian by random probes
  (``Jv`` and ``J^T v`` by autograd); 0 for any true score (a gradient field), nonzero for a field with
  a rotational part, such as the marginal-preserving gauge terms a network may learn.
- :func:`ode_sde_gap`: the sliced W2 between the model's ODE and SDE samples, beside the floor of two SDE
  runs: what the Fokker-Planck residual costs in samples.
- :func:`intrinsic_dimension`: from the score at small noise near a data point, by FLIPD
  (``D + sigma^2 tr grad s``, the local rate of the noised density's log-growth) or by the normal bundle
  (the scores of noised copies of the point span the normal space; the largest gap of their singular
  values sets its dimension). Both return ``k`` on data of rank-``k`` covariances plus a small
  isotropic floor.

References: Lai et al., "FP-Diffusion: Improving Score-based Diffusion Models by Enforcing the
Underlying Score Fokker-Planck Equation", ICML 2023; Deveney et al., "Closing the ODE-SDE gap in
score-based diffusion models through the Fokker-Planck equation", 2023, arXiv:2311.15996; Horvat and
Pfister, "On gauge freedom, conservativity and intrinsic dimensionality estimation in diffusion
models", ICLR 2024; Stanczuk et al., "Your diffusion model secretly knows the dimension of the data
manifold", 2023, arXiv:2212.12611; Kamkari et al., "A Geometric View of Data Complexity: Efficient
Local Intrinsic Dimension Estimation with Diffusion Models" (FLIPD), NeurIPS 2024.
"""

from __future__ import annotations

import math

import torch

from .parameterizations import score_from_x_hat
from .schedules import Schedule
from .shapes import as_time


#: The normal bundle's singular-value gap (in log) below which there is no normal space.
NORMAL_GAP = 2.302585092994046  # log(10)


def model_score(denoiser, x_t: torch.Tensor, t: float, cond: dict | None = None) -> torch.Tensor:
    """``(alpha x_hat(x_t) - x_t) / sigma^2`` at time ``t``, differentiable in ``x_t``."""
    return score_from_x_hat(denoiser(x_t, float(t), **(cond or {})), x_t, denoiser.schedule, float(t))


def sde_coefficients(schedule: Schedule, t: float) -> tuple[float, float]:
    """``(f, g^2)`` of the forward SDE ``dx = f x dt + g dW`` whose marginals the schedule's ``alpha``, ``sigma`` are."""
    tt = as_time(t)
    a, s, da, ds = (float(v(tt)) for v in (schedule.alpha, schedule.sigma, schedule.d_alpha, schedule.d_sigma))
    f = da / a
    return f, 2 * s * ds - 2 * f * s * s


def _probes(like: torch.Tensor, probes: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    return [torch.randn(like.shape, generator=generator, dtype=like.dtype).to(like.device) for _ in range(probes)]


def _divergence(field_out: torch.Tensor, x: torch.Tensor, probes: list[torch.Tensor] | None) -> torch.Tensor:
    """``div`` of ``field_out(x)`` per sample, differentiable (exact with ``probes=None``)."""
    b = x.shape[0]
    out = field_out.reshape(b, -1)
    if probes is None:
        cols = []
        for j in range(out.shape[1]):
            g = torch.autograd.grad(out[:, j].sum(), x, create_graph=True)[0].reshape(b, -1)[:, j]
            cols.append(g)
        return torch.stack(cols, 1).sum(1)
    total = 0.0
    for v in probes:
        jtv = torch.autograd.grad(field_out, x, v, create_graph=True)[0]
        total = total + (jtv * v).reshape(b, -1).sum(1)
    return total / len(probes)


def fokker_planck_residual(denoiser, x_t: torch.Tensor, t: float, *, cond: dict | None = None, probes: int | None = None,
                           dt: float | None = None, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """The score Fokker-Planck residual ``r = ds/dt - grad[(g^2/2)(div s + |s|^2) - f x . s]`` at the states
    ``x_t`` (``(B, ...)``) and time ``t``. ``probes``: Hutchinson probes for ``div s`` (None: exact, ``D``
    backward passes); ``dt``: the central-difference step in ``t`` (default ``1e-4`` of ``min(t, 1 - t)``
    scale). Returns per sample ``residual`` (``|r|``), ``scale`` (``|ds/dt|``), ``relative`` (their ratio) and
    ``divergence`` (``div s``, exact or estimated)."""
    r, ds_dt, div = fokker_planck_terms(denoiser, x_t, t, cond=cond, probes=probes, dt=dt, generator=generator)
    r = r.reshape(x_t.shape[0], -1).norm(dim=1).detach()
    scale = ds_dt.reshape(x_t.shape[0], -1).norm(dim=1).detach()
    return {"residual": r, "scale": scale, "relative": r / scale.clamp_min(1e-300), "divergence": div.detach()}


def fokker_planck_terms(denoiser, x_t: torch.Tensor, t: float, *, cond: dict | None = None, probes: int | None = None,
                        dt: float | None = None, generator: torch.Generator | None = None, create_graph: bool = False):
    """``(r, ds/dt, div s)`` of :func:`fokker_planck_residual`, ``r`` and ``ds/dt`` shaped like ``x_t``;
    ``create_graph=True`` keeps them differentiable in the model's parameters (a training penalty,
    :class:`~sdeflow.objectives.DenoisingLoss`'s ``fokker_planck``)."""
    schedule = denoiser.schedule
    t = float(t)
    h = dt if dt is not None else 1e-4 * max(min(t, 1.0 - t), 1e-3)
    if not (h > 0 and t - h > schedule.t_min and t + h <= 1.0):
        raise ValueError(f"t = {t} needs room for the time derivative: t_min < t - dt and t + dt <= 1 (dt = {h:.3g})")
    x = x_t.detach().to(torch.float64).requires_grad_(True)
    with torch.set_grad_enabled(create_graph):
        ds_dt = (model_score(denoiser, x, t + h, cond) - model_score(denoiser, x, t - h, cond)) / (2 * h)
    f, g2 = sde_coefficients(schedule, t)
    with torch.enable_grad():
        s = model_score(denoiser, x, t, cond)
        div = _divergence(s, x, None if probes is None else _probes(x, probes, generator))
        b = x.shape[0]
        phi = 0.5 * g2 * (div + s.reshape(b, -1).pow(2).sum(1)) - f * (x * s).reshape(b, -1).sum(1)
        grad_phi = torch.autograd.grad(phi.sum(), x, create_graph=create_graph)[0]
    return ds_dt - grad_phi, ds_dt, div


def jacobian_asymmetry(denoiser, x_t: torch.Tensor, t: float, *, cond: dict | None = None, probes: int = 8,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """``||J - J^T||_F / ||J||_F`` per sample, ``J`` the Jacobian of the model's score at ``x_t``, from
    ``probes`` Gaussian probes (``E|(J - J^T) v|^2 = ||J - J^T||_F^2``). Exactly 0 for a gradient field."""
    x = x_t.detach().to(torch.float64).requires_grad_(True)
    b = x.shape[0]
    num = den = 0.0
    with torch.enable_grad():
        s = model_score(denoiser, x, t, cond)
        for v in _probes(x, probes, generator):
            w = torch.zeros_like(s, requires_grad=True)
            jtw = torch.autograd.grad(s, x, w, create_graph=True)[0]        # J^T w, linear in w
            jv = torch.autograd.grad((jtw * v).sum(), w, retain_graph=True)[0]   # d/dw (w^T J v) = J v
            jtv = torch.autograd.grad(s, x, v, retain_graph=True)[0]
            num = num + (jv - jtv).reshape(b, -1).pow(2).sum(1)
            den = den + jv.reshape(b, -1).pow(2).sum(1)
    return (num / den.clamp_min(1e-300)).sqrt().detach()


def loop_circulation(denoiser, x_t: torch.Tensor, t: float, *, radius: float | None = None, points: int = 16,
                     planes: tuple[torch.Tensor, torch.Tensor] | None = None, cond: dict | None = None,
                     generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """The loop integral of the model's score around a circle of ``radius`` (default ``0.1 sigma_t``)
    through each sample, in a random plane (orthonormal ``planes = (u, v)``, each ``(B, D)``, if given),
    by the trapezoid rule on ``points`` points (exact for linear fields, spectrally accurate otherwise;
    ``points`` model evaluations of the batch).

    Returns ``curl``: the circulation over ``pi r^2``, which tends to ``v^T J u - u^T J v`` as ``r -> 0``
    (Stokes): 0 for a gradient field, ``2 v^T A u`` for a field whose Jacobian has the antisymmetric part
    ``A``; and ``relative``: ``|curl|`` over the field's mean change around the loop divided by ``r``
    (scale-free, 0 for a gradient field)."""
    if points < 3:
        raise ValueError(f"a loop needs at least 3 points, got {points}")
    schedule = denoiser.schedule
    b = x_t.shape[0]
    x = x_t.detach().to(torch.float64).reshape(b, -1)
    r = 0.1 * float(schedule.sigma(as_time(t))) if radius is None else float(radius)
    if not r > 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    if planes is None:
        g = torch.randn(b, x.shape[1], 2, generator=generator, dtype=torch.float64)
        q = torch.linalg.qr(g)[0]
        u, v = q[..., 0], q[..., 1]
    else:
        u, v = (p.to(torch.float64).reshape(b, -1) for p in planes)
    theta = torch.arange(points, dtype=torch.float64) * (2 * math.pi / points)
    circulation = torch.zeros(b, dtype=torch.float64)
    change = torch.zeros(b, dtype=torch.float64)
    with torch.no_grad():
        center = model_score(denoiser, x.reshape(x_t.shape), t, cond).reshape(b, -1).to(torch.float64)
        for th in theta.tolist():
            on = x + r * (math.cos(th) * u + math.sin(th) * v)
            s = model_score(denoiser, on.reshape(x_t.shape), t, cond).reshape(b, -1).to(torch.float64)
            tangent = r * (-math.sin(th) * u + math.cos(th) * v)
            circulation += (s * tangent).sum(1) * (2 * math.pi / points)
            change += (s - center).norm(dim=1) / points
    curl = circulation / (math.pi * r * r)
    return {"curl": curl, "relative": curl.abs() / (change / r).clamp_min(1e-300)}


def intrinsic_dimension(denoiser, x: torch.Tensor, t: float, *, method: str = "flipd", cond: dict | None = None,
                        probes: int | None = None, copies: int | None = None,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """The local intrinsic dimension of the data at the clean points ``x`` (``(B, ...)``), read from the
    model's score at the small time ``t``.

    ``method="flipd"``: ``D + sigma_t^2 tr grad s(alpha_t x, t)`` (trace exact, or with ``probes`` Hutchinson
    probes). ``method="normal"``: the scores at ``copies`` (default ``4 D``) noised copies
    ``alpha_t x + sigma_t z``, centred, span the normal space; the dimension is ``D`` minus the position
    of the largest gap in their singular values, or ``D`` when no gap exceeds a factor ``e^NORMAL_GAP``
    (10: no direction is normal at this noise level)."""
    schedule = denoiser.schedule
    a, s = float(schedule.alpha(as_time(t))), float(schedule.sigma(as_time(t)))
    b, d = x.shape[0], x[0].numel()
    x = x.detach().to(torch.float64)
    if method == "flipd":
        xt = (a * x).requires_grad_(True)
        with torch.enable_grad():
            score = model_score(denoiser, xt, t, cond)
            tr = _divergence(score, xt, None if probes is None else _probes(xt, probes, generator))
        return (d + s * s * tr).detach()
    if method == "normal":
        k = copies or 4 * d
        out = []
        for i in range(b):
            z = torch.randn((k, *x.shape[1:]), generator=generator, dtype=torch.float64).to(x.device)
            c = None if cond is None else {key: (v[i:i + 1].expand(k, *v.shape[1:]) if torch.is_tensor(v) else v)
                                           for key, v in cond.items()}
            with torch.no_grad():
                scores = model_score(denoiser, a * x[i:i + 1] + s * z, t, c).reshape(k, -1)
            sv = torch.linalg.svdvals(scores - scores.mean(0))  # the spread: the point's own offset is one shared row
            gaps = torch.log(sv[:-1].clamp_min(1e-300)) - torch.log(sv[1:].clamp_min(1e-300))
            normal = int(torch.argmax(gaps)) + 1 if float(gaps.max()) > NORMAL_GAP else 0
            out.append(float(d - normal))
        return torch.tensor(out, dtype=torch.float64)
    raise ValueError(f"method must be 'flipd' or 'normal', got {method!r}")


def ode_sde_gap(denoiser, shape: tuple[int, ...], num: int = 2000, *, cond: dict | None = None, seed: int = 0,
                ode_nfe: int = 40, sde_nfe: int = 100) -> dict[str, float]:
    """How far the model's probability-flow ODE and reverse SDE end apart: the sliced W2 between ``num``
    ODE samples (UniPC, ``ode_nfe`` on a logSNR grid) and ``num`` SDE samples (SDE-DPM-Solver++(2M),
    ``sde_nfe``), beside the same distance between two SDE runs with other noise (the floor of this
    many samples and steps). For a true score, whose ODE and SDE share their marginals, the gap sits near
    the floor; a Fokker-Planck residual lets them part."""
    from .grids import logsnr_grid
    from .metrics import sliced_wasserstein
    from .noise import SeededNoise
    from .samplers import SDEDPMSolverPP, UniPC
    from .sampling import prior_sample, sample

    schedule = denoiser.schedule
    seeds = [seed * 100_003 + i for i in range(num)]
    x1 = prior_sample(schedule, (num, *shape), seeds=seeds, dtype=torch.float64)
    with torch.no_grad():
        ode = sample(denoiser, UniPC(), logsnr_grid(ode_nfe, schedule), x1, cond=cond).x
        sde_grid = logsnr_grid(sde_nfe, schedule)
        sde = [sample(denoiser, SDEDPMSolverPP(order=2), sde_grid, x1, cond=cond,
                      noise=SeededNoise([k * 7919 + v for v in seeds])).x for k in (1, 2)]
    return {"gap": sliced_wasserstein(ode, sde[0]), "floor": sliced_wasserstein(sde[0], sde[1])}
