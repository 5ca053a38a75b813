"""Continuous time: the masked-diffusion ELBO and the samplers of the reverse chain.

* :func:`masked_elbo` -- MDLM (Sahoo et al. 2024, eq. 10) / MD4 (Shi et al. 2024, eq. 5): for the masking
  process the negative ELBO is a weighted cross-entropy on the masked positions,

      -log p(x0) <= int_0^1 -alpha'(t) / (1 - alpha(t)) E_{x_t} [ sum_{l masked} -log p(x0_l | x_t) ] dt,

  with equality when p(x0_l | x_t) is the exact posterior marginal (it is then an average over orders
  of the any-order autoregressive factorisation). Estimated with stratified times.
* Samplers run the reverse chain from t = 1 (the prior pi) down to t = 0 on a uniform time grid:
  :func:`ancestral` takes exact finite-time steps p(x_s | x_t) = sum_x0 q(x_s | x_t, x0) p(x0 | x_t)
  (per position, :func:`~.process.reverse_probs`); :func:`tau_leaping` (Campbell et al. 2022) holds the
  reverse rates fixed over a step; :func:`maskgit` (Chang et al. 2022) unmasks the most confident
  predictions on a schedule. All take the model ``(x_t, t) -> logits of x0`` (batch, *shape, V).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .process import Corruption, Kind, check_tokens, log_probs, reverse_probs, reverse_rates

__all__ = ["masked_elbo", "masked_loss", "ctmc_elbo", "ctmc_loss", "stratified_times", "ancestral", "tau_leaping",
           "maskgit", "mask_counts", "CHOICE_TEMPERATURE", "SAMPLERS"]


def _need_mask(process: Corruption, what: str) -> None:
    if process.kind is not Kind.MASK:
        raise ValueError(f"{what} needs the masking process, got {process.kind.value!r}")


def masked_loss(model, x0: Tensor, x_t: Tensor, t: Tensor, process: Corruption) -> Tensor:
    """The integrand of :func:`masked_elbo` at one draw: -alpha'(t) / (1 - alpha(t)) times the
    cross-entropy summed over the masked positions, (batch,) nats; ``t`` (batch,) in (0, 1]."""
    lp = log_probs(model, x_t, t, process.vocab)
    nll = -torch.gather(lp, -1, x0[..., None]).squeeze(-1)
    B = x0.shape[0]
    masked = (x_t == process.mask_id).reshape(B, -1)
    w = -process.dalpha(t).to(x0.device) / (1 - process.alpha(t).to(x0.device))
    return w * (nll.reshape(B, -1) * masked).sum(-1)


def stratified_times(n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
    """n times in (0, 1], one per stratum ((j + 1 - u) / n, one shared u ~ U[0, 1)): an unbiased,
    low-variance draw of t ~ U(0, 1] for a batch (MDLM's low-discrepancy sampler), float64 (n,)."""
    u = torch.rand((), dtype=torch.float64, generator=generator)
    return ((torch.arange(n, dtype=torch.float64) + 1 - u) / n).to(device)


def masked_elbo(model, x0: Tensor, process: Corruption, *, n_t: int = 1,
                generator: torch.Generator | None = None) -> Tensor:
    """Negative ELBO of masked diffusion per sample: (batch,) float64 nats (an upper bound on -log p(x0)).

    ``n_t`` stratified times per sample, t_j = (j + 1 - u) / n_t with one u ~ U[0, 1) per sample, so
    t lies in (0, 1] and the estimate is unbiased; differentiable in the model's output.
    """
    _need_mask(process, "masked_elbo")
    check_tokens(x0, process.vocab)
    if not (isinstance(n_t, int) and n_t >= 1):
        raise ValueError(f"n_t must be a positive integer, got {n_t!r}")
    u = torch.rand(x0.shape[0], dtype=torch.float64, generator=generator).to(x0.device)
    total = 0.0
    for j in range(n_t):
        t = (j + 1 - u) / n_t
        total = total + masked_loss(model, x0, process.corrupt(x0, t, generator), t, process)
    return total / n_t


T_MAX = 1 - 1e-9
"""Largest time the CTMC bound is evaluated at: beta(t) is singular at t = 1 for both schedules, where the
integrand vanishes (the reverse rates given x0 and the model's both tend to beta pi)."""


def ctmc_loss(model, x0: Tensor, x_t: Tensor, t: Tensor, process: Corruption) -> Tensor:
    """The integrand of :func:`ctmc_elbo` at one draw, (batch,) nats; ``t`` (batch,) in (0, 1].

    Summed over positions and target states j != x_t: the Bregman (generalised KL) divergence
    r^ - r + r log(r / r^) between the reverse rate given x0, r = R_t(j, x_t) q_t(j | x0) / q_t(x_t | x0),
    and the model's, r^ = the same averaged over its p(x0 | x_t) (:func:`~.process.reverse_rates`).
    For masking it equals :func:`masked_loss` draw by draw. Differentiable in the model's output.
    """
    t = t.clamp(max=T_MAX)
    lp = log_probs(model, x_t, t, process.vocab)
    given = reverse_rates(process, torch.nn.functional.one_hot(x0, process.vocab).double(), x_t, t)
    rates = reverse_rates(process, lp.exp(), x_t, t)
    pos = given > 0
    ratio = torch.where(pos, rates / given.clamp_min(1e-300), torch.ones_like(rates)) - 1
    # r (u - log(1 + u)) with u = r^ / r - 1: no cancellation between the two large terms when r^ ~ r
    div = torch.where(pos, given * (ratio - torch.log1p(ratio.clamp_min(-1 + 1e-300))), rates)
    return div.reshape(x0.shape[0], -1).sum(-1)


def ctmc_elbo(model, x0: Tensor, process: Corruption, *, n_t: int = 1,
              generator: torch.Generator | None = None) -> Tensor:
    """Negative continuous-time ELBO per sample for either corruption: (batch,) float64 nats.

    The path-space bound of the reverse CTMC (Campbell et al. 2022, Prop. 2; Lou et al. 2024's score
    entropy in the x0-parameterisation) with the tokens' independent forward chains::

        -log p(x0) <= KL(q_1(. | x0) || pi) + int_0^1 E_{x_t ~ q_t(. | x0)} [ctmc_loss] dt

    With the exact posterior marginals the model's reverse chain is the exact time reversal (one
    token jumps at a time, so per-position marginals are all it needs) and the bound is tight, for
    uniform corruption as for masking; the discrete-time (D3PM) bounds are strict. ``n_t`` stratified
    times per sample; unbiased.
    """
    check_tokens(x0, process.vocab)
    if not (isinstance(n_t, int) and n_t >= 1):
        raise ValueError(f"n_t must be a positive integer, got {n_t!r}")
    q1 = process.marginal(x0, 1.0)
    pi = process.prior().to(q1.device)
    logs = torch.where(q1 > 0, torch.log(q1.clamp_min(1e-300)) - torch.log(pi.clamp_min(1e-300)), 0.0)
    prior = (q1 * logs).reshape(x0.shape[0], -1).sum(-1)
    u = torch.rand(x0.shape[0], dtype=torch.float64, generator=generator).to(x0.device)
    total = 0.0
    for j in range(n_t):
        t = (j + 1 - u) / n_t
        total = total + ctmc_loss(model, x0, process.corrupt(x0, t, generator), t, process)
    return prior + total / n_t


def _grid(steps: int, t_max: float = 1.0) -> list[float]:
    if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1):
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    return [t_max * (1 - i / steps) for i in range(steps + 1)]


