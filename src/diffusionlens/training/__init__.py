"""Training: configuration, loop, checkpoints, EMA and distributed data parallel.

    from diffusionlens.training import TrainConfig, train, load_denoiser
    result = train(TrainConfig(dataset="digits", minutes=3, steps=None), "runs/digits")
    denoiser, cfg = load_denoiser("runs/digits")          # canonical D(x_hat, sigma), EMA weights
    train(resume_config("runs/digits", minutes=5), "runs/digits", resume=True)   # continue it

What a step minimises is the config's objective (:mod:`diffusionlens.objectives`); the loop is the
same for all.

See :mod:`diffusionlens.training.loop` for the determinism and resume guarantees and the run
directory layout, :mod:`~diffusionlens.training.checkpoint` for the checkpoint format.

Distributed training (PyTorch DistributedDataParallel, launched with ``torchrun``; gloo on CPU,
nccl on CUDA). ``batch_size`` is the *global* batch, split evenly over the ranks; every rank uses
the same seed, so W processes reproduce the single-process run with the same global batch (to
float summation order). Only rank 0 writes the run directory and shows progress. Any script that
calls :func:`train` can be launched this way, e.g. the CLI:

* one machine, 2 processes::

      torchrun --standalone --nproc_per_node=2 -m diffusionlens.cli train --dataset digits ...

* several machines (N nodes, P processes each; run on every node, with the same rendezvous
  address, a node's reachable host name or IP, and port; the run directory must be on a
  filesystem that rank 0 can write and that is shared if you want to resume from another node)::

      torchrun --nnodes=N --nproc_per_node=P --node_rank=<0..N-1> \\
               --rdzv_backend=c10d --rdzv_endpoint=<host-of-node-0>:29500 --rdzv_id=<job-id> \\
               -m diffusionlens.cli train --dataset mnist --device cuda ...

  (equivalently ``--master_addr=<host-of-node-0> --master_port=29500`` instead of the rdzv
  flags). On GPUs each rank uses ``cuda:LOCAL_RANK`` and nccl; on CPUs gloo (set
  ``GLOO_SOCKET_IFNAME`` to the network interface if the hosts have several, and
  ``OMP_NUM_THREADS`` to the cores per process). The global batch must be divisible by N * P.
  Resuming a distributed run works like a single-process one (``resume=True`` / ``--resume``),
  with any number of ranks that divides the batch.
* A hung or stopped rank makes the others wait in the next collective; ``TrainConfig.timeout``
  (``--timeout``, seconds; None = torch's default of 30 minutes for gloo, 10 for nccl) bounds that
  wait, after which every rank fails. Rank 0's progress line shows ``idle``, the seconds since the
  last completed step, updated while it waits, so a hang is visible long before the timeout.
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .config import PROCESSES, TrainConfig, make_loss, make_process
from .ema import ema_beta, power_gamma, update_ema
from .loop import TrainResult, TrainState, load_denoiser, lr_at, resume_config, train

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "train",
    "load_denoiser",
    "resume_config",
    "load_checkpoint",
    "save_checkpoint",
    "make_loss",
    "make_process",
    "PROCESSES",
    "ema_beta",
    "power_gamma",
    "update_ema",
    "lr_at",
]
