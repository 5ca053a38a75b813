"""Parts of benchmarks/interpolants.py that map one data set to another (its entry point runs them):
rectified flow with reflow on the digits, and iterative alpha-(de)blending checkerboard <-> moons and
digits 0 <-> 1; with the helpers every part shares (the peer MLP, the exact W2)."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

import diffusionlens.interpolants as I

RESULTS = Path(__file__).parent / "results"

class PeerMLP(nn.Module):
    """torchcfm's 2-D network (``torchcfm.models.MLP(2, time_varying=True, w=64)``'s layers), called as net(x, t)."""

    def __init__(self, d: int = 2, w: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d + 1, w), nn.SELU(), nn.Linear(w, w), nn.SELU(), nn.Linear(w, w),
                                 nn.SELU(), nn.Linear(w, d))

    def forward(self, x, t):
        return self.net(torch.cat([x, t[:, None].to(x.dtype)], 1))


def w2(x, y) -> float:
    """Exact 2-Wasserstein distance between two equal-size empirical measures (an optimal assignment)."""
    c = torch.cdist(x.detach().double().flatten(1), y.detach().double().flatten(1)).pow(2)
    r, k = linear_sum_assignment(c.numpy())
    return float(c[r, k].mean().sqrt())


def _mean(v) -> float:
    return sum(v) / len(v)



# ---------------------------------------------------------------------- digits: reflow, and blending 0 <-> 1


def _digit_net():
    from diffusionlens.nets import MLP

    return MLP((1, 8, 8), width=256, depth=3, emb_dim=64)


def _fd(x, ref, floor_samples, clf):
    from diffusionlens.evaluate import image_frechet

    return image_frechet(x.clamp(-1, 1), ref, classifier=clf, floor_samples=floor_samples)


def part_digits(a) -> list[str]:
    from diffusionlens.data import load_dataset
    from diffusionlens.features import load_classifier

    cpu0 = time.process_time()
    train, test = load_dataset("digits", "train").x, load_dataset("digits", "test").x
    clf = load_classifier("digits")
    noise = lambda n, g: torch.randn(n, 1, 8, 8, generator=g)  # noqa: E731
    rows: dict[str, list] = {}
    floor = []
    for seed in a.seeds:
        g = torch.Generator().manual_seed(3000 + seed)
        x1 = noise(a.n_digits, g)
        torch.manual_seed(seed)
        net = _digit_net()
        steps = len(I.fit(net, I.blend_pairs(train, noise), steps=a.digit_steps, batch_size=128, lr=2e-3, seed=seed,
                          budget_s=a.digit_budget))
        base = I.net_velocity(net)
        rounds = I.reflow(base, _digit_net, noise, rounds=1, n_pairs=4096, solve_steps=16, fit_steps=steps,
                          batch_size=128, lr=2e-3, seed=seed, n_eval=256)
        for name, v in (("rectified flow", base), ("after one reflow round", I.net_velocity(rounds[0].net))):
            r = {n: _fd(I.transport(v, x1, steps=n, method="euler").x, test, train[:a.n_digits], clf)["fd"]
                 for n in (1, 2, 4)}
            conv = I.transport(v, x1, steps=16, method="heun").x
            res = _fd(conv, test, train[:a.n_digits], clf)
            r.update(conv=res["fd"], steps=steps, s=float(I.straightness(v, x1[:256], steps=16).mean()))
            floor.append(res["fd_floor"])
            rows.setdefault(name, []).append(r)
            print(f"digits seed {seed} {name}: FD NFE1 {r[1]:.2f} converged {r['conv']:.2f}", flush=True)
    lines = ["# Rectified flow on the digits: one-step Fréchet distance before and after reflow", "",
             f"Command: `PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/interpolants.py --part digits --seeds "
             f"{' '.join(map(str, a.seeds))} --digit-steps {a.digit_steps} --digit-budget {a.digit_budget:g} "
             f"--n-digits {a.n_digits}` ({time.process_time() - cpu0:.0f} CPU s).", "",
             f"N(0, I) -> digits, `nets.MLP` (width 256, depth 3), independent coupling, batch 128, lr 2e-3, the steps "
             f"below (CPU cap {a.digit_budget:g} s); the reflow round fits a fresh net for as many steps on 4096 "
             f"(sample, noise) pairs from 16 Heun steps. FD: Fréchet distance in the digits classifier's features "
             f"of {a.n_digits} samples against the 300 test images; floor: {a.n_digits} train images against "
             f"them, {_mean(floor):.2f}. Mean over seeds.", "",
             "| model | steps | straightness | FD NFE 1 | FD NFE 2 | FD NFE 4 | FD Heun 16 (NFE 32) |",
             "|---" * 7 + "|"]
    for name, rs in rows.items():
        lines.append(f"| {name} | {', '.join(str(r['steps']) for r in rs)} | {_mean([r['s'] for r in rs]):.2f} | "
                     + " | ".join(f"{_mean([r[k] for r in rs]):.2f}" for k in (1, 2, 4, "conv")) + " |")
    return lines


BLEND_STEPS = (1, 4, 16, 64, 128)


def _blend_eval(v, inputs, refs, floors, metric) -> dict:
    """Forward (source -> target) and backward maps of held-out inputs at each Euler step count."""
    out = {}
    for direction, run in (("forward", I.forward_map), ("backward", I.backward_map)):
        x, ref, floor = inputs[direction], refs[direction], floors[direction]
        out[direction] = {T: metric(run(v, x, steps=T).x, ref) for T in BLEND_STEPS}
        out[direction]["floor"] = floor
    x = inputs["forward"]
    there = I.forward_map(v, x, steps=BLEND_STEPS[-1]).x
    out["roundtrip"] = float((I.backward_map(v, there, steps=BLEND_STEPS[-1]).x - x).pow(2).flatten(1).sum(1)
                             .mean().sqrt())
    return out


def part_blending(a) -> list[str]:
    from diffusionlens.data import load_dataset
    from diffusionlens.features import load_classifier

    cpu0 = time.process_time()
    n = a.n_eval
    tgt_train, tgt_test = load_dataset("moons", "train").x, load_dataset("moons", "test").x
    board_train, board_test = load_dataset("checkerboard", "train").x, load_dataset("checkerboard", "test").x
    inputs = {"forward": board_test[:n], "backward": tgt_test[:n]}
    refs = {"forward": tgt_test[n:2 * n], "backward": board_test[n:2 * n]}
    floors = {"forward": w2(tgt_test[2 * n:3 * n], refs["forward"]),
              "backward": w2(board_test[2 * n:3 * n], refs["backward"])}
    toy: dict[str, list] = {}
    figure = {}
    for seed in a.seeds:
        for coupling in ("independent", "ot"):
            torch.manual_seed(seed)
            net = PeerMLP()
            steps = len(I.fit_blending(net, tgt_train, board_train, coupling=coupling, steps=a.peer_steps,
                                       batch_size=256, lr=1e-3, seed=seed, budget_s=a.peer_budget))
            v = I.net_velocity(net)
            r = _blend_eval(v, inputs, refs, floors, w2)
            r["steps"] = steps
            toy.setdefault(coupling, []).append(r)
            print(f"blend 2-D seed {seed} {coupling}: fwd W2@128 {r['forward'][128]:.3f} bwd {r['backward'][128]:.3f}",
                  flush=True)
            if seed == a.seeds[0] and coupling == "independent":
                figure["toy"] = (inputs, {d: run(v, inputs[d], steps=128).x for d, run in
                                          (("forward", I.forward_map), ("backward", I.backward_map))})
    # digits 0 <-> 1: target class 1, source class 0
    data, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    clf = load_classifier("digits")
    cls = {k: data.x[data.y == k] for k in (0, 1)}
    cls_test = {k: test.x[test.y == k] for k in (0, 1)}
    inputs = {"forward": cls[0], "backward": cls[1]}
    refs = {"forward": cls_test[1], "backward": cls_test[0]}
    floors = {"forward": _fd(cls[1], refs["forward"], None, clf)["fd"],
              "backward": _fd(cls[0], refs["backward"], None, clf)["fd"]}
    dig: list = []
    for seed in a.seeds:
        torch.manual_seed(seed)
        net = _digit_net()
        steps = len(I.fit_blending(net, cls[1], cls[0], steps=a.digit_steps, batch_size=128, lr=2e-3, seed=seed,
                                   budget_s=a.digit_budget))
        v = I.net_velocity(net)

        def metric(x, ref):
            want = 1 if ref is refs["forward"] else 0
            with torch.no_grad():
                share = float((clf(x.clamp(-1, 1).float()).argmax(1) == want).double().mean())
            return _fd(x, ref, None, clf)["fd"], share

        r = _blend_eval(v, inputs, refs, floors, metric)
        r["steps"] = steps
        dig.append(r)
        print(f"blend digits seed {seed}: fwd FD@128 {r['forward'][128][0]:.2f} share {r['forward'][128][1]:.2f}",
              flush=True)
        if seed == a.seeds[0]:
            figure["digits"] = {d: (inputs[d][:10], run(v, inputs[d][:10], steps=128).x) for d, run in
                                (("forward", I.forward_map), ("backward", I.backward_map))}
    _blend_figure(figure, RESULTS / "interpolants_blending.png")
    return _blend_lines(a, toy, dig, time.process_time() - cpu0)


def _blend_lines(a, toy, dig, cpu) -> list[str]:
    lines = ["# Iterative alpha-(de)blending between two distributions", "",
             f"Command: `PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/interpolants.py --part blending --seeds "
             f"{' '.join(map(str, a.seeds))} --peer-steps {a.peer_steps} --peer-budget {a.peer_budget:g} --digit-steps "
             f"{a.digit_steps} --digit-budget {a.digit_budget:g} --n-eval {a.n_eval}` ({cpu:.0f} CPU s).", "",
             "Forward map: source -> target by IADB's deblending iteration (Euler, T steps); backward map: the same "
             "field from t = 0 to 1. Round trip: RMS distance of forward-then-backward (T = 128) from the inputs. "
             "Mean over seeds.", "",
             f"## checkerboard (source) <-> moons (target), PeerMLP, {a.peer_steps} steps max; W2 between {a.n_eval} "
             f"mapped held-out points and {a.n_eval} held-out points of the other side (floor: two held-out sets)", "",
             "| pairs | direction | steps | " + " | ".join(f"T = {T}" for T in BLEND_STEPS) + " | floor | round trip |",
             "|---" * (len(BLEND_STEPS) + 5) + "|"]
    for coupling, rs in toy.items():
        for d in ("forward", "backward"):
            lines.append(f"| {coupling} | {d} | {', '.join(str(r['steps']) for r in rs)} | "
                         + " | ".join(f"{_mean([r[d][T] for r in rs]):.3f}" for T in BLEND_STEPS)
                         + f" | {rs[0][d]['floor']:.3f} | {_mean([r['roundtrip'] for r in rs]):.4f} |")
    lines += ["", f"## digits 0 (source) <-> 1 (target), `nets.MLP`, independent pairs, {a.digit_steps} steps max",
              "", "Inputs: the train images of one class; FD (classifier features) of the mapped images against the "
              "other class's 30 test images (floor: that class's train images against them), and the share the "
              "classifier assigns to the other class. Figure: benchmarks/results/interpolants_blending.png.", "",
              "| direction | steps | " + " | ".join(f"FD, share T = {T}" for T in BLEND_STEPS) + " | FD floor | "
              "round trip |", "|---" * (len(BLEND_STEPS) + 4) + "|"]
    for d in ("forward", "backward"):
        lines.append(f"| {d} | {', '.join(str(r['steps']) for r in dig)} | "
                     + " | ".join(f"{_mean([r[d][T][0] for r in dig]):.1f}, {_mean([r[d][T][1] for r in dig]):.2f}"
                                  for T in BLEND_STEPS)
                     + f" | {dig[0][d]['floor']:.1f} | {_mean([r['roundtrip'] for r in dig]):.3f} |")
    return lines


def _blend_figure(fig_data, path) -> None:
    from diffusionlens._plot import pyplot, save_figure, show_images

    plt = pyplot()
    fig, ax = plt.subplots(2, 4, figsize=(13, 6.4))
    inputs, mapped = fig_data["toy"]
    for j, (d, title) in enumerate((("forward", "checkerboard -> moons"), ("backward", "moons -> checkerboard"))):
        for k, (pts, lab) in enumerate(((inputs[d], "input"), (mapped[d], "mapped (T = 128)"))):
            p = pts[:1000].numpy()
            ax[0, 2 * j + k].scatter(p[:, 0], p[:, 1], s=2, alpha=0.5)
            ax[0, 2 * j + k].set_title(f"{title}: {lab}", fontsize=9)
            ax[0, 2 * j + k].set_aspect("equal")
    for j, (d, title) in enumerate((("forward", "0 -> 1"), ("backward", "1 -> 0"))):
        x, y = fig_data["digits"][d]
        show_images(ax[1, 2 * j], x, 5, f"{title}: input")
        show_images(ax[1, 2 * j + 1], y.clamp(-1, 1), 5, f"{title}: mapped (T = 128)")
    save_figure(fig, path)
