"""Gaussian-mixture data, for which everything a diffusion model learns is closed form.

With data ``x ~ sum_k pi_k N(mu_k, Sigma_k)`` and ``x_t = alpha x + sigma eps``, the marginal is the
mixture ``p_t = sum_k pi_k N(alpha mu_k, C_k)`` with ``C_k = alpha^2 Sigma_k + sigma^2 I``, and

    x_hat(x_t) = E[x | x_t] = sum_k w_k(x_t) (mu_k + alpha Sigma_k C_k^-1 (x_t - alpha mu_k)),

where ``w_k`` are the posterior responsibilities (computed with log-sum-exp). The score, eps and
probability-flow velocity follow from ``x_hat``. For linear-Gaussian measurements
``y = A x + noise_std * n`` the posterior is again a Gaussian mixture (:meth:`GaussianMixture.posterior`),
and for one component the probability-flow ODE is linear with the exact map
``x_s = alpha_s mu + C_s^{1/2} C_t^{-1/2} (x_t - alpha_t mu)`` (:meth:`GaussianMixture.flow_map`).

A labelled mixture gives each component a class (``classes``). The class-conditional data
``p(x | c)`` is the mixture of class ``c``'s components, so every quantity above exists exactly for
it too (pass ``label=``, one class per sample; ``-1`` or ``None`` means unconditional), and the
noise-aware classifier is ``log p_t(c | x_t) = logsumexp_{k in c} l_k - logsumexp_k l_k`` over the
same component log-likelihoods ``l_k`` (:meth:`GaussianMixture.class_log_prob`).

All arithmetic is float64. States may have any trailing shape; they are flattened to ``D`` values.
"""

from __future__ import annotations

import math

import torch

from ..schedules import Schedule
from ..shapes import Time, as_time, expand_as_batch
from .covariance import Covariance, Diagonal, Full


def _shared_time(t: torch.Tensor) -> torch.Tensor:
    """``t``, or its one value where a ``(B,)`` time holds the same value for the whole batch (as a
    sampler's step does), so that the per-time terms of every component are computed once, not once per
    sample. Only on the CPU outside a traced program (the check reads the values) and for a time that
    carries no gradient (each sample's time keeps its own)."""
    if (t.ndim == 1 and t.numel() > 1 and t.device.type == "cpu" and not t.requires_grad
            and not torch.compiler.is_compiling() and bool((t == t[0]).all())):
        return t[0]
    return t


