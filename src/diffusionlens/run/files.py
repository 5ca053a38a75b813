"""Writing into a run directory: atomic files with the user's permissions, checked before computing."""

from __future__ import annotations

import json
from pathlib import Path

from torch import Tensor

from .._util import check_writable

__all__ = ["check_writable", "output_stem", "save_json", "save_tensors"]


def output_stem(out, default: Path) -> Path:
    """The output path without extension: ``out`` (its parent must exist: nothing is created elsewhere) or
    ``default``."""
    if out is None:
        return default
    stem = Path(str(out).removesuffix(".safetensors").removesuffix(".png"))
    if not stem.parent.is_dir():
        raise FileNotFoundError(f"output directory {str(stem.parent)!r} does not exist (create it first)")
    return stem


def save_json(path, obj) -> None:
    """Atomic JSON write (unique temporary name, then rename)."""
    from .._util import atomic_write

    atomic_write(Path(path), (json.dumps(obj, indent=1) + "\n").encode())


def save_tensors(path, tensors: dict[str, Tensor]) -> None:
    """Atomic safetensors write (unique temporary name, so concurrent writers never share one)."""
    from safetensors.torch import save

    from .._util import atomic_write

    atomic_write(Path(path), save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))
