"""Small shared helpers: broadcasting per-sample scalars and validating inputs.

Every public function that takes a noise level accepts a Python float, a 0-d tensor or a
tensor of shape (batch,); :func:`as_sigma` turns any of these into shape (batch,) on the data's
device and dtype, and :func:`expand` broadcasts a (batch,) tensor against data of any rank.
"""

from __future__ import annotations

import enum
import json
import os
import tempfile
from pathlib import Path

import torch
from torch import Tensor


def expand(v: Tensor, x: Tensor) -> Tensor:
    """Reshape per-sample values ``v`` of shape (batch,) to broadcast against ``x`` (batch, ...)."""
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def as_tensor(v, like: Tensor | None = None, dtype: torch.dtype | None = None) -> Tensor:
    """Convert a float or tensor to a tensor on ``like``'s device (float64 for Python numbers)."""
    if isinstance(v, Tensor):
        out = v
    else:
        out = torch.as_tensor(v, dtype=torch.float64)
    if like is not None:
        out = out.to(device=like.device, dtype=dtype or like.dtype)
    elif dtype is not None:
        out = out.to(dtype)
    return out


def as_sigma(sigma, x: Tensor, *, allow_zero: bool = False, name: str = "sigma") -> Tensor:
    """Return ``sigma`` as a (batch,) tensor matching ``x`` (batch, ...), after checking it.

    Raises ValueError if sigma is not finite, not positive (or negative when ``allow_zero``),
    or has a shape other than (), (1,) or (batch,).
    """
    if x.ndim < 1:
        raise ValueError(f"data must have a batch dimension, got a tensor of shape {tuple(x.shape)}")
    s = as_tensor(sigma, like=x)
    if s.ndim == 0 or (s.ndim == 1 and s.shape[0] == 1):
        s = s.reshape(1).expand(x.shape[0])
    elif s.ndim != 1 or s.shape[0] != x.shape[0]:
        raise ValueError(
            f"{name} must be a scalar or have shape (batch,) = ({x.shape[0]},), got shape {tuple(s.shape)}"
        )
    check_sigma(s, allow_zero=allow_zero, name=name)
    return s


def check_sigma(s: Tensor, *, allow_zero: bool = False, name: str = "sigma") -> None:
    """Raise ValueError naming the offending value if ``s`` holds a non-finite or non-positive entry."""
    bad = ~torch.isfinite(s) | ((s < 0) if allow_zero else (s <= 0))
    if bool(bad.any()):
        value = s[bad].flatten()[0].item()
        need = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {need}, got {value}")


def check_unit_interval(t: Tensor, name: str = "t") -> None:
    """Raise ValueError naming the offending value if ``t`` leaves [0, 1] or is NaN."""
    bad = ~((t >= 0) & (t <= 1))
    if bool(bad.any()):
        raise ValueError(f"{name} must lie in [0, 1], got {t[bad].flatten()[0].item()}")


def device_of(module) -> torch.device:
    """Where a denoiser's (or any module's) parameters live; CPU for parameter-free callables such as
    an oracle."""
    params = getattr(module, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return torch.device("cpu")


class Choice(str, enum.Enum):
    """A string enum parsed once at the edge: ``X.parse(value)`` accepts a member or its value and
    otherwise raises one ValueError naming the value and the choices. ``what`` names the kind in that
    message: ``class Grid(Choice, what="grid")``."""

    def __init_subclass__(cls, what: str = "value", **kwargs):
        super().__init_subclass__(**kwargs)
        cls._what = what

    @classmethod
    def parse(cls, value):
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(repr(m.value) for m in cls)
            raise ValueError(f"unknown {cls._what} {value!r}; choose one of: {choices}") from None


def read_jsonl(path) -> list[dict]:
    """The records of a JSON-lines file; a line that does not parse (a torn last line after a kill) is skipped."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def read_json(path, what: str, *, hint: str = "") -> dict:
    """The JSON object stored in ``path``. A missing file is a FileNotFoundError, an unparsable one or one
    holding something else a ValueError: one line naming ``what`` and the file, then ``hint`` (what to do)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} not found{hint}")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} {str(path)!r} is not valid JSON ({e}){hint}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{what} {str(path)!r} must hold a JSON object, got {type(obj).__name__}{hint}")
    return obj


def check_writable(directory, *, missing_ok: bool = False, what: str = "to", also=()) -> None:
    """Raise an OSError (one line, naming the directory) unless files can be created in ``directory``;
    called before any long computation whose result is written there.

    ``missing_ok``: a directory that does not exist yet is checked through its nearest existing parent
    (where it will be created); otherwise it is a FileNotFoundError. ``also``: subdirectories that must be
    writable too where they exist. Asks ``os.access``, then creates and removes a probe file, which also
    catches what permission bits do not tell (a read-only mount, a process whose access a policy narrows).
    """
    directory = Path(directory)
    probe = directory
    if missing_ok:
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
    elif not directory.is_dir():
        raise FileNotFoundError(f"directory {str(directory)!r} does not exist")
    if not probe.is_dir():
        raise OSError(f"cannot write {what} {directory}: {probe} is not a directory")
    for d in [probe] + [directory / a for a in also if (directory / a).is_dir()]:
        if not os.access(d, os.W_OK | os.X_OK):
            raise PermissionError(f"cannot write {what} {directory}: {d} is not writable")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".write-test.", dir=probe)
    except OSError as e:
        raise PermissionError(f"cannot write {what} {directory}: {e.strerror or e}") from None
    os.close(fd)
    os.unlink(tmp)


def umask() -> int:
    """The process umask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and os.replace.

    The file gets the permissions of any file the user creates (0o666 less the umask), not the
    owner-only mode of the temporary file: runs and reports are meant to be shared."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
