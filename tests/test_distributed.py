"""Distributed runs on 2 gloo ranks on localhost: DistributedDataParallel training reproduces the
single-process run with the same global batch (only rank 0 writes), and dataset-scale likelihood
evaluation with uneven shards finishes and merges to the single-process statistics."""

import os
import socket
import time

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from diffusionlens.training import TrainConfig, train

CFG = dict(dataset="moons", n_train=256, batch_size=32, steps=12, ckpt_every=6, log_every=4, warmup_steps=3,
           net={"kind": "mlp", "data_shape": [2], "width": 16, "depth": 1, "emb_dim": 16}, timeout=120)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, run_dir: str, cfg_json: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    res = train(TrainConfig.from_json(cfg_json), run_dir, progress=False)
    assert res.step == 12


def test_two_ranks_equal_one_process(tmp_path):
    cfg = TrainConfig(**CFG)
    single = train(cfg, tmp_path / "single", progress=False)
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path / "ddp"), cfg.to_json()), nprocs=2,
                       start_method="spawn", join=True)
    a = load_file(tmp_path / "single" / "checkpoints" / "step-00000012.safetensors")
    b = load_file(tmp_path / "ddp" / "checkpoints" / "step-00000012.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        if k.startswith(("model/", "ema/")):
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6, msg=k)
    # the logged loss is the global-batch mean, as in the single-process run
    import json

    la = [json.loads(line)["loss"] for line in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(line)["loss"] for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert len(la) == len(lb) and all(abs(x - y) < 1e-4 * abs(x) for x, y in zip(la, lb))
    assert single.step == 12


# ------------------------------------------------------------------ dataset-scale likelihood under torchrun


def _ll_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    from diffusionlens.likelihood import evaluate, log_likelihood
    from diffusionlens.oracle import ring

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        gm = ring()
        x = gm.sample(12, torch.Generator().manual_seed(5))
        shard = x[:9] if rank == 0 else x[9:]  # 3 batches on rank 0, 1 on rank 1; different step counts
        s = evaluate(lambda b: log_likelihood(gm, b, sigma_min=0.002, sigma_max=80.0, rtol=1e-4, atol=1e-4),
                     shard, batch_size=3, progress=False)
        torch.save({"n": s.n, "mean": s.mean, "stderr": s.stderr}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def test_likelihood_streaming_does_not_hang_with_uneven_ranks(tmp_path):
    """Two gloo ranks with different numbers of batches (and so different adaptive step counts) finish,
    and both report the mean and standard error of the whole dataset, as one process computes them:
    the solver loop holds no collective; one all-reduce follows the last batch."""
    from diffusionlens.likelihood import evaluate, log_likelihood
    from diffusionlens.oracle import ring

    ctx = mp.start_processes(_ll_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, start_method="spawn",
                             join=False)
    limit = 240.0
    deadline = time.monotonic() + limit
    while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):  # True once every rank has exited
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            raise AssertionError(f"distributed likelihood evaluation did not finish within {limit} s")
    torch.set_num_threads(1)
    gm = ring()
    x = gm.sample(12, torch.Generator().manual_seed(5))
    ref = evaluate(lambda b: log_likelihood(gm, b, sigma_min=0.002, sigma_max=80.0, rtol=1e-4, atol=1e-4), x,
                   batch_size=3, progress=False)
    for rank in range(2):
        r = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert r["n"] == 12
        assert abs(r["mean"] - ref.mean) < 1e-9 * abs(ref.mean) + 1e-12, (rank, r, ref.mean)
        assert abs(r["stderr"] - ref.stderr) < 1e-9 * ref.stderr, (rank, r, ref.stderr)


def test_timeout_reaches_the_process_group(monkeypatch):
    import datetime

    from diffusionlens.training import distributed

    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend, **kw: seen.update(kw, backend=backend))
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 0)
    distributed.setup("cpu", timeout=7.5)
    assert seen == {"backend": "gloo", "timeout": datetime.timedelta(seconds=7.5)}
    seen.clear()
    distributed.setup("cpu", timeout=None)
    assert seen == {"backend": "gloo"}  # torch's default
