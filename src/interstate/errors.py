"""The exception tree of interstate, in one place.

    InterstateError                 root; everything we raise on purpose derives from it
    ├── PermanentError              retrying the same thing will fail the same way
    │   ├── ConfigError             user input is invalid; carries every Issue found
    │   ├── SnapshotError           compiled resources are inconsistent (a bug, never pushed)
    │   ├── EnvoyNotFound           no Envoy binary could be located
    │   ├── UnknownService          a change names a service the mesh does not have
    │   └── Rejected                Envoy NACKed a new configuration; the previous one stays
    └── TemporaryError              retrying may help (a port in use, a process slow to start)
        ├── StartupError            a child process did not become ready in time
        └── ControlPlaneAway        the control plane is restarting; the data plane serves on

Errors are turned into exit codes, HTTP statuses or gRPC codes only at the edges (cli, api).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Issue:
    """One problem in user input: where it is and what would be valid."""

    file: str
    document: int  # 1-based position of the YAML document in its file; 0 = whole file
    resource: str  # "Kind name", or "" when the document could not be decoded that far
    field: str  # dotted path such as "spec.outlierDetection.baseEjectionTime"; "" = document
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.document:
            where += f": document {self.document}"
            if self.resource:
                where += f" ({self.resource})"
        if self.field:
            where += f": {self.field}"
        return f"{where}: {self.message}"


class InterstateError(Exception):
    """Root of every error interstate raises on purpose."""


class PermanentError(InterstateError):
    """Retrying the same operation will fail the same way."""


class TemporaryError(InterstateError):
    """Retrying later may succeed."""

    def __init__(self, message: str, delay: float = 1.0) -> None:
        super().__init__(message)
        self.delay = delay


class ConfigError(PermanentError):
    """The mesh configuration is invalid. `issues` holds every problem found, not just the first."""

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = sorted(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


class SnapshotError(PermanentError):
    """A snapshot failed its consistency check; it is never sent to Envoy."""


class EnvoyNotFound(PermanentError):
    """The Envoy binary could not be found."""


class UnknownService(PermanentError):
    """A change names a service the running mesh does not have."""


class Rejected(PermanentError):
    """Envoy refused the configuration compiled for it (a NACK); the previous one stays, where
    there was one (`fresh`: the nodes that had accepted none yet, as at start-up)."""

    def __init__(self, nacks: dict[str, list[str]], fresh: frozenset[str] = frozenset()) -> None:
        self.nacks = nacks
        detail = "; ".join(f"{node}: {' | '.join(msgs)}" for node, msgs in sorted(nacks.items()))
        if not fresh & nacks.keys():
            after = "the previous one is in force"
        elif fresh >= nacks.keys():
            after = "there was no earlier one to keep, so nothing is served until it is fixed"
        else:
            after = f"the previous one is in force, except on {', '.join(sorted(fresh & nacks.keys()))}, which had none"
        super().__init__(f"Envoy rejected the new configuration ({detail}); {after}")


class StartupError(TemporaryError):
    """A child process did not become ready in time."""


class ControlPlaneAway(TemporaryError):
    """The control plane is not running right now (it is being restarted); Envoys keep serving
    their last configuration, and changes must wait until it is back."""
