"""D3PM (Austin et al. 2021): discrete-time discrete diffusion, its ELBO term by term and the hybrid loss.

Step k = 1..T sits at t = k / T of a :class:`~.process.Corruption` (uniform = multinomial diffusion,
Hoogeboom et al. 2021; masking = D3PM absorbing, whose linear schedule is Austin et al.'s
beta_k = 1 / (T - k + 1)); one-step matrices Q_k = q(x_k | x_{k-1}) have the same
alpha I + (1 - alpha) 1 pi^T form with alpha = alpha(k/T) / alpha((k-1)/T). With x0-parameterisation
(sec. 3.3), p(x_{k-1} | x_k) = sum_x0 q(x_{k-1} | x_k, x0) p(x0 | x_k) (:func:`~.process.reverse_probs`).

The negative ELBO (eq. 3), in nats, per sample (sum over positions):

    L = KL(q(x_T | x0) || pi)                                         prior
      + sum_{k=2..T} E_q(x_k | x0) KL(q(x_{k-1} | x_k, x0) || p(x_{k-1} | x_k))     diffusion
      + E_q(x_1 | x0) [-log p(x0 | x_1)]                              reconstruction (k = 1)

The k = 1 term is the same KL with the one-hot q(x_0 | x_1, x0), so :meth:`D3PM.term` serves all k.
Bits per dimension = L / (number of tokens * ln 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .process import Corruption, check_tokens, log_probs, reverse_probs

__all__ = ["D3PM", "Terms"]


@dataclass(frozen=True)
class Terms:
    """The negative ELBO of a batch term by term (nats): ``prior`` (batch,), ``steps`` (batch, T) with
    column k - 1 the term of step k (column 0 the reconstruction term)."""

    prior: Tensor
    steps: Tensor

    @property
    def total(self) -> Tensor:
        """(batch,) the negative ELBO in nats."""
        return self.prior + self.steps.sum(-1)

    def bpd(self, dims: int) -> Tensor:
        """(batch,) the negative ELBO in bits per dimension (``dims`` tokens per sample)."""
        return self.total / (dims * math.log(2))


def _kl(q: Tensor, p: Tensor) -> Tensor:
    """sum_j q_j log(q_j / p_j) over the last axis, with 0 log 0 = 0."""
    ratio = torch.where(q > 0, torch.log(q.clamp_min(1e-300)) - torch.log(p.clamp_min(1e-300)), torch.zeros_like(q))
    return (q * ratio).sum(-1)


@dataclass(frozen=True)
class D3PM:
    """D3PM with ``T`` steps of ``process`` (see the module docstring)."""

    process: Corruption
    T: int = 1000

    def __post_init__(self):
        if not (isinstance(self.T, int) and not isinstance(self.T, bool) and self.T >= 1):
            raise ValueError(f"T must be a positive integer, got {self.T!r}")

    def _k(self, k, x0: Tensor) -> Tensor:
        k = torch.as_tensor(k, device=x0.device)
        k = k.expand(x0.shape[0]) if k.ndim == 0 else k
        if bool(((k < 1) | (k > self.T)).any()):
            raise ValueError(f"steps must lie in 1..{self.T}, got {k.tolist()}")
        return k

    def corrupt(self, x0: Tensor, k, generator: torch.Generator | None = None) -> Tensor:
        """x_k ~ q(x_k | x0) for integer steps k (an int or (batch,))."""
        return self.process.corrupt(x0, self._k(k, x0).double() / self.T, generator)

    def term(self, model, x0: Tensor, x_k: Tensor, k) -> Tensor:
        """KL(q(x_{k-1} | x_k, x0) || p(x_{k-1} | x_k)) summed over positions: (batch,) nats.

        ``k`` an int or (batch,) steps in 1..T; at k = 1 this is -log p(x0 | x_1). Differentiable in
        the model's output.
        """
        k = self._k(k, x0)
        return self._term(log_probs(model, x_k, k.double() / self.T, self.process.vocab), x0, x_k, k)

    def _term(self, lp: Tensor, x0: Tensor, x_k: Tensor, k: Tensor) -> Tensor:
        t, s = k.double() / self.T, (k - 1).double() / self.T
        onehot = torch.nn.functional.one_hot(x0, self.process.vocab).double()
        q = reverse_probs(self.process, onehot, x_k, s, t)
        p = reverse_probs(self.process, lp.exp(), x_k, s, t)
        return _kl(q, p).reshape(x0.shape[0], -1).sum(-1)

    def prior_term(self, x0: Tensor) -> Tensor:
        """KL(q(x_T | x0) || pi) summed over positions: (batch,) nats (zero when alpha(1) = 0)."""
        check_tokens(x0, self.process.vocab)
        q = self.process.marginal(x0, 1.0)
        return _kl(q, self.process.prior().to(q.device).expand_as(q)).reshape(x0.shape[0], -1).sum(-1)

    def terms(self, model, x0: Tensor, *, generator: torch.Generator | None = None) -> Terms:
        """Every term of the negative ELBO with one draw x_k ~ q(x_k | x0) per step (T model calls)."""
        check_tokens(x0, self.process.vocab)
        steps = [self.term(model, x0, self.corrupt(x0, k, generator), k) for k in range(1, self.T + 1)]
        return Terms(self.prior_term(x0), torch.stack(steps, dim=-1))

    def nll(self, model, x0: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """(batch,) the negative ELBO in nats, an unbiased one-step estimate: prior + T * term(k), k ~ U{1..T}."""
        check_tokens(x0, self.process.vocab)
        k = torch.randint(1, self.T + 1, (x0.shape[0],), generator=generator).to(x0.device)
        return self.prior_term(x0) + self.T * self.term(model, x0, self.corrupt(x0, k, generator), k)

    def hybrid_loss(self, model, x0: Tensor, *, lam: float = 0.01, generator: torch.Generator | None = None):
        """Austin et al.'s hybrid loss (eq. 5) per sample at one draw k ~ U{1..T}, x_k ~ q(x_k | x0):
        see :meth:`loss_at`."""
        check_tokens(x0, self.process.vocab)
        k = torch.randint(1, self.T + 1, (x0.shape[0],), generator=generator).to(x0.device)
        return self.loss_at(model, x0, self.corrupt(x0, k, generator), k, lam=lam)

    def loss_at(self, model, x0: Tensor, x_k: Tensor, k: Tensor, *, lam: float = 0.01) -> Tensor:
        """The hybrid loss at a given draw: prior + T * term(k) (the one-step ELBO estimate) plus ``lam``
        times the cross-entropy -log p(x0 | x_k) summed over positions, (batch,) nats."""
        if not (lam >= 0 and math.isfinite(lam)):
            raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
        k = self._k(k, x0)
        lp = log_probs(model, x_k, k.double() / self.T, self.process.vocab)
        vb = self.prior_term(x0) + self.T * self._term(lp, x0, x_k, k)
        ce = -torch.gather(lp, -1, x0[..., None]).reshape(x0.shape[0], -1).sum(-1)
        return vb + lam * ce
