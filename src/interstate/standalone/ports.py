"""Free-port allocation on 127.0.0.1 for side-cars, apps and the control plane.

The kernel picks a free port (bind to 0); we remember what we handed out so two parts of one
mesh never get the same number, even if the kernel offers it twice.
"""

from __future__ import annotations

import socket

from interstate.errors import TemporaryError


class PortAllocator:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._given: set[int] = set()

    def take(self, wanted: int = 0) -> int:
        """`wanted` if non-zero (the caller insists on it), else a fresh free port."""
        if wanted:
            self._given.add(wanted)
            return wanted
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((self.host, 0))
                port = int(sock.getsockname()[1])
            if port not in self._given:
                self._given.add(port)
                return port
        raise TemporaryError(f"no free port found on {self.host}")

    def take_all(self, ports: list[int]) -> None:
        """Mark ports already in use by this mesh (units adopted after a restart)."""
        self._given.update(p for p in ports if p)

    def release(self, *ports: int) -> None:
        self._given.difference_update(ports)
