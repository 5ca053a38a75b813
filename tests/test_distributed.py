"""DistributedDataParallel: 2 gloo ranks on localhost reproduce the single-process run with the
same global batch, and only rank 0 writes."""

import os
import socket

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from diffusionlens.training import TrainConfig, train

CFG = dict(dataset="moons", n_train=256, batch_size=32, steps=12, ckpt_every=6, log_every=4, warmup_steps=3,
           net={"kind": "mlp", "data_shape": [2], "width": 16, "depth": 1, "emb_dim": 16})


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
