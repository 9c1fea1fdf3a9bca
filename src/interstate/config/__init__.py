"""Reading mesh files into the model: decode each YAML document, then check the mesh as a whole.

`load(path)` returns a valid `MeshConfig` or raises `ConfigError` carrying every issue at once.
It never starts anything and never touches a running mesh.
"""

from __future__ import annotations

from interstate.config.loader import decode_sources, load, read_sources

__all__ = ["decode_sources", "load", "read_sources"]
