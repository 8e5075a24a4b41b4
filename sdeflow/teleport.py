"""Teleportation: the Gaussian part of a model's field, integrated exactly, to skip the first steps.

At high noise the field of any data distribution is close to that of the Gaussian with the data's
mean ``mu`` and covariance ``Sigma``, whose probability-flow ODE is linear and solved in closed form.
Along an eigendirection of ``Sigma`` with variance ``lam``, ``p_t`` has variance
``c_t = alpha_t^2 lam + sigma_t^2`` and the flow keeps the whitened coordinate:
``x_t = alpha_t mu + C_t^{1/2} z`` for every ``t``. So noise ``z`` drawn at the top of the schedule is
carried to any ``t_skip`` at no network cost (:meth:`Teleport.start`), and a sampler continues from
there on a grid that starts at ``t_skip``. Exact for Gaussian data at any ``t_skip``; for other data the
error is what the Gaussian misses above ``t_skip``, which :meth:`Teleport.explained` measures with a few
model evaluations and :meth:`Teleport.choose_time` turns into a ``t_skip``.

The covariance is kept as a spectrum: an orthonormal basis ``U`` (``D x r``) with variances ``lam``, and
one variance ``floor`` for every direction orthogonal to ``U`` (all of ``Sigma`` when ``r = D``;
the top ``r`` principal directions of image data otherwise, at ``O(D r)`` memory).

Reference: Wang and Vastola, "The Unreasonable Effectiveness of Gaussian Score Approximation for
Diffusion Models and its Applications", TMLR 2024, arXiv:2311.10892 (analytical teleportation).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .grids import logsnr_grid, start_time
from .schedules import Schedule
from .shapes import as_time


class Teleport:
    """The Gaussian ``N(mu, U diag(lam) U^T + floor (I - U U^T))`` of a data set, in float64.

    Args:
        mean: ``(*shape)`` the data mean (the shape of one sample).
        basis: ``(D, r)`` orthonormal columns, ``D`` the number of values of a sample.
        variances: ``(r,)`` the variances along them (>= 0).
        floor: the variance of every direction orthogonal to ``basis`` (ignored when ``r = D``).
    """

    def __init__(self, mean: torch.Tensor, basis: torch.Tensor, variances: torch.Tensor, floor: float = 0.0):
        mean = torch.as_tensor(mean, dtype=torch.float64)
        basis = torch.as_tensor(basis, dtype=torch.float64)
        variances = torch.as_tensor(variances, dtype=torch.float64)
        d = mean.numel()
        if basis.ndim != 2 or basis.shape[0] != d or variances.shape != (basis.shape[1],):
            raise ValueError(f"basis must be (D, r) with D = {d} values per sample and variances (r,), got "
                             f"{tuple(basis.shape)} and {tuple(variances.shape)}")
        if not (bool(torch.isfinite(variances).all()) and bool((variances >= 0).all()) and math.isfinite(floor)
                and floor >= 0):
            raise ValueError("the variances and the floor must be finite and >= 0")
        self.shape, self.mean = tuple(mean.shape), mean.reshape(-1)
        self.basis, self.variances, self.floor = basis, variances, float(floor) if basis.shape[1] < d else 0.0

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_moments(cls, mean: torch.Tensor, cov: torch.Tensor) -> "Teleport":
        """From a mean ``(*shape)`` and a full covariance ``(D, D)``."""
        cov = torch.as_tensor(cov, dtype=torch.float64)
        lam, q = torch.linalg.eigh(0.5 * (cov + cov.T))
        return cls(mean, q, lam.clamp_min(0.0))

    @classmethod
    def fit(cls, x: torch.Tensor, rank: int | None = None) -> "Teleport":
        """The Gaussian of the samples ``x`` ``(N, *shape)``: their mean and covariance, all of it
        (``rank=None``, for ``D`` up to 4096) or its top ``rank`` principal directions with the mean
        variance of the rest as the floor."""
        x = torch.as_tensor(x, dtype=torch.float64)
        if x.ndim < 2 or x.shape[0] < 2:
            raise ValueError(f"fit needs at least 2 samples shaped (N, ...), got {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("fit: the samples contain NaN or Inf")
        n, flat = x.shape[0], x.reshape(x.shape[0], -1)
        d = flat.shape[1]
        if rank is None and d > 4096:
            raise ValueError(f"a full covariance of {d} values is {d * d * 8 / 2**30:.1f} GiB: pass rank= (e.g. 64)")
        mean = flat.mean(0)
        centred = flat - mean
        if rank is None or rank >= min(d, n - 1):
            return cls.from_moments(mean.reshape(x.shape[1:]), centred.T @ centred / (n - 1))
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        _, s, vh = torch.linalg.svd(centred, full_matrices=False)
        var = s ** 2 / (n - 1)
        total = float(centred.pow(2).sum()) / (n - 1)
        floor = max(total - float(var[:rank].sum()), 0.0) / (d - rank)
        return cls(mean.reshape(x.shape[1:]), vh[:rank].T, var[:rank], floor)

    # ------------------------------------------------------------------ the Gaussian's field and flow
    def _spectral(self, r: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``fn(Sigma)`` applied to the rows of ``r`` ``(B, D)``: ``fn(lam)`` along the basis, ``fn(floor)``
        on the rest. ``fn`` maps a tensor of variances to per-direction factors (broadcast over rows)."""
        u = self.basis.to(r.device)
        coef = r @ u
        out = (coef * fn(self.variances.to(r.device))) @ u.T
        if u.shape[1] < u.shape[0]:
            out = out + (r - coef @ u.T) * fn(torch.tensor(self.floor, dtype=torch.float64, device=r.device))
        return out

    def mean_of(self, batch: int, label=None) -> torch.Tensor:
        """The mean ``(batch, D)`` of each row's Gaussian (one Gaussian: ``mu`` for every row)."""
        return self.mean.expand(batch, -1)

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"samples must be shaped (B, {', '.join(map(str, self.shape))}), got {tuple(x.shape)}")
        return x.reshape(x.shape[0], -1).to(torch.float64)

    def x_hat(self, x_t: torch.Tensor, schedule: Schedule, t, label=None) -> torch.Tensor:
        """The Gaussian's denoiser ``E[x | x_t] = mu + alpha Sigma (alpha^2 Sigma + sigma^2 I)^-1 (x_t - alpha mu)``.
        ``label`` is for :class:`ClassTeleport`; one Gaussian ignores it."""
        a, s = float(schedule.alpha(as_time(t))), float(schedule.sigma(as_time(t)))
        r = self._flat(x_t) - a * self.mean.to(x_t.device)
        out = self.mean.to(x_t.device) + self._spectral(r, lambda lam: a * lam / (a * a * lam + s * s))
        return out.reshape(x_t.shape).to(x_t.dtype)

    def flow(self, x_t: torch.Tensor, schedule: Schedule, t, s, label=None) -> torch.Tensor:
        """The Gaussian's probability-flow map from time ``t`` to time ``s``:
        ``x_s = alpha_s mu + C_s^{1/2} C_t^{-1/2} (x_t - alpha_t mu)``."""
        a_t, s_t = float(schedule.alpha(as_time(t))), float(schedule.sigma(as_time(t)))
        a_s, s_s = float(schedule.alpha(as_time(s))), float(schedule.sigma(as_time(s)))
        mean = self.mean.to(x_t.device)
        r = self._flat(x_t) - a_t * mean

        def ratio(lam):
            return torch.sqrt((a_s * a_s * lam + s_s * s_s) / (a_t * a_t * lam + s_t * s_t).clamp_min(1e-300))
        return (a_s * mean + self._spectral(r, ratio)).reshape(x_t.shape).to(x_t.dtype)

    def start(self, z: torch.Tensor, schedule: Schedule, t, label=None) -> torch.Tensor:
        """``x_t = alpha_t mu + C_t^{1/2} z`` for standard normal ``z`` ``(B, *shape)``: where the Gaussian's
        probability-flow ODE carries the noise ``z`` from the top of the schedule, at no network cost."""
        a, s = float(schedule.alpha(as_time(t))), float(schedule.sigma(as_time(t)))
        out = a * self.mean.to(z.device) + self._spectral(self._flat(z), lambda lam: torch.sqrt(a * a * lam + s * s))
        return out.reshape(z.shape).to(z.dtype)

    # ------------------------------------------------------------------ how much of a model it explains
    def explained(self, denoiser, t, z: torch.Tensor, cond: dict | None = None) -> float:
        """The fraction of the model's field at time ``t`` that the Gaussian explains, on the states
        ``start(z, t)``: ``1 - E|x_hat - x_hat_G|^2 / E|x_hat - mu|^2`` (1 for Gaussian data; one model
        evaluation of the batch). With ``cond={"label": ...}`` a :class:`ClassTeleport` uses each
        sample's class Gaussian (and its mean as ``mu``)."""
        miss, spread = self._miss(denoiser, t, z, cond)
        return 1.0 - miss / max(spread, 1e-300)

    def _miss(self, denoiser, t, z: torch.Tensor, cond: dict | None = None) -> tuple[float, float]:
        """``(E|x_hat - x_hat_G|^2, E|x_hat - mu|^2)`` of the model at ``start(z, t)``."""
        schedule = denoiser.schedule
        label = (cond or {}).get("label")
        x_t = self.start(z, schedule, t, label=label)
        with torch.no_grad():
            model = denoiser(x_t, float(t), **(cond or {})).reshape(z.shape[0], -1).to(torch.float64)
        gauss = self.x_hat(x_t, schedule, t, label=label).reshape(z.shape[0], -1).to(torch.float64)
        mu = self.mean_of(z.shape[0], label).to(device=model.device, dtype=torch.float64)
        return float((model - gauss).pow(2).sum(1).mean()), float((model - mu).pow(2).sum(1).mean())

    def choose_time(self, denoiser, z: torch.Tensor, *, threshold: float = 0.99, candidates: int = 24,
                    cond: dict | None = None) -> tuple[float, list[tuple[float, float]]]:
        """The lowest time, among ``candidates`` times uniform in logSNR from the top of the schedule
        (all but the lowest, where no step would be left), down to which the Gaussian explains at least
        ``threshold`` of the model's field at every candidate (:meth:`explained`, scanning from the top;
        ``candidates`` model evaluations of ``z`` at most), counting as explained the part of the miss
        the model already shows at the top (its own error there, 0 for an exact field: a learned
        model's small error at the top, where the field varies little, does not hide the skip).
        Returns the time (the top of the schedule when the first candidate below it falls short, i.e.
        no skip) and the ``(t, share)`` pairs measured."""
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
        schedule = denoiser.schedule
        top = start_time(schedule)
        # the lowest level is left out: a run needs room for a step above the schedule's smallest time
        times = logsnr_grid(candidates, schedule, t_max=top, denoise_to_zero=False).tolist()[:-1]
        chosen, measured, base = top, [], None
        for t in times:
            miss, spread = self._miss(denoiser, t, z, cond)
            base = miss if base is None else base  # the model's own distance from the Gaussian at the top
            measured.append((t, 1.0 - miss / max(spread, 1e-300)))
            if (miss - base) / max(spread, 1e-300) > 1.0 - threshold:
                break
            chosen = t
        return chosen, measured

    # ------------------------------------------------------------------ storage
    def state(self) -> dict[str, torch.Tensor]:
        """The tensors that define it (for a safetensors file beside a checkpoint)."""
        return {"teleport.mean": self.mean.reshape(self.shape).contiguous(), "teleport.basis": self.basis.contiguous(),
                "teleport.variances": self.variances.contiguous(),
                "teleport.floor": torch.tensor(self.floor, dtype=torch.float64)}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> "Teleport":
        if cls is Teleport and "teleport.classes" in state:
            return ClassTeleport.from_state(state)
        try:
            return cls(state["teleport.mean"], state["teleport.basis"], state["teleport.variances"],
                       float(state["teleport.floor"]))
        except KeyError as err:
            raise ValueError(f"not a teleport state: no {err.args[0]!r}") from None


