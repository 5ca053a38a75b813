"""Discrete-state corruption: masking (absorbing) and uniform, in continuous time t in [0, 1].

Conventions (fixed for the whole ``discrete`` package):

* Data are integer tokens ``x0`` of shape (batch, *shape) with values in ``0 .. V-1`` (V = ``vocab``).
  The masking process adds one state, the mask token ``m = V``; it has ``S = V + 1`` states, the
  uniform process ``S = V``.
* t = 0 is clean, t = 1 is fully corrupted. Each token is corrupted independently, and a token survives
  from 0 to t with probability ``alpha(t)`` (the schedule; alpha(0) = 1, alpha(1) = 0)::

      q(x_t | x0) = alpha(t) [x_t = x0] + (1 - alpha(t)) pi(x_t)

  with pi the point mass on m (masking) or uniform over the V tokens (uniform; multinomial diffusion).
  From s to t > s the same form holds with alpha(t) / alpha(s) (``transition``).
* As a continuous-time Markov chain (Campbell et al. 2022) the forward rate matrix is
  ``R_t = beta(t) (1 pi^T - I)`` with ``beta(t) = -alpha'(t) / alpha(t)``.
* A model (the discrete canonical denoiser) maps ``(x_t (batch, *shape) int64, t (batch,))`` to logits
  of p(x0 | x_t) per position, shape (batch, *shape, V): the per-position posterior marginals, i.e.
  E[onehot(x0) | x_t] (the x0-parameterisation). :func:`log_probs` normalises and checks them.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Kind", "Schedule", "Corruption", "log_probs", "check_tokens", "reverse_probs", "reverse_rates",
           "likelihood_weighted"]


class Kind(str, enum.Enum):
    """Where a corrupted token goes: the mask token (absorbing) or a uniformly drawn token."""

    MASK = "mask"
    UNIFORM = "uniform"


class Schedule(str, enum.Enum):
    """The survival probability alpha(t)."""

    LINEAR = "linear"  # alpha = 1 - t (MDLM / MD4's linear schedule; D3PM absorbing's 1/(T-k+1) betas)
    COSINE = "cosine"  # alpha = cos(pi t / 2)


@dataclass(frozen=True)
class Corruption:
    """A discrete corruption process over a vocabulary of ``vocab`` tokens (see the module docstring)."""

    kind: Kind = Kind.MASK
    vocab: int = 2
    schedule: Schedule = Schedule.LINEAR

    def __post_init__(self):
        object.__setattr__(self, "kind", _enum(Kind, self.kind, "corruption kind"))
        object.__setattr__(self, "schedule", _enum(Schedule, self.schedule, "schedule"))
        if not (isinstance(self.vocab, int) and not isinstance(self.vocab, bool) and self.vocab >= 2):
            raise ValueError(f"vocab must be an integer >= 2, got {self.vocab!r}")

    @property
    def states(self) -> int:
        """Number of states S of x_t (V + 1 with the mask token)."""
        return self.vocab + (self.kind is Kind.MASK)

    @property
    def mask_id(self) -> int | None:
        """The mask token's index (V), or None for the uniform process."""
        return self.vocab if self.kind is Kind.MASK else None

    # ------------------------------------------------------------------ schedule

    def alpha(self, t) -> Tensor:
        """Survival probability alpha(t), float64, same shape as ``t``."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if self.schedule is Schedule.LINEAR:
            return 1 - t
        # cos(pi/2) is 6e-17, not 0: clamp so that t = 1 is fully corrupted
        return torch.where(t >= 1, torch.zeros_like(t), torch.cos(t * (math.pi / 2)))

    def dalpha(self, t) -> Tensor:
        """d alpha / dt (checked against autograd in the tests)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if self.schedule is Schedule.LINEAR:
            return -torch.ones_like(t)
        return -(math.pi / 2) * torch.sin(t * (math.pi / 2))

    def t_of_alpha(self, a) -> Tensor:
        """The time at which the survival probability is ``a`` (inverse of :meth:`alpha`)."""
        a = torch.as_tensor(a, dtype=torch.float64).clamp(0, 1)
        if self.schedule is Schedule.LINEAR:
            return 1 - a
        return torch.arccos(a) * (2 / math.pi)

    # ------------------------------------------------------------------ transitions

    def prior(self) -> Tensor:
        """pi: (S,) the distribution every token reaches at t = 1."""
        p = torch.zeros(self.states, dtype=torch.float64)
        if self.kind is Kind.MASK:
            p[self.vocab] = 1
        else:
            p[:] = 1 / self.vocab
        return p

    def transition(self, a) -> Tensor:
        """(*a.shape, S, S) matrices a I + (1 - a) 1 pi^T: row i is q(x_t | x_s = i) with a = alpha(t)/alpha(s)."""
        a = torch.as_tensor(a, dtype=torch.float64)[..., None, None]
        eye = torch.eye(self.states, dtype=torch.float64)
        return a * eye + (1 - a) * self.prior().expand(self.states, self.states)

    def marginal(self, x0: Tensor, t) -> Tensor:
        """q(x_t | x0): (*x0.shape, S) probabilities; ``t`` a float or (batch,)."""
        a = _per_sample(self.alpha(t), x0)
        onehot = torch.nn.functional.one_hot(x0, self.states).double()
        return a[..., None] * onehot + (1 - a[..., None]) * self.prior()

    def corrupt(self, x0: Tensor, t, generator: torch.Generator | None = None) -> Tensor:
        """Draw x_t ~ q(x_t | x0) (int64, same shape as x0); ``t`` a float or (batch,)."""
        check_tokens(x0, self.vocab)
        a = _per_sample(self.alpha(t), x0)
        u = torch.rand(x0.shape, dtype=torch.float64, generator=generator).to(x0.device)
        if self.kind is Kind.MASK:
            noise = torch.full_like(x0, self.vocab)
        else:
            noise = torch.randint(0, self.vocab, x0.shape, generator=generator).to(x0.device)
        return torch.where(u < a, x0, noise)

    def sample_prior(self, shape, generator: torch.Generator | None = None, device=None) -> Tensor:
        """x_1 ~ pi, int64 of ``shape`` (all masks, or uniform tokens)."""
        if self.kind is Kind.MASK:
            return torch.full(tuple(shape), self.vocab, dtype=torch.int64, device=device)
        return torch.randint(0, self.vocab, tuple(shape), generator=generator).to(device)


