"""Covariance structures for the components of a Gaussian mixture (K components in D dimensions).

Each structure answers the questions the oracle asks of the noised covariance
``C_k(t) = alpha^2 Sigma_k + sigma^2 I`` for a batch of residuals ``r`` of shape ``(B, K, D)``:
the quadratic form ``r^T C^-1 r``, ``log det C`` and the gain ``Sigma C^-1 r`` (all float64),
without ever forming a dense ``D x D`` matrix for the diagonal and low-rank structures.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class Covariance(ABC):
    """The interface every structure implements. ``alpha``/``sigma`` passed to :meth:`noisy` have shape ``(B, 1)``."""

    num_components: int
    dim: int

    @abstractmethod
    def noisy(self, alpha: torch.Tensor, sigma: torch.Tensor, r: torch.Tensor):
        """Return ``(r^T C^-1 r, log det C, Sigma C^-1 r)`` with shapes ``(B,K), (B,K), (B,K,D)``; ``alpha`` and
        ``sigma`` are ``(B, 1)``, or ``(1, 1)`` for a batch at one time (``log det C`` is then ``(1, K)``)."""

    @abstractmethod
    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``Sigma_k v_k`` for ``v`` of shape ``(..., K, D)``."""

    @abstractmethod
    def root_apply(self, k: int, z: torch.Tensor) -> torch.Tensor:
        """Map standard normal draws ``z`` of shape ``(N, self.noise_dim)`` to ``N(0, Sigma_k)``."""

    @property
    def noise_dim(self) -> int:
        return self.dim

    def dense(self) -> torch.Tensor:
        """The ``(K, D, D)`` matrices (costly for large D; used by posteriors and tests)."""
        eye = torch.eye(self.dim, dtype=torch.float64)
        return self.matvec(eye[:, None, :].expand(self.dim, self.num_components, self.dim)).permute(1, 2, 0)

    def eigh(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Eigenvalues ``(K, D)`` and eigenvectors ``(K, D, D)`` (``None`` meaning the identity)."""
        lam, q = torch.linalg.eigh(self.dense())
        return lam.clamp_min(0.0), q


def _f64(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


class Diagonal(Covariance):
    """``Sigma_k = diag(var[k])``; ``var`` has shape ``(K, D)``, entries >= 0."""

    def __init__(self, var):
        var = _f64(var)
        if var.ndim != 2 or bool((var < 0).any()):
            raise ValueError("diagonal variances must be a (K, D) tensor of non-negative values")
        self.var = var
        self.num_components, self.dim = var.shape

    def noisy(self, alpha, sigma, r):
        c = alpha[..., None] ** 2 * self.var + sigma[..., None] ** 2
        return (r * r / c).sum(-1), torch.log(c).sum(-1), self.var * r / c

    def matvec(self, v):
        return self.var * v

    def root_apply(self, k, z):
        return z * self.var[k].sqrt()

    def dense(self):
        return torch.diag_embed(self.var)

    def eigh(self):
        return self.var, None


class Full(Covariance):
    """Dense ``Sigma_k`` of shape ``(K, D, D)``, symmetric positive semi-definite. Stored by its
    eigendecomposition, so every noise level costs two rotations."""

    def __init__(self, cov):
        cov = _f64(cov)
        if cov.ndim != 3 or cov.shape[1] != cov.shape[2]:
            raise ValueError("full covariances must be a (K, D, D) tensor")
        cov = 0.5 * (cov + cov.transpose(1, 2))
        lam, q = torch.linalg.eigh(cov)
        scale = lam.abs().amax(-1, keepdim=True).clamp_min(1e-300)
        if bool((lam < -1e-10 * scale).any()):
            raise ValueError("full covariances must be positive semi-definite")
        self.cov, self.lam, self.q = cov, lam.clamp_min(0.0), q
        self.num_components, self.dim = lam.shape

    def noisy(self, alpha, sigma, r):
        z = torch.einsum("kde,bkd->bke", self.q, r)
        c = alpha[..., None] ** 2 * self.lam + sigma[..., None] ** 2
        gain = torch.einsum("kde,bke->bkd", self.q, self.lam * z / c)
        return (z * z / c).sum(-1), torch.log(c).sum(-1), gain

    def matvec(self, v):
        return torch.einsum("kde,...ke->...kd", self.cov, v)

    def root_apply(self, k, z):
        return (z * self.lam[k].sqrt()) @ self.q[k].T

    def dense(self):
        return self.cov

    def eigh(self):
        return self.lam, self.q


class LowRankPlusDiagonal(Covariance):
    """``Sigma_k = diag(d[k]) + U[k] U[k]^T`` with ``d`` of shape ``(K, D)`` (>= 0) and ``U`` of
    shape ``(K, D, R)``. Solves use the Woodbury identity and the determinant lemma, O(D R^2)."""

    def __init__(self, diag, factor):
        diag, factor = _f64(diag), _f64(factor)
        if diag.ndim != 2 or factor.ndim != 3 or factor.shape[:2] != diag.shape or bool((diag < 0).any()):
            raise ValueError("low-rank covariance needs diag (K, D) >= 0 and factor (K, D, R)")
        self.diag, self.factor = diag, factor
        self.num_components, self.dim = diag.shape
        self.rank = factor.shape[2]
        self._outer = None  # U U^T's entries per coordinate, (K, D, R^2), built at first use

    def noisy(self, alpha, sigma, r):
        # Woodbury with E = alpha^2 diag + sigma^2 I: no (B, K, D, R) intermediate, so a batch costs
        # O(B K D R^2) flops in a few matrix products (memory, not arithmetic, bounds the naive form).
        a2 = alpha[..., None] ** 2                           # (B, 1, 1)
        w = 1 / (a2 * self.diag + sigma[..., None] ** 2)     # E^-1, (B, K, D)
        if self._outer is None:
            self._outer = torch.einsum("kdr,kdq->kdrq", self.factor, self.factor).reshape(
                self.num_components, self.dim, self.rank ** 2)
        cap = torch.bmm(w.transpose(0, 1), self._outer).transpose(0, 1)  # U^T E^-1 U, (B, K, R^2)
        cap = a2[..., None] * cap.reshape(*w.shape[:2], self.rank, self.rank) + torch.eye(self.rank, dtype=w.dtype)
        chol = torch.linalg.cholesky(cap)
        ur = torch.bmm((r * w).transpose(0, 1), self.factor).transpose(0, 1)  # U^T E^-1 r, (B, K, R)
        sol = torch.cholesky_solve(ur[..., None], chol)[..., 0]
        u_sol = torch.bmm(sol.transpose(0, 1), self.factor.transpose(1, 2)).transpose(0, 1)  # (B, K, D)
        cinv_r = w * (r - a2 * u_sol)
        logdet = -torch.log(w).sum(-1) + 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        return (r * cinv_r).sum(-1), logdet, self.matvec(cinv_r)

    def matvec(self, v):
        return self.diag * v + torch.einsum("kdr,...kr->...kd", self.factor,
                                            torch.einsum("kdr,...kd->...kr", self.factor, v))

    @property
    def noise_dim(self):
        return self.dim + self.rank

    def root_apply(self, k, z):
        return z[:, : self.dim] * self.diag[k].sqrt() + z[:, self.dim:] @ self.factor[k].T
