"""Every TCP port the standalone mesh binds on its host, and who owns it: one owner per port.

The mesh's own ports (ingress, admin API, xDS), each unit's (its app's, its side-car's inbound
and outbound) and each workload's `spec.localPorts` (shared by that workload's replicas) are
taken here; fresh ones come from the kernel (bind to 0) and are never handed out twice, nor a
port a workload declared. `conflicts` says which declared local ports someone else owns, naming
both, so `preflight` refuses them before anything binds (Envoy binds without SO_REUSEPORT too:
`compile.listeners.listener`). Called by `standalone.mesh` and `standalone.up`.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping

import psutil

from interstate.errors import TemporaryError
from interstate.model.index import MeshConfig
from interstate.model.workload import Workload
from interstate.settings import Settings


def mesh_ports(settings: Settings) -> dict[int, str]:
    """The ports the mesh itself keeps for its life (0: not chosen yet), with their owners."""
    named = (
        (settings.ingress_port, "the ingress"),
        (settings.admin_port, "the admin API"),
        (settings.xds_port, "the xDS server"),
    )
    return {port: owner for port, owner in named if port}


def local_ports(config: MeshConfig) -> dict[int, str]:
    """The ports workloads declare for tcp services they call, with their owner's name."""
    return {
        port: f"{w.name}'s spec.localPorts.{service}"
        for w in config.of_kind(Workload)
        for service, port in w.spec.local_ports.items()
    }


class PortAllocator:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._owner: dict[int, str] = {}  # taken: the mesh's and its units'
        self._declared: dict[int, str] = {}  # the running config's local ports

    def take(self, wanted: int = 0, owner: str = "the mesh") -> int:
        """`wanted` if non-zero (the caller insists on it), else a fresh free port; `owner` is
        who binds it, as an error names it ("stats-0's app", "the ingress")."""
        if wanted:
            self._owner[wanted] = owner
            return wanted
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((self.host, 0))
                port = int(sock.getsockname()[1])
            if port not in self._owner and port not in self._declared:
                self._owner[port] = owner
                return port
        raise TemporaryError(f"no free port found on {self.host}")

    def take_all(self, owners: Mapping[int, str]) -> None:
        """Mark ports already in use by this mesh (units adopted after a restart)."""
        self._owner.update((p, o) for p, o in owners.items() if p)

    def release(self, *ports: int) -> None:
        for port in ports:
            self._owner.pop(port, None)

    def declare(self, config: MeshConfig) -> None:
        """The local ports of the config now in force: never handed out to anything else."""
        self._declared = local_ports(config)

    def owners_but_declared(self) -> dict[int, str]:
        """Who owns each port taken, but for local ports (a new config declares its own)."""
        return dict(self._owner)

    def declared(self) -> dict[int, str]:
        """The local ports of the config in force, with their owners."""
        return dict(self._declared)


def host_addresses() -> tuple[str, ...]:
    """This host's interface addresses that loopback and link-local do not cover (sorted): what
    the egress guard refuses besides them (`compile.egress`), so that an app cannot reach the
    host's own services through a side-car by the host's network address either."""
    found = set()
    for addresses in psutil.net_if_addrs().values():
        for entry in addresses:
            if entry.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            try:
                address = ipaddress.ip_address(entry.address.split("%", 1)[0])
            except ValueError:
                continue
            if not (address.is_loopback or address.is_link_local or address.is_unspecified):
                found.add(str(address))
    return tuple(sorted(found))