def _enum(cls, v, what):
    try:
        return cls(v)
    except ValueError:
        raise ValueError(f"unknown {what} {v!r}; choose one of: {', '.join(e.value for e in cls)}") from None


def _per_sample(a: Tensor, x: Tensor) -> Tensor:
    """Broadcast a scalar or (batch,) value against tokens x (batch, *shape)."""
    a = a.to(x.device)
    if a.ndim == 0:
        return a.expand(x.shape)
    if a.shape != (x.shape[0],):
        raise ValueError(f"t must be a scalar or have shape (batch,) = ({x.shape[0]},), got {tuple(a.shape)}")
    return a.reshape(a.shape + (1,) * (x.ndim - 1)).expand(x.shape)


def check_tokens(x: Tensor, states: int, what: str = "tokens") -> None:
    """Raise a one-line error unless ``x`` is a non-empty integer tensor with values in [0, states)."""
    if not isinstance(x, Tensor) or x.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"{what} must be an integer tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim < 2 or x.numel() == 0:
        raise ValueError(f"{what} must have shape (batch, *shape) and be non-empty, got {tuple(x.shape)}")
    lo, hi = int(x.min()), int(x.max())
    if lo < 0 or hi >= states:
        bad = lo if lo < 0 else hi
        raise ValueError(f"token {bad} is outside the vocabulary 0..{states - 1}")


def log_probs(model, x_t: Tensor, t, vocab: int) -> Tensor:
    """The model's log p(x0 | x_t) per position: (batch, *shape, V) float64, checked and normalised."""
    t = torch.as_tensor(t, dtype=torch.float64, device=x_t.device)
    if t.ndim == 0:
        t = t.expand(x_t.shape[0])
    out = model(x_t, t)
    want = tuple(x_t.shape) + (vocab,)
    if not isinstance(out, Tensor) or tuple(out.shape) != want:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"the model must return logits of shape {want} (vocabulary {vocab}), got {got}")
    return torch.log_softmax(out.double(), dim=-1)


def likelihood_weighted(model, process: Corruption):
    """The model ``(x_t, t) -> logits + log q(x_t,l | x0_l = v)``: a network's logits taken as the
    context's prediction of x0_l, times the visible token's own likelihood (a position's exact posterior
    has this form when the context is the other positions). For uniform corruption it keeps an
    untrained network sensible: uniform logits give the posterior of i.i.d. uniform tokens (CTMC bound
    exactly L log V), where a raw uniform x0-prediction would claim every visible token is noise and
    jump at rate ~ 1/t near t = 0, an infinite bound. For masking it is MDLM's carry-over (a visible
    token is certain)."""

    def wrapped(x_t: Tensor, t) -> Tensor:
        logits = model(x_t, t)
        a = _times(process, t, x_t).reshape((-1,) + (1,) * (x_t.ndim - 1) + (1,))
        v = torch.arange(process.vocab, device=x_t.device)
        lik = a * (x_t[..., None] == v) + (1 - a) * process.prior().to(x_t.device)[x_t][..., None]
        return logits.double() + torch.log(lik)

    return wrapped


