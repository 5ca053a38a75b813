"""Progressive distillation (Salimans & Ho 2022): a student learns to take one step where its
teacher takes two, and the rounds N -> N/2 -> ... -> 1 halve the steps each time.

In the canonical scale-free form x = x0 + sigma n, a deterministic DDIM step is the Euler step
x' = D + (sigma'/sigma)(x - D) (:func:`diffusionlens.samplers.euler_update`). Two teacher steps
sigma -> mid -> sigma'' land at x''; the student's single step lands there too exactly when its
denoiser returns the x0-target

    x0_target = (x'' - (sigma''/sigma) x) / (1 - sigma''/sigma)        (x'' itself at sigma'' = 0).

The loss regresses the student's D on it with the paper's weights: truncated SNR max(SNR, 1) for
the x0 parameterization, or SNR + 1, which makes the x0-space error the v-prediction error
(scale-free SNR = 1/sigma^2).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .._util import as_sigma, expand
from ..objectives.base import Batch, Objective, Streams
from ..samplers import euler_update, make_grid

__all__ = ["WEIGHTINGS", "data_sampler", "two_step_target", "halvable_grid", "ProgressiveDistillation",
           "ProgressiveRounds", "progressive_distill"]

WEIGHTINGS = ("truncated-snr", "v")


def two_step_target(teacher, x: Tensor, sigma: float, sigma_next: float, sigma_mid: float) -> Tensor:
    """The x0-target that carries x from sigma to sigma_next in one Euler step, as two teacher
    Euler (DDIM) steps sigma -> sigma_mid -> sigma_next do."""
    if not (sigma > sigma_mid > sigma_next >= 0):
        raise ValueError(f"need sigma > sigma_mid > sigma_next >= 0, got {sigma}, {sigma_mid}, {sigma_next}")
    x1 = euler_update(x, teacher(x, as_sigma(sigma, x)), sigma, sigma_mid)
    x2 = euler_update(x1, teacher(x1, as_sigma(sigma_mid, x1)), sigma_mid, sigma_next)
    r = sigma_next / sigma
    return x2 if r == 0.0 else (x2 - r * x) / (1.0 - r)


def halvable_grid(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> Tensor:
    """The teacher's (steps + 1,) Karras grid ending at 0; ``steps`` must be a power of two so that
    every round's student grid is every other level of its teacher's."""
    if not (isinstance(steps, int) and steps >= 2 and steps & (steps - 1) == 0):
        raise ValueError(f"steps must be a power of two >= 2 (halved each round), got {steps!r}")
    return make_grid("karras", steps, sigma_min, sigma_max, rho=rho)


class ProgressiveDistillation(Objective):
    """One round: the student's per-sample loss on the student grid ``grid[::2]``.

    Args:
        teacher: a canonical denoiser D(x, sigma) (a trained model or the exact oracle); frozen.
        grid: the teacher's decreasing grid ending at 0 (even number of intervals).
        weighting: ``"truncated-snr"`` (max(SNR, 1), x0 parameterization) or ``"v"`` (SNR + 1).

    Draws the student step uniformly from stream ``t`` and the noise from ``noise``. State: the
    grid and, for a module teacher, its weights (a resumed round continues with the same teacher).
    """

    streams = ("t", "noise")

    def __init__(self, teacher, grid, weighting: str = "truncated-snr"):
        grid = torch.as_tensor(grid, dtype=torch.float64).flatten()
        if len(grid) < 3 or (len(grid) - 1) % 2 or float(grid[-1]) != 0.0 or bool((grid[1:] >= grid[:-1]).any()):
            raise ValueError(f"grid must decrease to 0 over an even number of intervals, got {grid.tolist()}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; choose one of: {', '.join(WEIGHTINGS)}")
        self.teacher, self.grid, self.weighting = teacher, grid, weighting
        if isinstance(teacher, nn.Module):
            teacher.requires_grad_(False).eval()

    @property
    def student_steps(self) -> int:
        return (len(self.grid) - 1) // 2

    def weight(self, sigma: Tensor) -> Tensor:
        snr = sigma.pow(-2)
        return snr.clamp(min=1.0) if self.weighting == "truncated-snr" else snr + 1.0

    def __call__(self, model, batch: Batch, rng: Streams) -> Tensor:
        x0, n = batch.x0, batch.size
        i = torch.randint(self.student_steps, (n,), generator=rng["t"])
        noise = torch.randn(x0.shape, generator=rng["noise"], dtype=x0.dtype).to(x0.device)
        i, x0, noise = batch.local(i), batch.local(x0), batch.local(noise)
        sigma = self.grid[2 * i].to(x0)
        x = x0 + expand(sigma, x0) * noise
        target = torch.empty_like(x0)
        with torch.no_grad():
            for k in i.unique().tolist():
                m = i == k
                g = self.grid[2 * k: 2 * k + 3].tolist()
                target[m] = two_step_target(self.teacher, x[m], g[0], g[2], g[1]).to(x0.dtype)
        err = (model(x, sigma) - target).pow(2).flatten(1).mean(1)
        loss = self.weight(sigma) * err
        if not bool(torch.isfinite(loss).all()):
            raise FloatingPointError("non-finite progressive-distillation loss")
        return loss

    def state_dict(self) -> dict:
        state = {"grid": self.grid.clone(), "weighting": self.weighting}
        if isinstance(self.teacher, nn.Module):
            state.update({f"teacher/{k}": v.clone() for k, v in self.teacher.state_dict().items()})
        return state

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        grid, weighting = state.pop("grid"), state.pop("weighting")
        self.__init__(self.teacher, grid, weighting)
        teacher = {k[len("teacher/"):]: v for k, v in state.items() if k.startswith("teacher/")}
        if teacher:
            self.teacher.load_state_dict(teacher)
        elif isinstance(self.teacher, nn.Module):
            raise ValueError("state has no teacher weights for a module teacher")


def _rounds(steps: int, final_steps: int) -> int:
    if not (isinstance(final_steps, int) and 1 <= final_steps < steps and steps % final_steps == 0
            and (steps // final_steps) & (steps // final_steps - 1) == 0):
        raise ValueError(f"final_steps must be steps / 2^k for k >= 1, got {final_steps!r} with steps={steps}")
    return (steps // final_steps).bit_length() - 1


def _snapshot(model) -> nn.Module:
    """A frozen copy of a training model (a canonical denoiser around a network, unwrapped from DDP)."""
    net = model.net
    model.net = getattr(net, "module", net)
    try:
        return copy.deepcopy(model).requires_grad_(False).eval()
    finally:
        model.net = net


class ProgressiveRounds(Objective):
    """Every round steps -> steps/2 -> ... -> final_steps in one training run of ``total`` steps, for the
    generic training loop: round r takes steps [r T, (r + 1) T) with T = total // rounds (the last one
    the rest); at a round's end the student, frozen, becomes the next round's teacher and the network
    trains on.

    State: the step count, the current round's grid and teacher weights, and every finished round's
    student network (``students/<k>/...``, k = its steps), so a resumed run continues exactly and the
    run directory holds a student for every step count.
    """

    streams = ("t", "noise")

    def __init__(self, teacher, steps: int, total: int, *, final_steps: int = 1, weighting: str = "truncated-snr",
                 sigma_min: float = 0.002, sigma_max: float = 80.0):
        grid = halvable_grid(steps, sigma_min, sigma_max)
        self.rounds = _rounds(steps, final_steps)
        if not (isinstance(total, int) and total >= self.rounds):
            raise ValueError(f"a budget of {total!r} training steps is too small for the {self.rounds} rounds "
                             f"{steps} -> {final_steps} steps (one step per round at the least)")
        self.total, self.per_round, self.k, self.round = total, total // self.rounds, 0, 0
        self.current = ProgressiveDistillation(teacher, grid, weighting)
        self.students: dict[int, dict] = {}
        self._pending: dict | None = None

    def round_of(self, k: int) -> int:
        return min(k // self.per_round, self.rounds - 1)

    def __call__(self, model, batch: Batch, rng: Streams) -> Tensor:
        if self._pending is not None:  # resumed after round 0: the teacher is a network like the student's
            teacher = _snapshot(model)
            teacher.net.load_state_dict(self._pending)
            self.current = ProgressiveDistillation(teacher, self.current.grid, self.current.weighting)
            self._pending = None
        if self.round_of(self.k) != self.round:
            done = _snapshot(model)
            self.students[self.current.student_steps] = {k: v.clone() for k, v in done.net.state_dict().items()}
            self.current = ProgressiveDistillation(done, self.current.grid[::2], self.current.weighting)
            self.round += 1
        loss = self.current(model, batch, rng)
        self.k += 1
        return loss

    def state_dict(self) -> dict:
        state = {"k": self.k, "round": self.round, "total": self.total, "grid": self.current.grid.clone(),
                 "weighting": self.current.weighting}
        teacher = self.current.teacher
        if self._pending is not None:
            state.update({f"teacher/{k}": v.clone() for k, v in self._pending.items()})
        elif self.round > 0:
            state.update({f"teacher/{k}": v.clone() for k, v in teacher.net.state_dict().items()})
        for steps, weights in self.students.items():
            state.update({f"students/{steps}/{k}": v for k, v in weights.items()})
        return state

    def load_state_dict(self, state: dict) -> None:
        if state.get("total") != self.total:
            raise ValueError(f"progressive-distillation state must have total={self.total}, got {state.get('total')}")
        self.k, self.round = int(state["k"]), int(state["round"])
        grid = torch.as_tensor(state["grid"], dtype=torch.float64)
        self.current = ProgressiveDistillation(self.current.teacher, grid, state["weighting"])
        teacher = {k[len("teacher/"):]: v for k, v in state.items() if k.startswith("teacher/")}
        self._pending = teacher if self.round > 0 else None
        self.students = {}
        for key, v in state.items():
            if key.startswith("students/"):
                _, steps, name = key.split("/", 2)
                self.students.setdefault(int(steps), {})[name] = v


def data_sampler(data) -> Callable[[int, torch.Generator], Tensor]:
    """``data`` as a function (n, generator) -> x0: rows of a tensor drawn with replacement, or itself."""
    if isinstance(data, Tensor):
        return lambda n, g: data[torch.randint(len(data), (n,), generator=g)]
    if callable(data):
        return data
    raise TypeError(f"data must be a tensor of x0 or a callable (n, generator) -> x0, got {type(data).__name__}")


def progressive_distill(
    teacher,
    data,
    *,
    steps: int,
    student: nn.Module | None = None,
    final_steps: int = 1,
    iters: int = 500,
    batch_size: int = 256,
    lr: float = 1e-3,
    weighting: str = "truncated-snr",
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    seed: int = 0,
    callback: Callable[[dict], None] | None = None,
) -> dict[int, nn.Module]:
    """Rounds steps -> steps/2 -> ... -> final_steps; returns every round's student (frozen canonical
    denoisers) by its number of steps, each to be sampled with Euler/DDIM on its grid
    ``halvable_grid(steps, sigma_min, sigma_max)[::steps // k]`` (not the k-step Karras grid, whose
    last positive level is sigma_min; :class:`ProgressiveDistillation` runs one round on any grid).

    ``student`` defaults to a copy of ``teacher`` (a module); for a teacher that is not a module
    (the exact oracle) pass the initial student. Each round trains a copy of the previous round's
    student for ``iters`` Adam steps on batches of ``data`` (a tensor of x0 or ``data(n, generator)``)
    and then becomes the next round's teacher. ``callback`` gets {"round", "steps", "iter", "loss"}.
    """
    grid = halvable_grid(steps, sigma_min, sigma_max)
    _rounds(steps, final_steps)
    if student is None:
        if not isinstance(teacher, nn.Module):
            raise ValueError("a teacher that is not a torch module cannot initialise the student: pass student=")
        student = copy.deepcopy(teacher)
    draw = data_sampler(data)
    rng = Streams(seed)
    rnd, students = 0, {}
    while len(grid) - 1 > final_steps:
        objective = ProgressiveDistillation(teacher, grid, weighting)
        student.requires_grad_(True).train()
        opt = torch.optim.Adam(student.parameters(), lr=lr)
        for it in range(iters):
            x0 = draw(batch_size, rng["data"])
            loss = objective(student, Batch(x0), rng).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if callback is not None:
                callback({"round": rnd, "steps": objective.student_steps, "iter": it, "loss": loss.item()})
        students[objective.student_steps] = student.requires_grad_(False).eval()
        teacher, grid, rnd = student, grid[::2], rnd + 1
        student = copy.deepcopy(student)
    return students