def _categorical(p: Tensor, generator) -> Tensor:
    """One draw per row of probabilities p (..., S) -> (...) int64 (by inverse CDF: batch-shape free)."""
    u = torch.rand(p.shape[:-1] + (1,), dtype=p.dtype, generator=generator).to(p.device)
    c = p.cumsum(-1)
    return torch.searchsorted(c / c[..., -1:], u).clamp_max(p.shape[-1] - 1).squeeze(-1)


def _start(process: Corruption, shape, generator, device) -> Tensor:
    if len(shape) < 2 or math.prod(shape) == 0:
        raise ValueError(f"shape must be (batch, *shape) and non-empty, got {tuple(shape)}")
    return process.sample_prior(shape, generator, device)


def ancestral(model, process: Corruption, shape, steps: int, *, generator: torch.Generator | None = None,
              device=None) -> Tensor:
    """Exact ancestral steps of the reverse chain on a uniform grid of ``steps`` intervals: (*shape) int64.

    Each step draws x_s ~ p(x_s | x_t) per position from the model's p(x0 | x_t). With the masking
    process and the exact posterior this is exact whenever at most one token changes per step, so the
    samples converge to p(x0) as steps grow. The last step goes to t = 0, where p(x_0 | x_t) is
    p(x0 | x_t) itself: no mask is left.
    """
    x = _start(process, shape, generator, device)
    ts = _grid(steps)
    for t, s in zip(ts[:-1], ts[1:]):
        p0 = log_probs(model, x, t, process.vocab).exp()
        x = _categorical(reverse_probs(process, p0, x, s, t), generator)
    return x


def tau_leaping(model, process: Corruption, shape, steps: int, *, generator: torch.Generator | None = None,
                device=None) -> Tensor:
    """Tau-leaping (Campbell et al. 2022, sec. 4.1) on a uniform grid: (*shape) int64.

    Over a step [s, t] the reverse rates R^ are frozen at the midpoint time (finite for every schedule,
    where the ends can be singular) and the number of jumps of each position is Poisson with mean
    (t - s) sum_j R^(x, j). A position moves when exactly one jump is drawn (to j with probability
    proportional to R^(x, j)); two or more jumps of a categorical (unordered) token are rejected and it
    stays. The error is O(step), so the marginals converge to the exact ones as steps grow. Masks left
    at t = 0 are filled from the model's p(x0 | x_0).
    """
    x = _start(process, shape, generator, device)
    ts = _grid(steps)
    for t, s in zip(ts[:-1], ts[1:]):
        mid = 0.5 * (t + s)
        p0 = log_probs(model, x, mid, process.vocab).exp()
        rates = reverse_rates(process, p0, x, mid) * (t - s)
        lam = rates.sum(-1)
        u = torch.rand(lam.shape, dtype=torch.float64, generator=generator).to(x.device)
        one = u < lam * torch.exp(-lam)  # P(exactly one Poisson event)
        dest = _categorical(rates + (lam[..., None] == 0) * 1.0, generator)
        x = torch.where(one, dest, x)
    if process.kind is Kind.MASK:
        left = x == process.mask_id
        if bool(left.any()):
            p0 = log_probs(model, x, 0.0, process.vocab).exp()
            x = torch.where(left, _categorical(p0, generator), x)
    return x