def _times(process: Corruption, t, x_t: Tensor) -> Tensor:
    """alpha at a float or per-sample (batch,) time, as (batch,) float64 on x_t's device."""
    a = process.alpha(t).to(x_t.device)
    if a.ndim == 0:
        return a.expand(x_t.shape[0])
    if a.shape != (x_t.shape[0],):
        raise ValueError(f"times must be a float or have shape (batch,) = ({x_t.shape[0]},), got {tuple(a.shape)}")
    return a


def _rows(mats: Tensor, idx: Tensor) -> Tensor:
    """Per sample b and position l the row mats[b, idx[b, l]]: mats (B, R, C), idx (B, L) -> (B, L, C)."""
    return torch.gather(mats, 1, idx[..., None].expand(*idx.shape, mats.shape[-1]))


def _ratio(p0: Tensor, x: Tensor, qbar_t: Tensor) -> Tensor:
    """p(x0 | x_t) / q(x_t | x0) per position, zero where q(x_t | x0) = 0 (x0 impossible given x_t).

    p0 (B, L, V), x (B, L), qbar_t (B, S, S) -> (B, L, V).
    """
    V = p0.shape[-1]
    q = _rows(qbar_t[:, :V, :].transpose(1, 2), x)  # q(x_t | x0) over x0
    return torch.where(q > 0, p0 / q.clamp_min(1e-300), torch.zeros_like(p0))


def reverse_probs(process: Corruption, p0: Tensor, x_t: Tensor, s, t) -> Tensor:
    """p(x_s | x_t) = sum_x0 q(x_s | x_t, x0) p(x0 | x_t) per position, for s < t: (*x_t.shape, S).

    The x0-parameterisation (Austin et al. 2021, sec. 3.3) in the form that is exact when ``p0`` is the
    true posterior: q(x_s | x_t, x0) = q(x_t | x_s) q(x_s | x0) / q(x_t | x0). Mass ``p0`` puts on
    values of x0 that cannot produce x_t is dropped and the result renormalised (for masking: an
    unmasked token stays). ``p0``: (*x_t.shape, V) probabilities; ``s``, ``t``: floats or (batch,)
    (s may be 0).
    """
    B, V = x_t.shape[0], p0.shape[-1]
    a_s, a_t = _times(process, s, x_t), _times(process, t, x_t)
    x, p = x_t.reshape(B, -1), p0.reshape(B, -1, V).double()
    qbar_s, qbar_t = process.transition(a_s), process.transition(a_t)
    step = process.transition(a_t / a_s)  # (B, S, S): q(x_t | x_s)
    mix = _ratio(p, x, qbar_t) @ qbar_s[:, :V]  # (B, L, S): sum_x0 p0 q(x_s | x0) / q(x_t | x0)
    out = mix * _rows(step.transpose(1, 2), x)  # times q(x_t | x_s) as a function of x_s
    out = out / out.sum(-1, keepdim=True).clamp_min(1e-300)
    return out.reshape(tuple(x_t.shape) + (process.states,))


def reverse_rates(process: Corruption, p0: Tensor, x_t: Tensor, t) -> Tensor:
    """Reverse CTMC rates R^(x_t -> j) at time t per position (Campbell et al. 2022, eq. 4): (*x_t.shape, S).

    R^_t(i, j) = R_t(j, i) sum_x0 p(x0 | x_t = i) q_t(j | x0) / q_t(i | x0) for j != i; zero at j = i.
    """
    B, V = x_t.shape[0], p0.shape[-1]
    a_t = _times(process, t, x_t)
    tt = torch.as_tensor(t, dtype=torch.float64).to(x_t.device).expand(x_t.shape[0])
    beta = -process.dalpha(tt) / a_t  # (B,)
    x, p = x_t.reshape(B, -1), p0.reshape(B, -1, V).double()
    qbar_t = process.transition(a_t)
    mix = _ratio(p, x, qbar_t) @ qbar_t[:, :V]
    fwd = beta[:, None] * process.prior().to(x.device)[x]  # R_t(j, i) = beta pi(i) for j != i
    rates = (mix * fwd[..., None]).scatter(-1, x[..., None], 0.0)
    return rates.reshape(tuple(x_t.shape) + (process.states,))
