"""Shared fixtures. End-to-end fixtures start real processes and always stop them."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from mesh_runner import EXAMPLE, MeshRun, running_mesh


@pytest.fixture(scope="module")
def example_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshRun]:
    """The election-night example, shared by the read-only tests of a module."""
    with running_mesh(EXAMPLE, tmp_path_factory.mktemp("run")) as run:
        yield run


@pytest.fixture
def mesh_copy(tmp_path: Path) -> Path:
    """A private copy of the example that a test may edit and apply."""
    target = tmp_path / "mesh"
    shutil.copytree(EXAMPLE, target)
    return target
