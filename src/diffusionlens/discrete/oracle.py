"""The exact discrete oracle: a mixture of products of categoricals over token sequences.

    p(x0) = sum_k w_k prod_l P_k[l, x0_l]          x0 (batch, *shape) int64 in 0..V-1

Under any corruption of :mod:`~diffusionlens.discrete.process` (tokens corrupted independently with
q(x_t | x0) = alpha [x_t = x0] + (1 - alpha) pi(x_t)), the posterior is again such a mixture:

    p(k | x_t) ~ w_k prod_l sum_v P_k[l, v] q(x_t,l | v)
    p(x0_l = v | x_t, k) ~ P_k[l, v] q(x_t,l | v)

so the per-position posterior marginals p(x0_l | x_t) (what a trained x0-model predicts) and exact
joint posterior draws are closed forms, at any t, for masking and uniform corruption alike. Every
computation is in float64; products over positions are taken in log space.
:meth:`CategoricalMixture.denoiser` binds a process and is usable wherever a trained model is.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .process import Corruption, check_tokens

__all__ = ["CategoricalMixture", "random_mixture"]


class CategoricalMixture:
    """Mixture of K products of categoricals.

    Args:
        probs: (K, *shape, V) per-position token probabilities of each component (each row sums to 1).
        weights: (K,) mixture weights (default uniform).
    """

    def __init__(self, probs, weights=None):
        probs = torch.as_tensor(probs, dtype=torch.float64)
        if probs.ndim < 3 or probs.shape[-1] < 2 or probs.shape[0] < 1:
            raise ValueError(f"probs must have shape (K, *shape, V) with V >= 2, got {tuple(probs.shape)}")
        if bool((probs < 0).any()) or not torch.allclose(probs.sum(-1), torch.ones(()).double(), atol=1e-9):
            raise ValueError("probs must be non-negative and sum to 1 over the vocabulary")
        K = probs.shape[0]
        w = torch.full((K,), 1 / K, dtype=torch.float64) if weights is None else torch.as_tensor(weights).double()
        if w.shape != (K,) or bool((w <= 0).any()) or abs(float(w.sum()) - 1) > 1e-9:
            raise ValueError(f"weights must be ({K},) positive and sum to 1, got {w.tolist()}")
        self.probs, self.weights = probs, w
        self.log_p = torch.log(probs)  # -inf where a token is impossible in a component
        self.log_w = torch.log(w)
        self.shape = tuple(probs.shape[1:-1])
        self.vocab = probs.shape[-1]

    @property
    def dim(self) -> int:
        """Number of positions L = prod(shape)."""
        return math.prod(self.shape)

    def _flat(self, x: Tensor, states: int) -> Tensor:
        check_tokens(x, states)
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"tokens must have shape (batch, {', '.join(map(str, self.shape))}), got {tuple(x.shape)}")
        return x.reshape(x.shape[0], -1).long()

    def log_prob(self, x0: Tensor) -> Tensor:
        """log p(x0): (batch,) float64 nats."""
        x = self._flat(x0, self.vocab)
        lp = self.log_p.reshape(self.log_p.shape[0], -1, self.vocab).to(x.device)  # (K, L, V)
        per = lp.permute(1, 2, 0)[torch.arange(x.shape[1], device=x.device), x]  # (B, L, K)
        return torch.logsumexp(self.log_w.to(x.device) + per.sum(1), dim=-1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n exact samples, (n, *shape) int64."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        p = self.probs.reshape(self.probs.shape[0], -1, self.vocab)[k]  # (n, L, V)
        x = torch.multinomial(p.reshape(-1, self.vocab), 1, generator=generator)
        return x.reshape((n,) + self.shape)

    def _posterior_parts(self, x_t: Tensor, t, process: Corruption) -> tuple[Tensor, Tensor]:
        """(log p(k | x_t) (B, K), p(x0_l | x_t, k) (B, K, L, V)) under ``process`` at time t."""
        if process.vocab != self.vocab:
            raise ValueError(f"the process has vocabulary {process.vocab} but the oracle {self.vocab}")
        x = self._flat(x_t, process.states)
        B = x.shape[0]
        a = process.alpha(t).to(x.device)
        a = a.expand(B) if a.ndim == 0 else a
        onehot = torch.nn.functional.one_hot(x, process.states)[..., : self.vocab].double()
        lik = a[:, None, None] * onehot + (1 - a[:, None, None]) * process.prior().to(x.device)[x][..., None]
        # per position the sum over v cannot underflow (both factors are probabilities of one token);
        # only the product over positions can, so it is taken in log space
        joint = self.probs.reshape(self.probs.shape[0], -1, self.vocab).to(x.device) * lik[:, None]
        per = joint.sum(-1)  # (B, K, L): sum_v P_k(v) q(x_t | v)
        log_r = torch.log_softmax(self.log_w.to(x.device) + torch.log(per).sum(-1), dim=-1)
        return log_r, joint / per.clamp_min(1e-300)[..., None]

    def posterior(self, x_t: Tensor, t, process: Corruption) -> Tensor:
        """Per-position posterior marginals p(x0_l | x_t): (batch, *shape, V) float64 probabilities."""
        log_r, cond = self._posterior_parts(x_t, t, process)
        p = (log_r.exp()[:, :, None, None] * cond).sum(1)
        return p.reshape(tuple(x_t.shape) + (self.vocab,))

    def sample_posterior(self, x_t: Tensor, t, process: Corruption, generator: torch.Generator | None = None):
        """An exact joint draw x0 ~ p(x0 | x_t) (the whole sequence at once): int64 like ``x_t``."""
        log_r, cond = self._posterior_parts(x_t, t, process)
        k = torch.multinomial(log_r.exp().cpu(), 1, generator=generator).squeeze(-1).to(x_t.device)
        p = cond[torch.arange(k.shape[0], device=x_t.device), k]  # (B, L, V)
        x = torch.multinomial(p.reshape(-1, self.vocab).cpu(), 1, generator=generator).to(x_t.device)
        return x.reshape(x_t.shape)

    def denoiser(self, process: Corruption):
        """A model ``(x_t, t) -> log p(x0 | x_t)`` per position (batch, *shape, V): the exact x0-posterior."""

        def model(x_t: Tensor, t: Tensor) -> Tensor:
            return torch.log(self.posterior(x_t, t, process).clamp_min(1e-300))

        return model

    def entropy_per_dim(self) -> float:
        """Exact entropy H(x0) / L in nats, by enumeration (small L and V only, V^L <= 2^20)."""
        if self.vocab**self.dim > 2**20:
            raise ValueError(f"enumeration needs V^L <= 2^20, got {self.vocab}^{self.dim}")
        x = all_sequences(self.vocab, self.shape)
        lp = self.log_prob(x)
        return float(-(lp.exp() * lp).sum()) / self.dim


def all_sequences(vocab: int, shape: tuple[int, ...]) -> Tensor:
    """Every token sequence of ``shape`` (V^L, *shape), in lexicographic (base-V) order."""
    L = math.prod(shape)
    idx = torch.arange(vocab**L)
    digits = torch.stack([(idx // vocab**(L - 1 - i)) % vocab for i in range(L)], dim=1)
    return digits.reshape((-1,) + tuple(shape))


def random_mixture(components: int, shape: tuple[int, ...], vocab: int, generator: torch.Generator | None = None,
                   *, sharpness: float = 2.0) -> CategoricalMixture:
    """A random mixture (softmax of Gaussian logits with std ``sharpness``; larger = more peaked)."""
    logits = sharpness * torch.randn((components,) + tuple(shape) + (vocab,), dtype=torch.float64, generator=generator)
    w = torch.softmax(0.5 * torch.randn(components, dtype=torch.float64, generator=generator), 0)
    return CategoricalMixture(torch.softmax(logits, -1), w)
