"""The objective interface: the loop is generic over objectives, an objective's own state is
checkpointed and resumed, a diverged objective raises FloatingPointError, and the denoising objective
with label dropout draws exactly what the loop drew before objectives existed."""

import math

import pytest
import torch
from safetensors.torch import load_file

from diffusionlens.losses import edm_loss
from diffusionlens.objectives import OBJECTIVES, Batch, Denoising, Objective, Streams
from diffusionlens.oracle import ring
from diffusionlens.training import TrainConfig, train

TINY = {"kind": "mlp", "data_shape": [2], "width": 16, "depth": 1, "emb_dim": 16}


class Counting(Objective):
    """Denoising plus a state: the number of calls (a tensor) and the last batch size (a scalar)."""

    streams = ("t", "noise", "extra")

    def __init__(self, inner, nan_at=None):
        self.inner, self.calls, self.last, self.nan_at = inner, torch.zeros((), dtype=torch.long), 0, nan_at

    def __call__(self, model, batch, rng):
        self.calls += 1
        self.last = batch.size
        torch.rand(1, generator=rng["extra"])
        per = self.inner(model, batch, rng)
        return per * math.nan if self.nan_at == int(self.calls) else per

    def state_dict(self):
        return {"calls": self.calls.clone(), "last": self.last}

    def load_state_dict(self, state):
        self.calls, self.last = state["calls"].clone(), int(state["last"])


def _cfg(**kw):
    base = dict(dataset="moons", n_train=256, batch_size=16, steps=12, net=TINY, ckpt_every=4, log_every=2,
                warmup_steps=2, cooldown=0.0, objective="counting")
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def counting(monkeypatch):
    made = []

    def build(cfg, data):
        made.append(Counting(OBJECTIVES["denoising"](cfg, data), nan_at=cfg.seed or None))
        return made[-1]

    monkeypatch.setitem(OBJECTIVES, "counting", build)
    return made


def test_objective_state_is_checkpointed_and_resumed(tmp_path, counting):
    train(_cfg(), tmp_path / "ref", progress=False)
    train(_cfg(steps=8), tmp_path / "run", progress=False)
    meta = (tmp_path / "run" / "checkpoints" / "step-00000008.json").read_text()
    assert '"objective": {\n  "last": 16' in meta and '"extra"' in meta
    assert load_file(tmp_path / "run" / "checkpoints" / "step-00000008.safetensors")["objective/calls"] == 8
    train(_cfg(), tmp_path / "run", resume=True, progress=False)
    assert int(counting[-1].calls) == 12  # resumed from 8, not restarted
    a = load_file(tmp_path / "ref" / "checkpoints" / "step-00000012.safetensors")
    b = load_file(tmp_path / "run" / "checkpoints" / "step-00000012.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # exact resume, the objective's own stream included


def test_a_diverged_objective_raises_floating_point_error(tmp_path, counting):
    with pytest.raises(FloatingPointError, match="step 2: non-finite loss from the 'counting' objective"):
        train(_cfg(seed=3), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_denoising_draws_the_global_batch_and_keeps_its_rows():
    """Two ranks' rows of the global batch give the losses of the whole batch in one process."""
    loss = edm_loss()
    obj = Denoising(loss, label_dropout=0.5, null_label=10)
    x0 = ring().sample(8, torch.Generator().manual_seed(0)).float()
    y = torch.arange(8)

    def model(x, s, y=None):
        return x * 0.5 + (0 if y is None else y[:, None] * 0.01)

    whole = obj(model, Batch(x0, y), Streams(5))
    parts = [obj(model, Batch(x0, y, rows=slice(a, a + 4)), Streams(5)) for a in (0, 4)]
    torch.testing.assert_close(torch.cat(parts), whole)
    # the stream layout of the training loop: t from "t", then noise and label drops from "noise"
    rng = Streams(5)
    t = loss.sample_t(8, rng["t"])
    noise = torch.randn(x0.shape, generator=rng["noise"])
    drop = torch.rand(8, generator=rng["noise"]) < 0.5
    expect = loss(model, x0, t=t, noise=noise, y=torch.where(drop, torch.full_like(y, 10), y))
    torch.testing.assert_close(whole, expect)
