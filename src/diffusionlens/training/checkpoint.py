"""Checkpoints: safetensors for tensors, JSON for everything else; atomic; never unpickled.

A checkpoint at step k is two files in ``run_dir/checkpoints/``:

* ``step-{k:08d}.safetensors``: ``model/<name>`` (state dict of the network), ``ema/<name>``,
  ``optim/<i>/<key>`` (AdamW's per-parameter moment tensors, i = parameter index);
* ``step-{k:08d}.json``: format tag and version, step, the run's config, optimizer scalars
  (per-parameter step counts and param-group hyper-parameters), RNG states as lists of ints,
  elapsed seconds, and the SHA-256 of the tensor file.

Each file is written to a temporary name in the same directory, flushed, fsynced and
``os.replace``-d; the tensor file first, the JSON last, so a JSON's presence marks a complete
checkpoint (a kill at any moment leaves either the previous complete checkpoint or the new one).
Loading checks the format, the version, the keys, that the tensor file lies beside the JSON, and the
hash, and raises ValueError naming the file on any mismatch or corruption.

One writer per run: :func:`acquire_lock` holds ``run_dir/.lock`` (the holder's pid and host) while
training; a lock of this host whose process is gone is stale and taken over; another host's lock is
never judged by its pid. :func:`clean_stale` removes what a kill
can leave behind (temporary files, a tensor file whose JSON was already pruned).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .._util import atomic_write, umask
from .._util import check_writable as _check_writable

__all__ = ["FORMAT", "save_checkpoint", "load_checkpoint", "latest_checkpoint", "list_checkpoints", "atomic_write",
           "acquire_lock", "release_lock", "clean_stale", "required", "check_replaceable", "remove_run",
           "check_writable", "RUN_FILES"]

FORMAT = "diffusionlens-checkpoint"
VERSION = 1
_NAME = re.compile(r"^step-(\d{8})\.json$")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(ckpt_dir: Path, step: int, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write the tensors and the JSON metadata of step ``step`` atomically; returns the JSON path."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    stem = f"step-{step:08d}"
    tpath, jpath = ckpt_dir / f"{stem}.safetensors", ckpt_dir / f"{stem}.json"
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=".safetensors.tmp", dir=ckpt_dir)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        digest = _sha256(Path(tmp))
        os.replace(tmp, tpath)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, (OSError, SafetensorError)):  # disk full, read-only: one line naming the file
            raise OSError(f"cannot write checkpoint {tpath}: {' '.join(str(e).split())}") from None
        raise
    full = {"format": FORMAT, "version": VERSION, "step": step, "tensors": tpath.name, "sha256": digest, **meta}
    try:
        atomic_write(jpath, json.dumps(full, indent=1).encode())
    except OSError as e:
        tpath.unlink(missing_ok=True)  # a tensor file without its JSON is no checkpoint
        raise OSError(f"cannot write checkpoint {jpath}: {' '.join(str(e).split())}") from None
    return jpath


def list_checkpoints(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """(step, json path) of the complete checkpoints in ``ckpt_dir``, by increasing step."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    out = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _NAME.match(p.name))]
    return sorted(out)


def latest_checkpoint(path: Path) -> Path | None:
    """The newest checkpoint JSON under a run directory (or a checkpoints directory); None if none."""
    path = Path(path)
    ckpts = list_checkpoints(path / "checkpoints") or list_checkpoints(path)
    return ckpts[-1][1] if ckpts else None


def resolve_checkpoint(path) -> Path:
    """A run directory, a checkpoints directory, a checkpoint JSON or its .safetensors -> the JSON path."""
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"no checkpoint found in {path}")
        return found
    if path.suffix == ".safetensors":
        path = path.with_suffix(".json")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


