"""A small client of the admin API, for the CLI's commands against a running mesh: where the
API is (`--admin`), its credential (`--token-file`, or INTERSTATE_ADMIN_TOKEN), and the calls."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import httpx

from interstate.core import access
from interstate.errors import ControlPlaneAway, InterstateError
from interstate.settings import DEFAULT_ADMIN_PORT

ADMIN_DEFAULT = f"http://127.0.0.1:{DEFAULT_ADMIN_PORT}"
TOKEN_FILE_DEFAULT = f".interstate/run/{access.TOKEN_FILE}"
TOKEN_ENV = "INTERSTATE_ADMIN_TOKEN"


def admin_options(command: Callable[..., None]) -> Callable[..., None]:
    """`--admin` (the running mesh's admin API) and `--token-file` (its credential) of a command."""
    command = click.option(
        "--token-file",
        default=TOKEN_FILE_DEFAULT,
        envvar="INTERSTATE_ADMIN_TOKEN_FILE",
        show_default=True,
        help=f"The admin token `interstate up` wrote in its run folder (or set {TOKEN_ENV}).",
    )(command)
    return click.option(
        "--admin", default=ADMIN_DEFAULT, envvar="INTERSTATE_ADMIN", show_default=True, help="The admin API's URL."
    )(command)


def admin_token(token_file: str) -> str:
    """The admin token: INTERSTATE_ADMIN_TOKEN when set, else the one in `token_file`."""
    given = os.environ.get(TOKEN_ENV, "").strip()
    if given:
        return given
    try:
        return access.read_token(Path(token_file))
    except (OSError, ValueError) as exc:
        raise InterstateError(
            f"no admin token at {token_file} ({getattr(exc, 'strerror', None) or exc}): the admin API needs the "
            f"token `interstate up` writes in its run folder; pass --token-file RUN_DIR/{access.TOKEN_FILE} or set "
            f"{TOKEN_ENV}"
        ) from None


class AdminError(InterstateError):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body
        super().__init__(str(body.get("error", body)))


class AdminClient:
    def __init__(self, url: str, token: str, timeout: float = 120.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.http = httpx.Client(
            base_url=self.url, timeout=timeout, trust_env=False, headers={"authorization": f"Bearer {token}"}
        )

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
