"""The published samplers of pinned processes, written in the state ``x_t`` from their papers, as the
peers of ``benchmarks/bridges.py`` and the independent side of the equality tests in ``tests/test_bridges.py``.

Each takes ``denoise(x_t, t) -> x_hat`` (the clean-data estimate given the state and, implicitly, the
source), the process (for its ``a, b, c`` and, for the linear bridges, the base schedule), the source
``x1``, its own grid and a ``torch.Generator``; noise is drawn with ``torch.randn(..., generator=g)`` in
the order the step needs it, as :class:`sdeflow.noise.GeneratorNoise` does. Returns ``(x0, nfe)``.

- :func:`ddbm`: DDBM's sampler (Zhou et al. 2023, arXiv:2309.16948, Algorithm 1): from ``x = x1`` at
  ``t_max - 1e-4``, per step an Euler-Maruyama step of the bridge's reverse SDE
  ``dx = [f x - g^2 (s - h)] dt + g dw`` to ``t + churn (s - t)``, then Heun on its probability-flow ODE
  ``dx = [f x - g^2 (s / 2 - h)] dt``, with ``s = grad log p(x_t | x1)`` and ``h = grad log q(x1 | x_t)``
  of the unpinned process. Karras (rho = 7) grid in the base's noise level.
- :func:`dbim`: DBIM (Zheng et al. 2024, arXiv:2405.15885): the booting draw ``x = a x_hat + b x1 + c z``
  at ``t_max - 1e-3``, then ``x_s = a_s x_hat + b_s x1 + sqrt(c_s^2 - rho^2) eps_hat + rho z`` with
  ``rho = eta c_s sqrt(1 - (a_t c_s / (c_t a_s))^2)``; ``order`` 2 / 3: the exponential-integrator steps
  in ``lam = log(a / c)`` of its high-order variants. Uniform grid in ``t`` to ``t_min = 1e-4``.
- :func:`i2sb`: I2SB (Liu et al. 2023, arXiv:2302.05872): from ``x = x1`` at ``t = 1``, posterior steps
  ``x_s ~ q(x_s | x0 = x_hat, x_t)``, the Brownian bridge of the unpinned noise between them. Uniform grid.
- :func:`irsde`: IR-SDE (Luo et al. 2023, arXiv:2301.11699): from ``x = x1 + lam z``, Euler-Maruyama on
  ``dx = [theta (mu - x) - g^2 score] dt + g dw``, ``g^2 = 2 lam^2 theta``. Uniform grid.
"""

from __future__ import annotations

import math

import torch

from sdeflow.bridges import LinearBridge, MeanReverting


def _abc(process, t):
    return tuple(float(v) for v in process.abc(float(t)))


def _bridge_score(process, x, t, x_hat, x1):
    """``grad log p(x_t | x1) = -(x_t - a x_hat - b x1) / c^2``."""
    a, b, c = _abc(process, t)
    return -(x - a * x_hat - b * x1) / (c * c)


def _ddbm_field(process: LinearBridge, denoise, x, t, x1, churn_sde: bool):
    """DDBM's drift at ``t``: ``f x - g^2 (s - h)`` (SDE) or ``f x - g^2 (s / 2 - h)`` (ODE); ``(drift, g2)``."""
    base = process.base
    tt = torch.tensor(float(t), dtype=torch.float64)
    al, sg = float(base.alpha(tt)), float(base.sigma(tt)) * process.scale
    dal, dsg = float(base.d_alpha(tt)), float(base.d_sigma(tt)) * process.scale
    al1, sg1 = float(base.alpha(1.0)), float(base.sigma(1.0)) * process.scale
    f = dal / al
    g2 = 2 * sg * dsg - 2 * f * sg * sg
    x_hat = denoise(x, t)
    s = _bridge_score(process, x, t, x_hat, x1)
    ratio = al1 / al
    h = ratio * (x1 - ratio * x) / (sg1 * sg1 - ratio * ratio * sg * sg)
    drift = f * x - g2 * ((s if churn_sde else 0.5 * s) - h)
    return drift, g2