def load_checkpoint(path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read and verify a checkpoint: returns (metadata, tensors). Never unpickles."""
    jpath = resolve_checkpoint(path)
    try:
        meta = json.loads(jpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"checkpoint {jpath} is not valid JSON (corrupt or truncated): {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{jpath} is not a {FORMAT} file")
    if meta.get("version") != VERSION:
        raise ValueError(f"checkpoint {jpath} has format version {meta.get('version')}, this code reads {VERSION}")
    name = required(meta, "tensors", jpath)
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        raise ValueError(f"checkpoint {jpath} names tensor file {name!r} outside its own directory")
    tpath = jpath.parent / name
    if not tpath.is_file():
        raise ValueError(f"checkpoint {jpath} names tensor file {tpath.name}, which is missing")
    if _sha256(tpath) != required(meta, "sha256", jpath):
        raise ValueError(f"checkpoint tensor file {tpath} is corrupt: its SHA-256 does not match {jpath.name}")
    try:
        tensors = load_file(tpath)
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"checkpoint tensor file {tpath} cannot be read: {e}") from None
    return meta, tensors


def required(meta: dict, key: str, where):
    """``meta[key]``, or a one-line ValueError naming the checkpoint file and the missing key."""
    if key not in meta:
        raise ValueError(f"checkpoint {where} lacks the key {key!r} (written by another program, or edited)")
    return meta[key]


def prune(ckpt_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (JSON first, so none is ever seen half-deleted;
    a tensor file orphaned by a kill in between is removed by :func:`clean_stale`)."""
    for _, jpath in list_checkpoints(ckpt_dir)[:-keep]:
        tpath = jpath.with_suffix(".safetensors")
        jpath.unlink(missing_ok=True)
        tpath.unlink(missing_ok=True)


def clean_stale(run_dir: Path) -> list[Path]:
    """Remove the temporary files of interrupted writes and tensor files without their JSON, in the run
    directory and its checkpoints; call only while holding the run's lock. Returns what was removed."""
    run_dir = Path(run_dir)
    gone = []
    for d in (run_dir, run_dir / "checkpoints"):
        if not d.is_dir():
            continue
        for p in d.iterdir():
            orphan = p.suffix == ".safetensors" and p.name.startswith("step-") and not p.with_suffix(".json").exists()
            if (p.name.startswith(".") and p.name.endswith(".tmp")) or orphan:
                p.unlink(missing_ok=True)
                gone.append(p)
    return gone


LOCK = ".lock"
# what a run directory may hold: the training layout and what the run layer derives from it
RUN_FILES = frozenset({"config.json", "metrics.jsonl", "result.json", "checkpoints", LOCK, "evaluation.json",
                       "samples.safetensors", "report.html", "likelihood.json", "latents.safetensors",
                       "encode.json", "plan.json", "plan.safetensors"})


def _owned(p: Path) -> bool:
    return (p.name in RUN_FILES or (p.name.startswith("fig_") and p.suffix == ".png")
            or (p.name.startswith(".") and p.name.endswith(".tmp")))


def check_replaceable(run_dir: Path) -> None:
    """Raise ValueError unless every entry of ``run_dir`` belongs to a run's layout (so that replacing
    the run cannot delete anything else); reads only."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    foreign = sorted(p.name for p in run_dir.iterdir() if not _owned(p))
    if foreign:
        raise ValueError(f"refusing to overwrite {run_dir}: it holds files that are not part of a run "
                         f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); choose another directory")


def remove_run(run_dir: Path) -> None:
    """Delete the run's own files (see :func:`check_replaceable`), keeping the lock; call while holding it.
    Checkpoint JSON first, so that a kill midway never leaves a checkpoint without its tensors."""
    run_dir = Path(run_dir)
    check_replaceable(run_dir)
    ckpts = run_dir / "checkpoints"
    if ckpts.is_dir():
        for _, jpath in list_checkpoints(ckpts):
            jpath.unlink(missing_ok=True)
        shutil.rmtree(ckpts)
    for p in run_dir.iterdir():
        if p.name != LOCK and _owned(p):
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)


def check_writable(run_dir: Path) -> None:
    """Raise OSError naming the directory if training could not write there (``run_dir`` or, when it
    does not exist yet, its nearest existing parent; and its checkpoints/)."""
    _check_writable(run_dir, missing_ok=True, what="the run directory", also=("checkpoints",))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _holder(path: Path) -> tuple[int, str] | None:
    """(pid, host) recorded in a lock file; None for a torn or unreadable one (an older lock without a
    host is taken as this host's)."""
    try:
        fields = path.read_text().split()
        return int(fields[0]), (fields[1] if len(fields) > 1 else socket.gethostname())
    except (OSError, ValueError, IndexError):
        return None


def acquire_lock(run_dir: Path) -> Path:
    """Make this process the run's only writer: create ``run_dir/.lock`` holding our pid, taking over a
    stale lock (its pid is gone); raises ValueError naming the live holder otherwise."""
    path = Path(run_dir) / LOCK
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666 & ~umask())
        except FileExistsError:
            holder = _holder(path)
            if holder is not None:
                pid, host = holder
                if host != socket.gethostname():  # its pid means nothing here: never judged stale
                    raise ValueError(f"{run_dir} is locked by pid {pid} on host {host} (lock file {path}); "
                                     f"stop it there, or remove the lock file if that process is gone") from None
                if _alive(pid):
                    raise ValueError(f"{run_dir} is being written by another process (pid {pid}, lock file "
                                     f"{path}); wait for it or stop it") from None
            path.unlink(missing_ok=True)  # stale: its writer is gone (or the file was torn)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()} {socket.gethostname()}\n")
        return path
    raise ValueError(f"could not take the lock {path}: other processes keep taking it")


def release_lock(path: Path) -> None:
    """Remove a lock taken by :func:`acquire_lock` if it is still ours."""
    path = Path(path)
    if _holder(path) == (os.getpid(), socket.gethostname()):
        path.unlink(missing_ok=True)