class ClassTeleport(Teleport):
    """One Gaussian per class of a class-conditional model, and the data's overall Gaussian for samples
    without a class (label ``-1``, or the null label of classifier-free guidance, any label outside
    ``0..C-1``). At high noise a class-conditional field is its class's Gaussian's far more than the
    overall one's (the class means differ), so the rule skips further. Every method takes ``label``
    (one per sample); without it the overall Gaussian answers."""

    def __init__(self, overall: Teleport, per_class: list[Teleport]):
        if not per_class or any(c.shape != overall.shape for c in per_class):
            raise ValueError("a class teleport needs at least one class Gaussian, each of the overall one's shape")
        super().__init__(overall.mean.reshape(overall.shape), overall.basis, overall.variances, overall.floor)
        self.overall, self.per_class = overall, list(per_class)

    @classmethod
    def fit_classes(cls, x: torch.Tensor, labels: torch.Tensor, rank: int | None = None) -> "ClassTeleport":
        """The Gaussians of the samples ``x`` of each class ``0..C-1`` (``labels``) and of all of them."""
        labels = torch.as_tensor(labels).long().reshape(-1)
        if labels.shape[0] != x.shape[0]:
            raise ValueError(f"labels must give one class per sample ({x.shape[0]}), got {labels.shape[0]}")
        count = int(labels.max()) + 1
        per = []
        for c in range(count):
            xs = x[labels == c]
            if xs.shape[0] < 2:
                raise ValueError(f"class {c} has {xs.shape[0]} samples: a class Gaussian needs at least 2")
            per.append(Teleport.fit(xs, rank=rank))
        return cls(Teleport.fit(x, rank=rank), per)

    def _gauss(self, c: int) -> Teleport:
        """Class ``c``'s Gaussian, or the overall one outside ``0..C-1``."""
        return self.per_class[c] if 0 <= c < len(self.per_class) else self.overall

    @staticmethod
    def _labels(label, batch: int) -> torch.Tensor:
        """One class per row (a single class given for all), on the CPU."""
        label = torch.as_tensor(label).reshape(-1).to(torch.long).cpu()
        label = label.expand(batch) if label.numel() == 1 else label
        if label.shape[0] != batch:
            raise ValueError(f"label must give one class per sample ({batch}), got {label.shape[0]}")
        return label

    def _by_class(self, method: str, x: torch.Tensor, label, *args, **kwargs) -> torch.Tensor:
        """``method`` of each row's Gaussian (:meth:`_gauss`)."""
        if label is None:
            return getattr(self.overall, method)(x, *args, **kwargs)
        label = self._labels(label, x.shape[0])
        out = torch.empty_like(x)
        for c in label.unique().tolist():
            rows = (label == c).to(x.device)
            out[rows] = getattr(self._gauss(c), method)(x[rows], *args, **kwargs)
        return out

    def x_hat(self, x_t, schedule, t, label=None):
        return self._by_class("x_hat", x_t, label, schedule, t)

    def flow(self, x_t, schedule, t, s, label=None):
        return self._by_class("flow", x_t, label, schedule, t, s)

    def start(self, z, schedule, t, label=None):
        return self._by_class("start", z, label, schedule, t)

    def mean_of(self, batch: int, label=None) -> torch.Tensor:
        if label is None:
            return self.overall.mean_of(batch)
        return torch.stack([self._gauss(c).mean for c in self._labels(label, batch).tolist()])

    def state(self) -> dict[str, torch.Tensor]:
        out = dict(self.overall.state())
        out["teleport.classes"] = torch.tensor(len(self.per_class))
        for c, gauss in enumerate(self.per_class):
            out.update({k.replace("teleport.", f"teleport.class{c}.", 1): v for k, v in gauss.state().items()})
        return out

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> "ClassTeleport":
        try:
            count = int(state["teleport.classes"])
            per = [Teleport.from_state({k.replace(f"teleport.class{c}.", "teleport.", 1): v for k, v in state.items()
                                        if k.startswith(f"teleport.class{c}.")}) for c in range(count)]
        except (KeyError, ValueError) as err:
            raise ValueError(f"not a class teleport state: {err}") from None
        return cls(Teleport.from_state({k: v for k, v in state.items() if k.count(".") == 1 and k != "teleport.classes"}), per)