def ddbm_grid(process: LinearBridge, n: int, rho: float = 7.0, t_min: float = 1e-4, t_max: float = 1 - 1e-4):
    """DDBM's grid: Karras spacing of the base's noise level between its values at ``t_min``, ``t_max``, then 0."""
    base = process.base
    lo, hi = (float(base.noise_to_signal(torch.tensor(v, dtype=torch.float64))) for v in (t_min, t_max))
    u = torch.linspace(0, 1, n, dtype=torch.float64)
    sig = (hi ** (1 / rho) + u * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    ts = base.t_from_sigma_ratio(sig)
    return torch.cat([ts, torch.zeros(1, dtype=torch.float64)])


def ddbm(denoise, process: LinearBridge, x1, ts, generator, churn: float = 0.33):
    """DDBM's sampler over ``ts`` (starting at ``ts[0] < 1`` with ``x = x1``)."""
    x, nfe = x1.clone(), 0
    ts = [float(v) for v in ts]
    for i in range(len(ts) - 1):
        t, s = ts[i], ts[i + 1]
        if churn > 0:
            t_hat = t + churn * (s - t)
            drift, g2 = _ddbm_field(process, denoise, x, t, x1, True)
            nfe += 1
            x = x + drift * (t_hat - t) + math.sqrt(g2 * (t - t_hat)) * torch.randn(x.shape, generator=generator, dtype=x.dtype)
            t = t_hat
        d, _ = _ddbm_field(process, denoise, x, t, x1, False)
        nfe += 1
        if s == 0:  # Euler onto clean data, where the field's score term is undefined
            x = x + d * (s - t)
        else:
            x2 = x + d * (s - t)
            d2, _ = _ddbm_field(process, denoise, x2, s, x1, False)
            nfe += 1
            x = x + 0.5 * (d + d2) * (s - t)
    return x, nfe


def dbim_grid(n: int, t_min: float = 1e-4, t_max: float = 1 - 1e-3):
    """DBIM's grid: ``t = 1`` (the booting evaluation) and ``n`` uniform steps from ``t_max`` to ``t_min``."""
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.linspace(t_max, t_min, n + 1, dtype=torch.float64)])


def dbim(denoise, process, x1, ts, generator, eta: float = 0.0, order: int = 1):
    """DBIM over ``ts = [1, t_max, ..., t_min]``: the booting draw, then its eta (order 1) or high-order steps."""
    ts = [float(v) for v in ts]
    x_hat = denoise(x1, ts[0])
    a, b, c = _abc(process, ts[1])
    x = a * x_hat + b * x1 + c * torch.randn(x1.shape, generator=generator, dtype=x1.dtype)
    nfe, history = 1, []  # (lam, x_hat) of earlier points
    steps = len(ts) - 2
    for i in range(steps):
        t, s = ts[i + 1], ts[i + 2]
        a_t, b_t, c_t = _abc(process, t)
        a_s, b_s, c_s = _abc(process, s)
        x_hat = denoise(x, t)
        nfe += 1
        k = 1 if (order == 1 or i == 0 or i == steps - 1) else min(order, i + 1)
        if k == 1:
            eps = (x - a_t * x_hat - b_t * x1) / c_t
            rho = eta * c_s * math.sqrt(max(0.0, 1 - (a_t * c_s / (c_t * a_s)) ** 2)) if eta > 0 else 0.0
            x = a_s * x_hat + b_s * x1 + math.sqrt(max(0.0, c_s * c_s - rho * rho)) * eps
            if rho > 0:
                x = x + rho * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        else:
            lam_t, lam_s = math.log(a_t / c_t), math.log(a_s / c_s)
            h = lam_s - lam_t
            (lam_u, d_u) = history[-1]
            h1 = lam_t - lam_u
            if k == 2:
                integral = math.exp(lam_s) * ((1 - math.exp(-h)) * x_hat + (math.exp(-h) + h - 1) * (x_hat - d_u) / h1)
            else:
                (lam_v, d_v) = history[-2]
                h2 = lam_u - lam_v
                d1 = ((x_hat - d_u) * (2 * h1 + h2) / h1 - (d_u - d_v) * h1 / h2) / (h1 + h2)
                d2 = 2 * ((x_hat - d_u) / h1 - (d_u - d_v) / h2) / (h1 + h2)
                integral = math.exp(lam_s) * ((1 - math.exp(-h)) * x_hat + (math.exp(-h) + h - 1) * d1
                                              + (h * h / 2 - h + 1 - math.exp(-h)) * d2)
            x = x * (c_s / c_t) + x1 * (b_s - b_t * c_s / c_t) + c_s * integral
        history.append((math.log(a_t / c_t), x_hat))
    return x, nfe


def mrs(denoise, process, x1, ts, start, order: int = 2):
    """MRS's data-prediction solver (orders 1 and 2) from the state ``start`` at ``ts[0]``: DBIM's
    exponential-integrator update in ``lam = log(a / c)`` without a boot step, first order on the first and
    last steps."""
    ts = [float(v) for v in ts]
    x, history, nfe, steps = start.clone(), [], 0, len(ts) - 1
    for i in range(steps):
        t, s = ts[i], ts[i + 1]
        a_t, b_t, c_t = _abc(process, t)
        a_s, b_s, c_s = _abc(process, s)
        x_hat = denoise(x, t)
        nfe += 1
        lam_t, lam_s = math.log(a_t / c_t), math.log(a_s / c_s)
        h = lam_s - lam_t
        k = 1 if (order == 1 or i == 0 or i == steps - 1) else 2
        integral = math.exp(lam_s) * (1 - math.exp(-h)) * x_hat
        if k == 2:
            lam_u, d_u = history[-1]
            integral = integral + math.exp(lam_s) * (math.exp(-h) + h - 1) * (x_hat - d_u) / (lam_t - lam_u)
        x = x * (c_s / c_t) + x1 * (b_s - b_t * c_s / c_t) + c_s * integral
        history.append((lam_t, x_hat))
    return x, nfe


