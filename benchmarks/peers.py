"""Loading the peer libraries for benchmarks and conformance tests (never a runtime dependency).

k-diffusion's package ``__init__`` (through ``k_diffusion.utils``) imports torchvision, which
fails beside the pinned CPU torch; its samplers only need ``append_dims`` and friends from
``utils``. :func:`k_sampling` loads ``k_diffusion/sampling.py`` on its own, against a minimal
stand-in for ``k_diffusion.utils`` exposing ``append_dims``, the one helper sampling.py uses.
"""

from __future__ import annotations

import importlib.util
import sys
import types


def k_sampling():
    """Return the ``k_diffusion.sampling`` module, or raise ImportError if k-diffusion is absent."""
    name = "k_diffusion.sampling"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("k-diffusion is not installed (bash scripts/setup.sh --peers)")
    root = list(spec.submodule_search_locations)[0]
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = [root]
    utils = types.ModuleType("k_diffusion.utils")

    def append_dims(x, target_dims):
        dims_to_append = target_dims - x.ndim
        if dims_to_append < 0:
            raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
        return x[(...,) + (None,) * dims_to_append]

    utils.append_dims = append_dims
    pkg.utils = utils
    sys.modules["k_diffusion"] = pkg
    sys.modules["k_diffusion.utils"] = utils
    sub = importlib.util.spec_from_file_location(name, f"{root}/sampling.py")
    mod = importlib.util.module_from_spec(sub)
    sys.modules[name] = mod
    sub.loader.exec_module(mod)
    pkg.sampling = mod
    return mod
