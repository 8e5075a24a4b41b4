"""A token network as the samplers' model, and the losses that train it.

:class:`TokenModel` turns a network's logits (:mod:`sdeflow.models.tokens`) into the clean-token posterior
``p(x0^l | x_t)`` the samplers take. On the masked process a token that is not masked is its own clean
value (MDLM's "carry-over"), so the posterior there is its point mass whatever the network says. With a
``label`` and a ``guidance`` scale ``w`` it is classifier-free guided, ``p_c^w p^(1 - w)`` renormalised per
position (``w = 1``: the conditional model), the conditional and unconditional passes in one batch (a network
trained with label dropout).

:class:`TokenLoss` is the training loss of the trainer's token runs, one per sequence, all of a posterior
network (so every sampler runs every trained model):

- ``nelbo``: the masked-diffusion NELBO (:class:`~sdeflow.discrete.likelihood.MaskedNELBO`), masked process;
- ``score-entropy``: SEDD's score entropy of the concrete score the posterior implies
  (:func:`~sdeflow.discrete.conversions.concrete_score`), either process;
- ``gkl``: discrete flow matching's generalized KL of the rates the posterior implies
  (:func:`~sdeflow.discrete.conversions.dfm_rates`), either process.

Each is least at the exact posterior (``tests/test_discrete.py``). Times are stratified over the batch on
``[t_min, 1 - t_min]`` (the score entropy's weight ``-alpha'/alpha`` is infinite at ``t = 1``).
"""

from __future__ import annotations

import functools

import torch

from ..names import NameTable
from ..objectives.densities import stratified
from .conversions import concrete_score, dfm_rates, guided_log
from .likelihood import generalized_kl, masked_cross_entropy, score_entropy
from .processes import Masked, TokenProcess


class TokenModel:
    """``model(x_t, t) -> (B, L, V)`` float64 posterior probabilities of network ``net`` on ``process``."""

    def __init__(self, net, process: TokenProcess, label=None, guidance: float = 1.0):
        self.net, self.process, self.guidance = net, process, float(guidance)
        self.label = label

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def log_probs(self, x_t: torch.Tensor, t, label=None) -> torch.Tensor:
        """Log-posteriors ``(B, L, V)`` in the network's dtype (the training losses' input)."""
        c = torch.as_tensor(t, dtype=torch.float32, device=x_t.device).reshape(-1).expand(x_t.shape[0])
        return carry_over(self.process, x_t, torch.log_softmax(self.net(x_t, c, label=label).float(), -1), log=True)

    @torch.no_grad()
    def __call__(self, x_t: torch.Tensor, t, **cond) -> torch.Tensor:
        x = x_t.to(self.device)
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(x.shape[0])
        label = self.label
        if label is None or self.guidance == 1.0:
            logp = self.log_probs(x, t, None if label is None else self._labels(label, x.shape[0]))
        else:  # the conditional and the unconditional pass in one batch
            labels = self._labels(label, x.shape[0])
            null = torch.full_like(labels, self.net.config["num_classes"])
            both = self.log_probs(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]))
            cond_lp, uncond_lp = both.chunk(2)
            logp = guided_log(cond_lp, uncond_lp, self.guidance)
        return logp.exp().to(device=x_t.device, dtype=torch.float64)

    def _labels(self, label, batch: int) -> torch.Tensor:
        return torch.as_tensor(label, device=self.device).long().reshape(-1).expand(batch)


def carry_over(process: TokenProcess, x_t: torch.Tensor, values: torch.Tensor, log: bool = False) -> torch.Tensor:
    """On the masked process a token that is not masked is its own clean value (MDLM's carry-over; true of
    the exact posterior): its row of ``values`` (``(B, L, V)`` probabilities, or log-probabilities with
    ``log=True``) becomes that point mass. Other processes: ``values`` as they are."""
    if not isinstance(process, Masked):
        return values
    own = torch.nn.functional.one_hot(x_t.clamp(max=process.vocab - 1), process.vocab).bool()
    point = torch.where(own, 0.0 if log else 1.0, -torch.inf if log else 0.0).to(values.dtype)
    return torch.where((x_t != process.mask)[..., None], point, values)


class TokenLoss:
    """``loss(model, x0, cond=..., t=..., eps=x_t) -> (B,)`` per-sequence losses in nats; :meth:`draw` gives the
    step's times and noised tokens (``(t, x_t)``) from the step's generator."""

    def __init__(self, process: TokenProcess, kind: str = "nelbo", t_min: float = 1e-3):
        TOKEN_LOSSES.lookup(kind)
        if kind == "nelbo" and not isinstance(process, Masked):
            raise ValueError(f"the nelbo loss needs the masked process, got {type(process).__name__}; "
                             "use score-entropy or gkl for the uniform process")
        self.process, self.kind, self.t_min = process, kind, float(t_min)

    def draw(self, x0: torch.Tensor, schedule=None, generator: torch.Generator | None = None):
        t = self.t_min + (1.0 - 2.0 * self.t_min) * stratified(x0.shape[0], generator)
        return t, self.process.noise(x0, t, generator)

    def __call__(self, model: TokenModel, x0: torch.Tensor, cond: dict | None = None, t: torch.Tensor | None = None,
                 eps: torch.Tensor | None = None) -> torch.Tensor:
        x_t = eps.to(x0.device)
        logp = model.log_probs(x_t, t.to(x0.device), (cond or {}).get("label"))
        if self.kind == "nelbo":
            return masked_cross_entropy(self.process, logp, x0, x_t, t)
        probs = logp.exp()
        if self.kind == "score-entropy":
            return score_entropy(self.process, concrete_score(self.process, x_t, probs, t), x_t, x0, t).float()
        return generalized_kl(self.process, dfm_rates(self.process, x_t, probs, t), x_t, x0, t).float()


#: Token training losses by name: ``TOKEN_LOSSES[name](process)`` is a :class:`TokenLoss`.
TOKEN_LOSSES = NameTable("token loss", {
    "nelbo": (functools.partial(TokenLoss, kind="nelbo"),
              "the masked-diffusion NELBO, MDLM's weighted cross-entropy (masked process)"),
    "score-entropy": (functools.partial(TokenLoss, kind="score-entropy"),
                      "SEDD's score entropy of the posterior's concrete score (either process)"),
    "gkl": (functools.partial(TokenLoss, kind="gkl"),
            "discrete flow matching's generalized KL of the posterior's rates (either process)"),
})