def i2sb(denoise, process: LinearBridge, x1, ts, generator):
    """I2SB's posterior sampler from ``x = x1`` at ``ts[0] = 1``; the last step to ``t = 0`` is ``x_hat``."""
    base = process.base
    ts = [float(v) for v in ts]
    x, nfe = x1.clone(), 0
    for t, s in zip(ts[:-1], ts[1:]):
        x_hat = denoise(x, t)
        nfe += 1
        if s == 0:
            return x_hat, nfe
        v_t = (process.scale * float(base.sigma(torch.tensor(t, dtype=torch.float64)))) ** 2
        v_s = (process.scale * float(base.sigma(torch.tensor(s, dtype=torch.float64)))) ** 2
        mean = x_hat + (v_s / v_t) * (x - x_hat)
        std = math.sqrt(max(0.0, v_s * (v_t - v_s) / v_t))
        x = mean + std * torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return x, nfe


def irsde(denoise, process: MeanReverting, x1, ts, generator, start=None):
    """IR-SDE's Euler-Maruyama from ``x = x1 + lam z`` at ``ts[0] = 1`` (or ``start``)."""
    ts = [float(v) for v in ts]
    x = x1 + process.lam * torch.randn(x1.shape, generator=generator, dtype=x1.dtype) if start is None else start
    nfe = 0
    for t, s in zip(ts[:-1], ts[1:]):
        x_hat = denoise(x, t)
        nfe += 1
        a, b, c = _abc(process, t)
        _, theta = process.theta_bar(t)
        theta = float(theta)
        g2 = 2 * process.lam ** 2 * theta
        score = -(x - a * x_hat - b * x1) / (c * c)
        dt = t - s
        x = x - (theta * (x1 - x) - g2 * score) * dt
        if s > 0:
            x = x + math.sqrt(g2 * dt) * torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return x, nfe


def ddbm_abc(pred_mode: str, t, beta_d=2.0, beta_min=0.1, sigma_max=80.0):
    """DDBM's ``(a, b, c)`` in its own time and naming: ``x_t = a x1 + b x0 + c z`` (``a`` the source's),
    from its ``alpha``, ``rho = sigma / alpha`` and ``rho_bar = sqrt(rho_T^2 - rho^2)``."""
    t = torch.as_tensor(t, dtype=torch.float64)
    if pred_mode == "vp":
        def alpha_of(u):
            return torch.exp(-0.5 * beta_min * u - 0.25 * beta_d * u * u)

        def rho_of(u):
            return torch.sqrt(torch.expm1(beta_min * u + 0.5 * beta_d * u * u))
        alpha, alpha_T, rho, rho_T = alpha_of(t), alpha_of(torch.tensor(1.0, dtype=torch.float64)), rho_of(t), \
            rho_of(torch.tensor(1.0, dtype=torch.float64))
    else:
        alpha, alpha_T, rho, rho_T = torch.ones_like(t), 1.0, t, sigma_max
    rho_bar = torch.sqrt(rho_T ** 2 - rho ** 2)
    return (alpha / alpha_T) * rho ** 2 / rho_T ** 2, alpha * rho_bar ** 2 / rho_T ** 2, alpha * rho_bar * rho / rho_T


def ddbm_denoise(net, pred_mode: str, x_t, t, x1, sigma_data=0.5, cov_xy=0.0, **process):
    """DDBM's preconditioned denoiser ``c_skip x_t + c_out net(c_in x_t, c_noise, xT=x1)`` in its own time ``t``."""
    a, b, c = ddbm_abc(pred_mode, t, **process)
    sd2, st2 = sigma_data ** 2, sigma_data ** 2
    big = a * a * st2 + b * b * sd2 + 2 * a * b * cov_xy + c * c
    c_in = 1 / big.sqrt()
    c_skip = (b * sd2 + a * cov_xy) / big
    c_out = (a * a * (st2 * sd2 - cov_xy ** 2) + sd2 * c * c).sqrt() * c_in
    c_noise = 1000 * 0.25 * torch.log(torch.as_tensor(t, dtype=torch.float64) + 1e-44)
    return c_skip * x_t + c_out * net(c_in * x_t, c_noise.expand(x_t.shape[0]), xT=x1)
