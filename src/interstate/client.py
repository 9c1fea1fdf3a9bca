"""A small client of the admin API, for the CLI's commands against a running mesh."""

from __future__ import annotations

from typing import Any

import httpx

from interstate.errors import ControlPlaneAway, InterstateError


class AdminError(InterstateError):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body
        super().__init__(str(body.get("error", body)))


class AdminClient:
    def __init__(self, url: str, timeout: float = 120.0) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=timeout, trust_env=False)

    def _call(self, method: str, path: str, json: Any = None) -> dict[str, Any]:
        try:
            response = self.http.request(method, path, json=json)
        except httpx.HTTPError as exc:
            raise ControlPlaneAway(
                f"cannot reach the admin API at {self.url} ({exc}): `interstate up` is not running, or its "
                "control plane is restarting (the data plane serves on; try again in a moment)"
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = {"error": f"HTTP {response.status_code}: {response.text[:500]}"}
        if response.status_code >= 400:
            raise AdminError(response.status_code, body)
        return dict(body)

    def status(self) -> dict[str, Any]:
        return self._call("GET", "/status")

    def apply(self, sources: dict[str, str]) -> dict[str, Any]:
        return self._call("POST", "/apply", {"sources": sources})

    def fault(self, service: str, fault: dict[str, Any] | None) -> dict[str, Any]:
        return self._call("POST", f"/services/{service}/fault", {"fault": fault})

    def split(self, service: str, weights: dict[str, int]) -> dict[str, Any]:
        return self._call("POST", f"/services/{service}/split", {"weights": weights})

    def certs(self) -> dict[str, Any]:
        return self._call("GET", "/certs")

    def scale(self, service: str, replicas: int) -> dict[str, Any]:
        return self._call("POST", f"/services/{service}/scale", {"replicas": replicas})