def _cosine(r: float) -> float:
    return math.cos(math.pi / 2 * r)


MASK_SCHEDULES = {"cosine": _cosine, "linear": lambda r: 1 - r, "square": lambda r: 1 - r * r}

CHOICE_TEMPERATURE = 4.5
"""MaskGIT's reference decoder's Gumbel scale on the confidences (annealed by 1 - k / K)."""


def mask_counts(length: int, steps: int, schedule: str = "cosine") -> list[int]:
    """How many of ``length`` tokens MaskGIT leaves masked after each of its ``steps`` steps.

    ceil(L gamma(k / K)) for k < K, at least one token fewer than the step before (every step fixes
    a token; a schedule too flat for K steps is taken as fast as that allows), and 0 after the last.
    """
    if schedule not in MASK_SCHEDULES:
        raise ValueError(f"unknown mask schedule {schedule!r}; choose one of: {', '.join(MASK_SCHEDULES)}")
    _grid(steps)
    gamma, left, out = MASK_SCHEDULES[schedule], length, []
    for k in range(1, steps + 1):
        left = 0 if k == steps else max(0, min(math.ceil(length * gamma(k / steps)), left - 1))
        out.append(left)
    return out


def maskgit(model, process: Corruption, shape, steps: int, *, schedule: str = "cosine", temperature: float = 1.0,
            choice_temperature: float = CHOICE_TEMPERATURE, generator: torch.Generator | None = None,
            device=None) -> Tensor:
    """MaskGIT's confidence-ordered parallel decoding (Chang et al. 2022, sec. 3.2): (*shape) int64.

    Start all masked; at step k = 1..K (K = ``steps``) draw every masked token from p(x0 | x_t)^(1 /
    temperature) (temperature 0 = argmax), then fix the most confident of them so that
    :func:`mask_counts` tokens stay masked (gamma = ``schedule``: cosine, linear or square); fixed
    tokens never change and the last step fixes all. Confidence = log-probability of the drawn token
    plus ``choice_temperature`` (1 - k / K) Gumbel noise, as the reference decoder anneals it (its
    default 4.5). ``choice_temperature`` 0 is pure confidence order: mode seeking, biased, and the
    more so the more steps (fewer tokens drawn per step without selection); ``math.inf`` is a
    uniformly random order: with temperature 1 and one token per step (steps >= pi L / 2 for the
    cosine schedule) that is the any-order factorisation, exact for the exact posterior. The model
    is called at the time t whose mask fraction 1 - alpha(t) is the current one.
    """
    _need_mask(process, "maskgit")
    if not (temperature >= 0 and choice_temperature >= 0):
        raise ValueError(f"temperatures must be >= 0, got {temperature!r}, {choice_temperature!r}")
    x = _start(process, shape, generator, device)
    B, L = x.shape[0], math.prod(x.shape[1:])
    counts = mask_counts(L, steps, schedule)
    for k, n_keep in enumerate(counts, start=1):
        masked = (x == process.mask_id).reshape(B, L)
        if not bool(masked.any()):
            break
        t = process.t_of_alpha(1 - masked.double().mean(-1)).to(x.device)  # (B,)
        lp = log_probs(model, x, t, process.vocab).reshape(B, L, -1)
        if temperature == 0:
            draw = lp.argmax(-1)
        else:
            draw = _categorical(torch.softmax(lp / temperature, -1), generator)
        conf = _confidence(torch.gather(lp, -1, draw[..., None]).squeeze(-1), choice_temperature * (1 - k / steps),
                           generator)
        conf = torch.where(masked, conf, torch.full_like(conf, math.inf))  # fixed tokens are never re-masked
        rank = conf.argsort(-1).argsort(-1)  # 0 = least confident
        fix = masked & (rank >= n_keep)
        x = torch.where(fix, draw, x.reshape(B, L)).reshape(x.shape)
    return x


def _confidence(logp: Tensor, scale: float, generator) -> Tensor:
    """log-probability of the drawn tokens plus ``scale`` Gumbel noise (scale inf: the noise alone)."""
    if scale == 0:
        return logp
    u = torch.rand(logp.shape, dtype=torch.float64, generator=generator).to(logp.device).clamp_min(1e-300)
    gumbel = -torch.log(-torch.log(u))
    return gumbel if math.isinf(scale) else logp + scale * gumbel


SAMPLERS = {"ancestral": ancestral, "tau-leaping": tau_leaping, "maskgit": maskgit}
"""Discrete sampler names (``--sampler`` of discrete runs) -> functions (model, process, shape, steps, ...)."""
