"""diffusers models in and out: a ``UNet2DModel`` with its scheduler configuration <-> a run directory.

A diffusers model directory (what ``save_pretrained`` writes, nothing is downloaded) is either a
pipeline (``unet/config.json``, ``unet/diffusion_pytorch_model.safetensors``,
``scheduler/scheduler_config.json``) or a bare UNet directory with ``scheduler_config.json`` beside
its ``config.json``. Its conventions are converted here, once, into this package's
(:mod:`diffusionlens.processes`, :mod:`diffusionlens.parameterization`):

==========================================  ==============================================================
diffusers                                   diffusionlens
==========================================  ==============================================================
DDPM-family scheduler (betas, alphas_cumprod,  :class:`~diffusionlens.processes.DDPMTable` (the same table:
``num_train_timesteps`` T)                      beta_schedule linear / scaled_linear / squaredcos_cap_v2)
0-based integer timestep i                  t = (i + 1) / T; the network sees ``timestep = T t - 1``
``prediction_type`` epsilon / sample /      ``eps`` / ``x0`` / ``v`` (v = sqrt(abar) n - sqrt(1 - abar) x0
v_prediction                                is the package's V in VP coordinates)
``EDMEulerScheduler`` (prediction epsilon)  EDM process and preconditioning (``edm``), c_noise = ln(sigma)/4
==========================================  ==============================================================

Sampling options of a scheduler (its timestep spacing, ``clip_sample``, thresholding, Karras sigmas)
are not part of the model and are not imported: every sampler and grid of this package applies.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..nets.diffusers_unet import require_diffusers, timestep_map
from ..parameterization import Param
from ..processes import EDM, DDPMSchedule, DDPMTable

__all__ = ["Imported", "read_diffusers", "load_diffusers", "import_diffusers", "export_diffusers",
           "DISCRETE_SCHEDULERS", "EDM_SCHEDULERS", "PREDICTION_TYPES"]

WEIGHTS = "diffusion_pytorch_model.safetensors"
DISCRETE_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler",
                       "DPMSolverSinglestepScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
                       "HeunDiscreteScheduler", "LMSDiscreteScheduler", "DEISMultistepScheduler",
                       "UniPCMultistepScheduler", "KDPM2DiscreteScheduler")
"""Schedulers whose model state is a discrete alpha-bar table (they differ only in how they sample)."""
EDM_SCHEDULERS = ("EDMEulerScheduler", "EDMDPMSolverMultistepScheduler")
PREDICTION_TYPES = {"epsilon": Param.EPS, "sample": Param.X0, "v_prediction": Param.V}
BETA_SCHEDULES = {"linear": DDPMSchedule.LINEAR, "scaled_linear": DDPMSchedule.SCALED_LINEAR,
                  "squaredcos_cap_v2": DDPMSchedule.COSINE}


@dataclass(frozen=True)
class Imported:
    """A diffusers model read into this package's terms.

    ``process``: a name or dict for :func:`diffusionlens.training.make_process`; ``param`` the
    parameterization name; ``net``: the ``diffusers-unet`` network spec; ``weights``: its state dict
    (keys ``unet.<name>``); ``t_range``: the trained noise levels in the process's time.
    """

    source: Path
    process: str | dict
    param: str
    sigma_data: float
    net: dict
    weights: dict
    t_range: tuple[float, float]


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"missing {path}")
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {' '.join(str(e).split())}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return d


def _locate(path: Path) -> tuple[Path, Path]:
    """(the UNet's directory, the scheduler configuration file) of a diffusers directory."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no diffusers model directory {path}")
    unet = path / "unet" if (path / "unet" / "config.json").is_file() else path
    if not (unet / "config.json").is_file():
        raise FileNotFoundError(f"{path} holds no UNet: missing {path / 'unet' / 'config.json'} "
                                f"(or {path}/config.json)")
    for cand in (path / "scheduler" / "scheduler_config.json", unet / "scheduler_config.json",
                 path / "scheduler_config.json"):
        if cand.is_file():
            return unet, cand
    raise FileNotFoundError(f"{path} holds no scheduler configuration: missing "
                            f"{path / 'scheduler' / 'scheduler_config.json'}")


def _discrete(sched: dict, where: Path) -> tuple[str | dict, tuple[float, float], DDPMTable]:
    if sched.get("trained_betas") is not None:
        raise ValueError(f"{where}: trained_betas (an explicit beta table) are not supported")
    if sched.get("rescale_betas_zero_snr"):
        raise ValueError(f"{where}: rescale_betas_zero_snr=true (infinite final noise level) is not supported")
    name = sched.get("beta_schedule", "linear")
    if name not in BETA_SCHEDULES:
        raise ValueError(f"{where}: unknown beta_schedule {name!r}; supported: {', '.join(BETA_SCHEDULES)}")
    T = sched.get("num_train_timesteps", 1000)
    if not (isinstance(T, int) and T >= 2):
        raise ValueError(f"{where}: num_train_timesteps must be an integer >= 2, got {T!r}")
    schedule = BETA_SCHEDULES[name]
    spec = {"kind": "ddpm", "T": T, "schedule": schedule.value}
    if schedule is not DDPMSchedule.COSINE:
        spec.update(beta_start=float(sched.get("beta_start", 1e-4)), beta_end=float(sched.get("beta_end", 0.02)))
    process = DDPMTable(**{k: v for k, v in spec.items() if k != "kind"})
    default = spec == {"kind": "ddpm", "T": 1000, "schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02}
    return ("ddpm" if default else spec), (1.0 / T, 1.0), process


def _scheduler(path: Path) -> tuple[str | dict, str, float, tuple[float, float], object]:
    """(process, param, sigma_data, t_range, Process) of a scheduler configuration file."""
    sched = _read_json(path)
    cls = sched.get("_class_name")
    pred = sched.get("prediction_type", "epsilon")
    if cls in DISCRETE_SCHEDULERS:
        if pred not in PREDICTION_TYPES:
            raise ValueError(f"{path}: unknown prediction_type {pred!r}; supported: {', '.join(PREDICTION_TYPES)}")
        process, t_range, proc = _discrete(sched, path)
        return process, PREDICTION_TYPES[pred].value, 0.5, t_range, proc
    if cls in EDM_SCHEDULERS:
        if pred != "epsilon":
            raise ValueError(f"{path}: unknown prediction_type {pred!r} for {cls}; supported: epsilon (EDM's F)")
        proc = EDM()
        lo, hi = (float(sched.get(k, d)) for k, d in (("sigma_min", 0.002), ("sigma_max", 80.0)))
        if not (proc.sigma_lo <= lo < hi <= proc.sigma_hi):
            raise ValueError(f"{path}: sigma_min {lo:g}, sigma_max {hi:g} must lie in "
                             f"[{proc.sigma_lo:g}, {proc.sigma_hi:g}]")
        t = proc.t_of_sigma(torch.tensor([lo, hi], dtype=torch.float64)).clamp(0, 1).tolist()
        return "edm", Param.EDM.value, float(sched.get("sigma_data", 0.5)), (t[0], t[1]), proc
    known = ", ".join(DISCRETE_SCHEDULERS + EDM_SCHEDULERS)
    raise ValueError(f"{path}: unknown scheduler {cls!r}; supported: {known}")


def _weights(unet_dir: Path) -> dict:
    from safetensors.torch import load_file

    path = unet_dir / WEIGHTS
    if not path.is_file():
        pickled = unet_dir / "diffusion_pytorch_model.bin"
        if pickled.is_file():
            raise ValueError(f"{pickled} is a pickle, which this package never loads; save the model with "
                             f"safe_serialization=True ({WEIGHTS})")
        raise FileNotFoundError(f"missing weights file {path}")
    try:
        return load_file(path)
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"weights file {path} cannot be read: {' '.join(str(e).split())}") from None


def read_diffusers(path) -> Imported:
    """Read a diffusers model directory (see the module docstring); every check before any tensor is built.

    Raises ValueError / FileNotFoundError in one line naming the unknown scheduler or prediction type,
    the missing file, or the first tensor whose shape differs from the UNet configuration.
    """
    from ..training.state import check_shapes

    require_diffusers()
    unet_dir, sched_path = _locate(Path(path))
    process, param, sigma_data, t_range, proc = _scheduler(sched_path)
    config = _read_json(unet_dir / "config.json")
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ValueError(f"{unet_dir / 'config.json'}: unknown model class {config['_class_name']!r}; "
                         f"supported: UNet2DModel")
    unet = {k: v for k, v in config.items() if not k.startswith("_")}
    scale, shift = timestep_map(proc, param)
    net = {"kind": "diffusers-unet", "unet": unet, "timestep_scale": scale, "timestep_shift": shift}
    weights = {f"unet.{k}": v for k, v in _weights(unet_dir).items()}
    check_shapes(net, weights, "", unet_dir / WEIGHTS)
    return Imported(Path(path), process, param, sigma_data, net, weights, t_range)


def load_diffusers(path, *, device="cpu"):
    """The canonical denoiser D(x_hat, sigma) of a diffusers model directory (eval mode, no gradients)."""
    from ..model import Denoiser
    from ..nets import build_net
    from ..training.config import make_process

    imp = read_diffusers(path)
    net = build_net(imp.net)
    net.load_state_dict(imp.weights, strict=True)
    net = net.to(device).eval().requires_grad_(False)
    return Denoiser(net, make_process(imp.process), imp.param, sigma_data=imp.sigma_data)


def _image_dataset(shape: tuple[int, ...]) -> str:
    from ..data import IMAGE_DATASETS, load_dataset

    for name in IMAGE_DATASETS:
        if tuple(load_dataset(name, "test", n=1).data_shape) == shape:
            return name
    raise ValueError(f"no data set has the model's image shape {shape}; pass one of the same shape with --dataset")


def import_diffusers(path, run_dir, *, dataset: str | None = None, overwrite: bool = False) -> Path:
    """Write a run directory holding a diffusers model, so that every command and view runs on it.

    The run's config records the converted process and parameterization and the ``diffusers-unet``
    network; its one checkpoint (step 0) holds the weights as both the model and the EMA. ``dataset``
    (default: the image data set of the model's shape) is what evaluation compares samples with.
    """
    from ..data import load_dataset
    from ..run import save_json
    from ..training import TrainConfig
    from ..training.checkpoint import check_replaceable, check_writable, remove_run, save_checkpoint

    imp = read_diffusers(path)
    u = imp.net["unet"]
    shape = (int(u.get("in_channels", 3)), int(u.get("sample_size")), int(u.get("sample_size")))
    dataset = dataset or _image_dataset(shape)
    data_shape = tuple(load_dataset(dataset, "test", n=1).data_shape)
    if data_shape != shape:
        raise ValueError(f"data set {dataset!r} has shape {data_shape}, the diffusers UNet {shape}")
    discrete = imp.param != Param.EDM.value
    cfg = TrainConfig(dataset=dataset, process=imp.process, param=imp.param, sigma_data=imp.sigma_data,
                      density="uniform" if discrete else "lognormal", weighting="target" if discrete else "edm",
                      t_min=imp.t_range[0], t_max=imp.t_range[1], net=imp.net, ema="none", steps=1)
    run_dir = Path(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{run_dir} is not empty; choose another name or pass --overwrite")
        check_replaceable(run_dir)
        remove_run(run_dir)
    check_writable(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tensors = {f"{p}/{k}": v.clone() for p in ("model", "ema") for k, v in imp.weights.items()}  # no shared storage
    meta = {"config": cfg.to_dict(), "num_params": sum(v.numel() for v in imp.weights.values()),
            "imported_from": str(imp.source)}
    save_checkpoint(run_dir / "checkpoints", 0, tensors, meta)
    save_json(run_dir / "config.json", cfg.to_dict())
    return run_dir


def _scheduler_for(cfg):
    """The diffusers scheduler that describes a run's process and parameterization (ValueError if none does)."""
    diffusers = require_diffusers()
    proc, param = cfg.noise_process, cfg.parameterization
    scale, shift = (cfg.net.get("timestep_scale"), cfg.net.get("timestep_shift"))
    if (scale, shift) != timestep_map(proc, param):
        raise ValueError(f"the run's network sees timestep {scale:g} cond + {shift:g}, not diffusers' convention "
                         f"{timestep_map(proc, param)} for process {cfg.process!r} and param {param.value!r}")
    if isinstance(proc, DDPMTable) and param in (Param.EPS, Param.X0, Param.V):
        pred = {v: k for k, v in PREDICTION_TYPES.items()}[param]
        beta = {v: k for k, v in BETA_SCHEDULES.items()}[proc.schedule]
        extra = {} if proc.schedule is DDPMSchedule.COSINE else {
            "beta_start": proc.beta_start or (1e-4 if proc.schedule is DDPMSchedule.LINEAR else 0.00085),
            "beta_end": proc.beta_end or (0.02 if proc.schedule is DDPMSchedule.LINEAR else 0.012)}
        return diffusers.DDPMScheduler(num_train_timesteps=proc.T, beta_schedule=beta, prediction_type=pred,
                                       clip_sample=False, **extra)
    if isinstance(proc, EDM) and param is Param.EDM:
        lo, hi = cfg.sigma_range
        return diffusers.EDMEulerScheduler(sigma_min=lo, sigma_max=hi, sigma_data=cfg.sigma_data,
                                           prediction_type="epsilon")
    raise ValueError(f"no diffusers scheduler describes process {cfg.process!r} with param {param.value!r}; "
                     f"export needs a ddpm process with eps, x0 or v, or edm with edm")


def export_diffusers(run_dir, out, *, ema: bool = True) -> Path:
    """Write a run whose network is a diffusers UNet as a diffusers directory (``unet/``, ``scheduler/``).

    ``out`` must not exist; it is written in a temporary directory beside it and renamed at the end.
    """
    from ..nets import build_net
    from ..training.checkpoint import load_checkpoint
    from ..training.state import check_shapes, load_module, stored_config

    meta, tensors = load_checkpoint(run_dir)
    cfg = stored_config(meta, run_dir)
    if cfg.net.get("kind") != "diffusers-unet":
        raise ValueError(f"run {run_dir}'s network is {cfg.net.get('kind')!r}, not a diffusers UNet "
                         f"(train with --net diffusers-unet)")
    scheduler = _scheduler_for(cfg)
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new directory")
    prefix = "ema/" if ema else "model/"
    check_shapes(cfg.net, tensors, prefix, run_dir)
    net = build_net(cfg.net)
    load_module(net, tensors, prefix)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        net.unet.save_pretrained(tmp / "unet", safe_serialization=True)
        scheduler.save_pretrained(tmp / "scheduler")
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
