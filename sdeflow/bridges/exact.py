"""Exact answers for pinned processes: paired Gaussian-mixture data with a linear-Gaussian link.

With ``x0 ~ sum_k pi_k N(mu_k, Sigma_k)`` and the source ``x1 = A x0 + noise_std n``, the law of the
clean data given the source is again a Gaussian mixture (:meth:`GaussianMixture.posterior`): component
``k`` has mean ``m_k(x1) = mu_k + G_k S_k^-1 (x1 - A mu_k)`` (``G_k = Sigma_k A^T``,
``S_k = A Sigma_k A^T + noise_std^2 I``), covariance ``P_k = Sigma_k - G_k S_k^-1 G_k^T`` (the same for
every source) and weight ``pi_k N(x1; A mu_k, S_k)``. On the residual ``y = a x0 + c z`` of any process
that is an ordinary noised mixture, so :class:`BridgeOracle` gives the exact ``x_hat = E[x0 | y, x1]`` for
a batch with one source per sample: the stand-in for a trained bridge network in tests and benchmarks.
"""

from __future__ import annotations

import math

import torch

from ..analytic import GaussianMixture
from ..analytic.covariance import Full
from ..shapes import as_time
from .denoiser import PinnedDenoiser
from .processes import Process


class PairedMixture:
    """Pairs ``(x0, x1)`` with ``x0`` from ``prior`` (a :class:`~sdeflow.analytic.GaussianMixture`) and
    ``x1 = A x0 + noise_std n``; ``A`` is ``(D, D)`` (a source of the data's own shape)."""

    def __init__(self, prior: GaussianMixture, A, noise_std: float):
        A = torch.as_tensor(A, dtype=torch.float64)
        d = prior.dim
        if A.shape != (d, d):
            raise ValueError(f"the link A must be ({d}, {d}) (the source has the data's shape), got {tuple(A.shape)}")
        if not (math.isfinite(noise_std) and noise_std > 0):
            raise ValueError(f"noise_std must be > 0 (the source is a noisy measurement), got {noise_std}")
        self.prior, self.A, self.noise_std = prior, A, float(noise_std)
        cov = prior.cov.dense()                                                    # (K, D, D)
        g = cov @ A.T                                                             # (K, D, D)
        s = A @ g + noise_std ** 2 * torch.eye(d, dtype=torch.float64)
        chol = torch.linalg.cholesky(0.5 * (s + s.transpose(1, 2)))
        self._chol = chol
        self._gain = torch.cholesky_solve(g.transpose(1, 2), chol).transpose(1, 2)  # G S^-1, (K, D, D)
        self._logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        post = cov - self._gain @ g.transpose(1, 2)
        self.posterior_cov = Full(0.5 * (post + post.transpose(1, 2)))

    @property
    def dim(self) -> int:
        return self.prior.dim

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` pairs ``(x0, x1)``, each ``(n, D)`` float64."""
        x0 = self.prior.sample(n, generator)
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
        return x0, x0 @ self.A.T + self.noise_std * noise

    def parts(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample component log-weights ``(B, K)`` and means ``(B, K, D)`` of ``p(x0 | x1)``."""
        x1 = source.reshape(source.shape[0], -1).to(torch.float64)
        mu = self.prior.means                                                     # (K, D)
        resid = x1[:, None, :] - mu @ self.A.T                                    # (B, K, D)
        means = mu + torch.einsum("kdm,bkm->bkd", self._gain, resid)
        sol = torch.stack([torch.cholesky_solve(resid[:, k, :, None], self._chol[k])[..., 0]
                           for k in range(mu.shape[0])], 1)
        logw = torch.log(self.prior.weights) - 0.5 * ((resid * sol).sum(-1) + self._logdet
                                                       + self.dim * math.log(2 * math.pi))
        return torch.log_softmax(logw, 1), means

    def posterior(self, source: torch.Tensor) -> GaussianMixture:
        """``p(x0 | x1)`` for one source (shape ``(D,)`` or ``(1, ...)``) as a mixture of its own."""
        logw, means = self.parts(source.reshape(1, -1))
        return GaussianMixture(logw[0].exp(), means[0], self.posterior_cov)

    def sample_posterior(self, source: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One exact draw of ``p(x0 | x1)`` per source, shaped like ``source``."""
        logw, means = self.parts(source)
        k = torch.multinomial(logw.exp(), 1, generator=generator)[:, 0]
        z = torch.randn(source.shape[0], self.dim, generator=generator, dtype=torch.float64)
        lam, q = self.posterior_cov.lam, self.posterior_cov.q
        draw = means[torch.arange(source.shape[0]), k] + torch.einsum("bde,be->bd", q[k], z * lam[k].sqrt())
        return draw.reshape(source.shape)

    def denoiser(self, process: Process) -> "BridgeOracle":
        return BridgeOracle(self, process)


class BridgeOracle(PinnedDenoiser):
    """The exact ``x_hat = E[x0 | y, x1]`` of a :class:`PairedMixture` on the residual path of ``process``:
    ``forward(y, t, source=x1)``, float64 inside, the state's dtype out."""

    def __init__(self, pairs: PairedMixture, process: Process):
        super().__init__(process)
        self.pairs = pairs

    def forward(self, y, t, source=None, **cond):
        if source is None:
            raise ValueError("a bridge needs its source: forward(y, t, source=x1)")
        logw, means = self.pairs.parts(source)
        t = as_time(t)
        a, _, c = self.process.abc(t)
        b = y.shape[0]
        a, c = a.reshape(-1, 1).expand(b, 1), c.reshape(-1, 1).expand(b, 1)
        prior_mean = torch.einsum("bk,bkd->bd", logw.exp(), means)
        yy = y.reshape(b, -1).to(torch.float64)
        clean = (c == 0) & (a > 0)
        informative = (a > 0) & ~clean
        # rows at a = 0 (the pinned end, or a process' own start) know only the source; rows at c = 0 are data
        a_safe, c_safe = torch.where(informative, a, 1.0), torch.where(informative, c, 1.0)
        r = yy[:, None, :] - a_safe[..., None] * means
        quad, logdet, gain = self.pairs.posterior_cov.noisy(a_safe, c_safe, r)
        w = torch.softmax(logw - 0.5 * (quad + logdet), 1)
        x_hat = torch.einsum("bk,bkd->bd", w, means + a_safe[..., None] * gain)
        x_hat = torch.where(informative, x_hat, torch.where(clean, yy / torch.where(clean, a, 1.0), prior_mean))
        return x_hat.reshape(y.shape).to(y.dtype)
