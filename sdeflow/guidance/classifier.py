"""Classifier guidance: the gradient of a noise-aware classifier's ``log p_t(c | x_t)`` added
through the score.

With ``score_w = score + w grad log p_t(c | x_t)`` and ``x_hat = (x_t + sigma^2 score) / alpha``,

    x_hat_w = x_hat + w (sigma^2 / alpha) grad_x log p_t(c | x_t).

With the exact classifier and the exact unconditional denoiser, ``w = 1`` gives the exact
conditional denoiser (Bayes' rule on the noised marginals); the labelled oracle certifies this.
Where ``alpha = 0`` (pure noise of a flow model) ``p_t(c | x_t) = p(c)`` and no term is added.

Reference: Dhariwal and Nichol, "Diffusion Models Beat GANs on Image Synthesis", 2021,
arXiv:2105.05233; Song et al., 2021, arXiv:2011.13456 (conditional sampling through the score).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..denoisers import TIME_INPUTS, Denoiser
from ..schedules import Schedule
from ..shapes import as_time, expand_as_batch


class ModelClassifier:
    """A noise-aware classifier network as ``(x_t, t, label) -> log p_t(c | x_t)``.

    The network sees ``x_t / sqrt(alpha^2 sigma_data^2 + sigma^2)`` (unit scale at every noise level)
    and the time input ``time_input`` (as :class:`~sdeflow.denoisers.ModelDenoiser`), and returns
    class logits; ``sdeflow train --objective classifier`` trains it with this same input map."""

    def __init__(self, net: Callable, schedule: Schedule, *, time_input: str | Callable = "t", sigma_data: float = 0.5):
        if isinstance(time_input, str):
            if time_input not in TIME_INPUTS:
                raise ValueError(f"unknown time_input {time_input!r}; allowed: {', '.join(TIME_INPUTS)} or a callable")
            time_input = TIME_INPUTS[time_input]
        self.net, self.schedule, self.time_input, self.sigma_data = net, schedule, time_input, float(sigma_data)

    def logits(self, x_t: torch.Tensor, t) -> torch.Tensor:
        t = as_time(t, device=x_t.device)
        a, s = self.schedule.alpha(t), self.schedule.sigma(t)
        scale = expand_as_batch(torch.rsqrt(a * a * self.sigma_data ** 2 + s * s).to(x_t.dtype), x_t)
        c = self.time_input(self.schedule, t)
        c = c.expand(x_t.shape[0]) if c.ndim == 0 else c
        return self.net(x_t * scale, c.to(torch.float32))

    def __call__(self, x_t: torch.Tensor, t, label) -> torch.Tensor:
        logp = torch.log_softmax(self.logits(x_t, t).float(), dim=1)
        label = torch.as_tensor(label, device=logp.device).long().reshape(-1).expand(x_t.shape[0])
        return logp.gather(1, label[:, None])[:, 0]


class ClassifierGuided(Denoiser):
    """``x_hat_w = x_hat + w (sigma^2 / alpha) grad log p_t(c | x_t)`` (see the module docstring).

    Args:
        denoiser: the denoiser to guide.
        classifier: ``(x_t, t, label) -> log p_t(c | x_t)``, differentiable in ``x_t`` (a
            :class:`ModelClassifier`, or the oracle's ``mixture.classifier(schedule)``).
        scale: ``w``.
        unconditional: evaluate ``denoiser`` without the label (its ``null_cond``, or with the
            label removed), the classic setting; False guides the conditional denoiser further.
        label_key: the conditioning keyword that carries the class.
    The gradient is taken in float32 (float64 for float64 states) whatever the state's dtype.
    ``classifier_calls`` counts classifier forward-backward passes."""

    def __init__(self, denoiser: Denoiser, classifier: Callable, scale: float = 1.0, *, unconditional: bool = True,
                 label_key: str = "label"):
        super().__init__(denoiser.schedule)
        if not callable(classifier):
            raise TypeError("classifier must be callable: (x_t, t, label) -> log p_t(c | x_t)")
        if not (isinstance(scale, (int, float)) and math.isfinite(scale)):
            raise ValueError(f"the guidance scale must be a finite number, got {scale!r}")
        self.inner, self.classifier, self.scale = denoiser, classifier, float(scale)
        self.unconditional, self.label_key = unconditional, label_key
        self.classifier_calls = 0

    def forward(self, x_t, t, **cond):
        label = cond.get(self.label_key)
        if label is None:
            raise ValueError(f"classifier guidance needs the class: pass cond={{{self.label_key!r}: labels}}")
        inner_cond = cond
        if self.unconditional:
            null = getattr(self.inner, "null_cond", None)
            inner_cond = null(cond) if null is not None else {k: v for k, v in cond.items() if k != self.label_key}
        x_hat = self.inner(x_t, t, **inner_cond)
        tt = as_time(t)
        a, s = self.schedule.alpha(tt), self.schedule.sigma(tt)
        coef = torch.where(a > 0, self.scale * s * s / a.clamp_min(1e-300), torch.zeros_like(a))
        if self.scale == 0.0 or not bool((coef != 0).any()):
            return x_hat
        work = torch.float64 if x_t.dtype == torch.float64 else torch.float32
        with torch.enable_grad():
            x = x_t.detach().to(work).requires_grad_(True)
            logp = self.classifier(x, t, label)
            grad, = torch.autograd.grad(logp.sum(), x)
        self.classifier_calls += 1
        step = expand_as_batch(coef.to(device=x_t.device, dtype=work), grad) * grad
        return (x_hat.to(work) + step).to(x_hat.dtype)