class GaussianMixture:
    """``sum_k weights[k] N(means[k], Sigma_k)``.

    Args:
        weights: ``(K,)`` positive mixture weights (normalised here).
        means: ``(K, D)``.
        cov: a :class:`~sdeflow.analytic.covariance.Covariance`, a ``(K, D)`` tensor of variances
            (diagonal) or a ``(K, D, D)`` tensor (full).
        classes: optional ``(K,)`` class of each component, integers ``0..C-1`` each used at least
            once: the mixture is then labelled (class-conditional data).
    """

    def __init__(self, weights, means, cov: Covariance | torch.Tensor, classes=None):
        weights = torch.as_tensor(weights, dtype=torch.float64)
        means = torch.as_tensor(means, dtype=torch.float64)
        if not isinstance(cov, Covariance):
            cov = torch.as_tensor(cov, dtype=torch.float64)
            cov = Diagonal(cov) if cov.ndim == 2 else Full(cov)
        if means.ndim != 2 or weights.shape != means.shape[:1] or bool((weights <= 0).any()):
            raise ValueError("need weights (K,) > 0 and means (K, D)")
        if (cov.num_components, cov.dim) != tuple(means.shape):
            raise ValueError(f"covariance is for {cov.num_components} components in {cov.dim} dims, "
                             f"means are {tuple(means.shape)}")
        self.weights = weights / weights.sum()
        self.means, self.cov = means, cov
        self.num_components, self.dim = means.shape
        self.classes, self.num_classes = None, 0
        if classes is not None:
            classes = torch.as_tensor(classes).long().flatten()
            if classes.shape != weights.shape:
                raise ValueError(f"classes must give one class per component ({weights.shape[0]}), got {tuple(classes.shape)}")
            c = int(classes.max()) + 1
            if int(classes.min()) < 0 or torch.bincount(classes, minlength=c).min() == 0:
                raise ValueError("classes must be integers 0..C-1 with every class used by some component")
            self.classes, self.num_classes = classes, c

    # ---- labels -------------------------------------------------------------------------------
    def _labels(self, label, batch: int) -> torch.Tensor | None:
        """``label`` as a ``(batch,)`` long tensor (``-1``: unconditional), or None when all are."""
        if label is None:
            return None
        if self.classes is None:
            raise ValueError("this mixture has no classes: pass classes= to condition on a label")
        label = torch.as_tensor(label).long().cpu().reshape(-1)
        if label.numel() == 1:
            label = label.expand(batch)
        if label.shape[0] != batch:
            raise ValueError(f"label must be one class or one per sample ({batch}), got {label.shape[0]}")
        if bool(((label < -1) | (label >= self.num_classes)).any()):
            raise ValueError(f"labels must be classes 0..{self.num_classes - 1} or -1 (unconditional)")
        return None if bool((label == -1).all()) else label

    def _condition(self, logits: torch.Tensor, label) -> torch.Tensor:
        """Component log-weights restricted to each sample's class (rows with label -1 unchanged)."""
        label = self._labels(label, logits.shape[0])
        if label is None:
            return logits
        keep = (self.classes[None, :] == label[:, None]) | (label[:, None] == -1)
        return logits.masked_fill(~keep, -math.inf)

    def class_weights(self) -> torch.Tensor:
        """``p(c)``, shape ``(C,)``."""
        if self.classes is None:
            raise ValueError("this mixture has no classes")
        return torch.zeros(self.num_classes, dtype=torch.float64).index_add_(0, self.classes, self.weights)

    def conditional(self, c: int) -> "GaussianMixture":
        """``p(x | c)``: class ``c``'s components as a mixture of their own."""
        if self.classes is None or not 0 <= int(c) < self.num_classes:
            raise ValueError(f"no class {c!r} in this mixture")
        rows = torch.nonzero(self.classes == int(c)).flatten()
        return GaussianMixture(self.weights[rows], self.means[rows], Full(self.cov.dense()[rows]))

    def class_log_prob(self, x_t: torch.Tensor, schedule: Schedule, t: Time, label) -> torch.Tensor:
        """``log p_t(c | x_t)`` for each sample's class ``c``, shape ``(B,)`` (the exact noise-aware classifier)."""
        logits = self._terms(x_t, schedule, t)[3]
        label = self._labels(label, logits.shape[0])
        if label is None or bool((label < 0).any()):
            raise ValueError("class_log_prob needs a class 0..C-1 for every sample")
        return torch.logsumexp(self._condition(logits, label), 1) - torch.logsumexp(logits, 1)

    # ---- data ---------------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None, label=None) -> torch.Tensor:
        """``n`` exact samples of the data, shape ``(n, D)`` (of ``p(x | label)`` when given)."""
        comp = self.sample_components(n, generator, label)
        z = torch.randn(n, self.cov.noise_dim, dtype=torch.float64, generator=generator)
        x = self.means[comp].clone()
        for k in range(self.num_components):
            rows = comp == k
            if bool(rows.any()):
                x[rows] += self.cov.root_apply(k, z[rows])
        return x

    def sample_components(self, n: int, generator: torch.Generator | None = None, label=None) -> torch.Tensor:
        """``n`` component indices drawn from the weights (within each sample's class when labelled)."""
        label = self._labels(label, n)
        if label is None:
            return torch.multinomial(self.weights, n, replacement=True, generator=generator)
        logw = self._condition(torch.log(self.weights).expand(n, -1), label)
        return torch.multinomial(torch.softmax(logw, 1), 1, generator=generator)[:, 0]

    def sample_labelled(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, c)``: ``n`` samples with their classes, drawn from the joint ``p(x, c)``."""
        if self.classes is None:
            raise ValueError("this mixture has no classes")
        labels = torch.multinomial(self.class_weights(), n, replacement=True, generator=generator)
        return self.sample(n, generator, labels), labels

    def sample_t(self, n: int, schedule: Schedule, t: float, generator: torch.Generator | None = None, label=None):
        """Exact samples of ``p_t`` (``p_t(. | label)`` when given): returns ``(x_t, x)``, each ``(n, D)``."""
        x = self.sample(n, generator, label)
        eps = torch.randn(x.shape, dtype=torch.float64, generator=generator)
        return schedule.alpha(t) * x + schedule.sigma(t) * eps, x

    def mean(self) -> torch.Tensor:
        return self.weights @ self.means

    def covariance(self) -> torch.Tensor:
        """Covariance of the whole mixture, ``(D, D)``."""
        m = self.mean()
        second = torch.einsum("k,kde->de", self.weights, self.cov.dense())
        second = second + torch.einsum("k,kd,ke->de", self.weights, self.means, self.means)
        return second - torch.outer(m, m)

    # ---- the noised marginal ------------------------------------------------------------------
    def _terms(self, x_t: torch.Tensor, schedule: Schedule, t: Time):
        x = x_t.reshape(x_t.shape[0], -1).to(torch.float64)
        if x.shape[1] != self.dim:
            raise ValueError(f"state has {x.shape[1]} values per sample, the mixture has dimension {self.dim}")
        t = _shared_time(as_time(t))
        a, s = schedule.alpha(t).reshape(-1, 1), schedule.sigma(t).reshape(-1, 1)  # (B, 1), or (1, 1) shared
        r = x[:, None, :] - a[..., None] * self.means           # (B, K, D)
        quad, logdet, gain = self.cov.noisy(a, s, r)
        logits = torch.log(self.weights) - 0.5 * (quad + logdet + self.dim * math.log(2 * math.pi))
        return x, a, s, logits, gain

    def log_prob_t(self, x_t: torch.Tensor, schedule: Schedule, t: Time, label=None) -> torch.Tensor:
        """``log p_t(x_t)`` (``log p_t(x_t | label)`` when given), shape ``(B,)``."""
        return self._log_given(self._terms(x_t, schedule, t)[3], label)

    def _log_given(self, logits: torch.Tensor, label) -> torch.Tensor:
        out = torch.logsumexp(self._condition(logits, label), dim=1)
        labels = self._labels(label, logits.shape[0])
        if labels is None:
            return out
        log_pc = torch.log(self.class_weights())[labels.clamp_min(0)]
        return out - torch.where(labels >= 0, log_pc, torch.zeros_like(log_pc))

    def log_prob(self, x: torch.Tensor, label=None) -> torch.Tensor:
        """Log density of the data (``t = 0``, no noise; given ``label`` when passed), shape ``(B,)``."""
        x = x.reshape(x.shape[0], -1).to(torch.float64)
        r = x[:, None, :] - self.means
        one = torch.ones(x.shape[0], 1, dtype=torch.float64)
        quad, logdet, _ = self.cov.noisy(one, 0 * one, r)
        logits = torch.log(self.weights) - 0.5 * (quad + logdet + self.dim * math.log(2 * math.pi))
        return self._log_given(logits, label)

    def responsibilities(self, x_t: torch.Tensor, schedule: Schedule, t: Time, label=None) -> torch.Tensor:
        """Posterior component probabilities ``w_k(x_t)`` (given ``label`` when passed), shape ``(B, K)``."""
        return torch.softmax(self._condition(self._terms(x_t, schedule, t)[3], label), dim=1)

    def x_hat(self, x_t: torch.Tensor, schedule: Schedule, t: Time, label=None) -> torch.Tensor:
        """``E[x | x_t]`` (``E[x | x_t, c]`` given ``label``) in float64, same shape as ``x_t``."""
        _, a, _, logits, gain = self._terms(x_t, schedule, t)
        w = torch.softmax(self._condition(logits, label), dim=1)
        comp = self.means + a[..., None] * gain                  # (B, K, D)
        return torch.einsum("bk,bkd->bd", w, comp).reshape(x_t.shape)

    def eps(self, x_t, schedule, t, label=None):
        """``E[eps | x_t] = (x_t - alpha x_hat) / sigma`` (needs sigma > 0)."""
        t = as_time(t)
        return _per_sample(x_t.to(torch.float64) - _per_sample(self.x_hat(x_t, schedule, t, label), schedule.alpha(t)),
                           1.0 / schedule.sigma(t))

    def score(self, x_t, schedule, t, label=None):
        """``grad log p_t(x_t) = (alpha x_hat - x_t) / sigma^2`` (needs sigma > 0)."""
        return -_per_sample(self.eps(x_t, schedule, t, label), 1.0 / schedule.sigma(as_time(t)))

    def velocity(self, x_t, schedule, t, label=None):
        """Probability-flow ODE field ``dx_t/dt = alpha' x_hat + sigma' eps_hat``."""
        t = as_time(t)
        return (_per_sample(self.x_hat(x_t, schedule, t, label), schedule.d_alpha(t))
                + _per_sample(self.eps(x_t, schedule, t, label), schedule.d_sigma(t)))

    def network_output(self, x_t, schedule, t, parameterization, label=None):
        """The output ``F`` a network in ``parameterization`` (a name or object) converges to at the
        state ``x_t`` (float64): ``x_hat`` in that parameterization's form, and on clean data
        (``sigma = 0``), where ``x_hat = x_t / alpha``, the limit that the vanishing noise prediction
        of a smooth density gives (``eps_hat = 0``: a rectified-flow velocity network answers
        ``-x_t`` there). The exact stand-in for a trained network, in tests and benchmarks."""
        from ..parameterizations import as_parameterization

        p, t = as_parameterization(parameterization), as_time(t)
        x_t = x_t.to(torch.float64)
        at_data = schedule.sigma(t) == 0
        if not bool(at_data.any()):
            return p.from_x_hat(self.x_hat(x_t, schedule, t, label), x_t, schedule, t)
        e_x, e_f = p.eps_coefficients(schedule, t)
        noise_form = at_data & torch.isfinite(e_x) & (e_f != 0)  # else (x0) from_x_hat holds on clean data
        # rows answered by the limit are computed at a harmless time, so that neither branch of the
        # selection is infinite (a 0 * inf in the backward pass would poison the gradient)
        t_safe = torch.where(noise_form, torch.full_like(t, 0.5), t)
        out = p.from_x_hat(self.x_hat(x_t, schedule, t_safe, label), x_t, schedule, t_safe)
        limit = _per_sample(x_t, torch.where(noise_form, -e_x / torch.where(noise_form, e_f, 1.0), 0.0))
        return torch.where(expand_as_batch(noise_form, x_t), limit, out)

    def denoiser(self, schedule: Schedule):
        """This mixture's exact ``x_hat`` as a :class:`~sdeflow.denoisers.Denoiser`."""
        from .denoiser import OracleDenoiser

        return OracleDenoiser(self, schedule)

    def classifier(self, schedule: Schedule):
        """This mixture's exact noise-aware classifier ``(x_t, t, label) -> log p_t(c | x_t)``."""
        from .denoiser import OracleClassifier

        return OracleClassifier(self, schedule)

    # ---- exact maps and posteriors ------------------------------------------------------------
    def flow_map(self, x_t: torch.Tensor, schedule: Schedule, t: Time, s: Time) -> torch.Tensor:
        """Exact probability-flow ODE map from time ``t`` to time ``s`` (one component only)."""
        if self.num_components != 1:
            raise ValueError("the exact flow map is closed form for a single Gaussian only")
        x = x_t.reshape(x_t.shape[0], -1).to(torch.float64)
        t, s = as_time(t), as_time(s)
        a_t, a_s = schedule.alpha(t).reshape(-1, 1), schedule.alpha(s).reshape(-1, 1)
        lam, q = self.cov.eigh()
        c_t = a_t ** 2 * lam + schedule.sigma(t).reshape(-1, 1) ** 2
        c_s = a_s ** 2 * lam + schedule.sigma(s).reshape(-1, 1) ** 2
        ratio = torch.sqrt(c_s / c_t)
        r = x - a_t * self.means
        if q is None:
            out = ratio * r
        else:
            out = ((r @ q[0]) * ratio) @ q[0].T
        return (a_s * self.means + out).reshape(x_t.shape)

    def posterior(self, A: torch.Tensor, y: torch.Tensor, noise_std: float) -> "GaussianMixture":
        """Exact posterior of ``x`` given ``y = A x + noise_std * n``, ``A`` of shape ``(M, D)``.

        Component ``k`` becomes ``N(mu_k + G_k S_k^-1 (y - A mu_k), Sigma_k - G_k S_k^-1 G_k^T)`` with
        ``G_k = Sigma_k A^T``, ``S_k = A Sigma_k A^T + noise_std^2 I``, and its weight is multiplied
        by the evidence ``N(y; A mu_k, S_k)``. The result has dense covariances.
        """
        A = torch.as_tensor(A, dtype=torch.float64)
        y = torch.as_tensor(y, dtype=torch.float64).flatten()
        if A.ndim != 2 or A.shape[1] != self.dim or y.shape[0] != A.shape[0]:
            raise ValueError(f"need A of shape (M, {self.dim}) and y of shape (M,), "
                             f"got {tuple(A.shape)} and {tuple(y.shape)}")
        if noise_std < 0:
            raise ValueError("noise_std must be >= 0")
        m = A.shape[0]
        g = self.cov.matvec(A[:, None, :].expand(m, self.num_components, self.dim)).permute(1, 2, 0)  # (K,D,M)
        s = A @ g + noise_std ** 2 * torch.eye(m, dtype=torch.float64)                             # (K,M,M)
        chol = torch.linalg.cholesky(0.5 * (s + s.transpose(1, 2)))
        resid = y - self.means @ A.T                                                               # (K,M)
        sol = torch.cholesky_solve(resid[..., None], chol)[..., 0]
        means = self.means + torch.einsum("kdm,km->kd", g, sol)
        cov = self.cov.dense() - g @ torch.cholesky_solve(g.transpose(1, 2), chol)
        logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        log_ev = -0.5 * ((resid * sol).sum(-1) + logdet + m * math.log(2 * math.pi))
        logw = torch.log(self.weights) + log_ev
        return GaussianMixture(torch.softmax(logw, 0), means, Full(cov), classes=self.classes)


    def noised(self, schedule: Schedule, t: float) -> "GaussianMixture":
        """``p_t`` as a mixture of its own: ``N(alpha m_k, alpha^2 Sigma_k + sigma^2 I)`` (dense covariances)."""
        a, s = float(schedule.alpha(t)), float(schedule.sigma(t))
        cov = a * a * self.cov.dense() + s * s * torch.eye(self.dim, dtype=torch.float64)
        return GaussianMixture(self.weights, a * self.means, Full(cov), classes=self.classes)

    def tilted(self, b) -> "GaussianMixture":
        """The exact tilt ``p(x) exp(b^T x) / Z`` by a linear reward ``b^T x``: component ``k`` becomes
        ``N(m_k + Sigma_k b, Sigma_k)`` and its weight is multiplied by ``exp(b^T m_k + b^T Sigma_k b / 2)``
        (completing the square in each component's exponent)."""
        b = torch.as_tensor(b, dtype=torch.float64).flatten()
        if b.shape != (self.dim,) or not bool(torch.isfinite(b).all()):
            raise ValueError(f"the reward direction b must be {self.dim} finite numbers, got shape {tuple(b.shape)}")
        shift = self.cov.matvec(b.expand(1, self.num_components, self.dim))[0]                     # (K, D)
        logw = torch.log(self.weights) + self.means @ b + 0.5 * shift @ b
        return GaussianMixture(torch.softmax(logw, 0), self.means + shift, self.cov, classes=self.classes)


def _per_sample(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return x * expand_as_batch(torch.as_tensor(c, dtype=torch.float64), x)
