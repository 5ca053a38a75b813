"""A training run in a subprocess that can be SIGKILLed at an arbitrary moment, and compared with an
uninterrupted one: what the exact-resume tests of ordinary and distilled runs share."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

_SCRIPT = r"""
import sys, time, torch
torch.set_num_threads(1)
from diffusionlens.training import TrainConfig, train
cfg = TrainConfig.from_json(open(sys.argv[1]).read())
slow = float(sys.argv[3])
def cb(step, state):
    time.sleep(slow)
train(cfg, sys.argv[2], resume=sys.argv[4] == "resume", progress=False, callback=cb if slow else None)
"""


def start(cfg_path: Path, run_dir: Path, slow: float = 0.0, mode: str = "fresh") -> subprocess.Popen:
    """``train`` of the config at ``cfg_path`` into ``run_dir`` in a new process (``slow`` s of sleep per step)."""
    return subprocess.Popen([sys.executable, "-c", _SCRIPT, str(cfg_path), str(run_dir), str(slow), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen, timeout: float = 120) -> None:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err.decode()[-2000:]


def kill_after_checkpoint(proc: subprocess.Popen, run_dir: Path, lo: int, hi: int) -> None:
    """SIGKILL ``proc`` shortly after a checkpoint of a step in [lo, hi] appears (possibly while another one
    is being written); any step in the window counts, since on a loaded machine the poll may miss one
    before it is pruned."""
    ckpt_dir = run_dir / "checkpoints"
    deadline = time.time() + 60
    while time.time() < deadline and not (ckpt_dir.exists() and any(
            p.name.startswith("step-") and p.name.endswith(".json") and lo <= int(p.name[5:13]) <= hi
            for p in ckpt_dir.iterdir())):
        time.sleep(0.005)
    time.sleep(0.037)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "result.json").exists()  # it really died mid-run


def killed_and_resumed_equals_uninterrupted(cfg, tmp_path: Path, lo: int, hi: int, *, rtol=1e-6, atol=1e-7) -> None:
    """Train ``cfg`` once without interruption and once SIGKILLed after a checkpoint in [lo, hi] and resumed:
    the final checkpoints (model, EMA, optimiser, objective state) and the loss log agree."""
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(cfg.to_json())
    ref = start(cfg_path, tmp_path / "ref")
    killed = start(cfg_path, tmp_path / "killed", slow=0.01)
    kill_after_checkpoint(killed, tmp_path / "killed", lo, hi)
    finish(start(cfg_path, tmp_path / "killed", mode="resume"))
    finish(ref)
    last = f"step-{cfg.steps:08d}.safetensors"
    a = load_file(tmp_path / "ref" / "checkpoints" / last)
    b = load_file(tmp_path / "killed" / "checkpoints" / last)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=k)

    def losses(run):  # the metrics log was cut back to the checkpoint and replayed
        return [(r["step"], r["loss"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                if "loss" in r]

    la, lb = losses(tmp_path / "ref"), losses(tmp_path / "killed")
    assert [s for s, _ in la] == [s for s, _ in lb]
    bad = [(s, x, y) for (s, x), (_, y) in zip(la, lb) if abs(x - y) > 1e-6 * abs(x)]
    assert not bad, bad
