"""Models of other libraries in and out of this package's canonical form (diffusers: optional extra)."""

from .diffusers import export_diffusers, import_diffusers, load_diffusers, read_diffusers

__all__ = ["read_diffusers", "load_diffusers", "import_diffusers", "export_diffusers"]
