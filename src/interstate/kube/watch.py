"""A small list+watch client for the kube-apiserver's REST API, one in-memory store per resource type.

Used by `kube/controller.py`; calls the API server with httpx. The protocol is Kubernetes' own
("Efficient detection of changes" in the API concepts docs):

1. `GET <collection>` (paged with `limit`/`continue`) gives every object and the list's
   `resourceVersion`; the store is replaced by it.
2. `GET <collection>?watch=1&resourceVersion=RV&allowWatchBookmarks=true` streams one JSON
   object per line: `ADDED`/`MODIFIED` (store it), `DELETED` (drop it), `BOOKMARK` (only a newer
   `resourceVersion`), `ERROR` (a `Status`). Each event moves RV on; when the server ends the
   stream (its `timeoutSeconds`), the watch resumes from RV.
3. `410 Gone` (as the HTTP status of the watch, or an `ERROR` event with code 410) means RV is
   too old: list again. Any other failure (connection refused, 5xx, 401/403 while RBAC is being
   fixed) is logged and retried from step 1 with exponential back-off.
4. `404` on the list: the API server does not serve the kind (its CRD is not installed). The
   store is empty, which is the truth, and counts as listed (`synced`, `absent`); the list is
   tried again with back-off, so the kind is watched once its CRD appears. A 401 or 403 is not
   listed: `problem` says which collection cannot be read and why (the verb and the account
   RBAC refused), until a retry succeeds.

`on_change(resource)` is called (synchronously, on the event loop) after every change of a
store, including a re-list that found something different. Authentication is a bearer token,
read from its file before every request (the kubelet rotates projected tokens), and the server
is verified against a CA file: in a pod both come from the service-account mount
(`ApiSettings.in_cluster`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import ssl
from collections.abc import AsyncIterator, Callable, Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from interstate.errors import TemporaryError

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
Key = tuple[str, str]  # (namespace or "", name)


@dataclass(frozen=True)
class ApiSettings:
    """Where the API server is and how to authenticate to it."""

    server: str  # https://10.96.0.1:443
    token: str | None = None
    token_file: Path | None = None  # read before every request; wins over `token`
    ca_file: Path | None = None  # None: the system's CAs
    client_cert: Path | None = None  # a client certificate instead of a token (a kubeconfig's user)
    client_key: Path | None = None
    watch_timeout_s: int = 300  # the server ends each watch after this; we resume it
    page_size: int = 500
    backoff_s: float = 0.5  # first retry delay after a failure, doubled up to `max_backoff_s`
    max_backoff_s: float = 30.0

    @classmethod
    def in_cluster(cls, environ: Mapping[str, str], root: Path = SERVICE_ACCOUNT_DIR) -> ApiSettings:
        """From a pod: KUBERNETES_SERVICE_HOST/PORT and the service account's token and CA."""
        host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise TemporaryError("KUBERNETES_SERVICE_HOST is not set: not running in a pod; give the API server")
        host = f"[{host}]" if ":" in host else host
        return cls(f"https://{host}:{port}", token_file=root / "token", ca_file=root / "ca.crt")

    @classmethod
    def from_kubeconfig(cls, path: Path, folder: Path, context: str | None = None) -> ApiSettings:
        """From a kubeconfig file (development, or a controller outside the cluster): its current
        (or named) context's server, CA and user (token, token file, or client certificate).
        Inline `*-data` fields are written to 0600 files in `folder`. ValueError naming the field
        that is missing or wrong."""
        try:
            config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"{path}: cannot read the kubeconfig: {exc}") from None
        name = context or config.get("current-context")

        def named(section: str, wanted: str | None) -> dict[str, Any]:
            found = next((e for e in config.get(section) or [] if e.get("name") == wanted), None)
            if found is None:
                raise ValueError(f"{path}: {section}: no entry named {wanted!r}")
            return dict(found.get(section.rstrip("s")) or {})

        ctx = named("contexts", name)
        server_entry, user = named("clusters", ctx.get("cluster")), named("users", ctx.get("user"))
        if not server_entry.get("server"):
            raise ValueError(f"{path}: clusters[{ctx.get('cluster')}].cluster.server is missing")
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)

        def file_of(entry: dict[str, Any], field: str, stem: str) -> Path | None:
            if entry.get(f"{field}-data"):
                target = folder / stem
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as out:
                    out.write(base64.b64decode(entry[f"{field}-data"]))
                return target
            value = entry.get(field)
            return (path.parent / value) if value else None

        return cls(
            str(server_entry["server"]).rstrip("/"),
            token=user.get("token"),
            token_file=(path.parent / user["tokenFile"]) if user.get("tokenFile") else None,
            ca_file=file_of(server_entry, "certificate-authority", "ca.crt"),
            client_cert=file_of(user, "client-certificate", "client.crt"),
            client_key=file_of(user, "client-key", "client.key"),
        )

    def client(self) -> httpx.AsyncClient:
        """An httpx client for the API server (the caller closes it)."""
        verify = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file is not None else None)
        if self.client_cert is not None:
            verify.load_cert_chain(str(self.client_cert), str(self.client_key) if self.client_key else None)
        return httpx.AsyncClient(base_url=self.server, auth=_Bearer(self), verify=verify, timeout=10.0)


class _Bearer(httpx.Auth):
    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self.settings.token
        if self.settings.token_file is not None:
            try:
                token = self.settings.token_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise TemporaryError(f"cannot read the API token {self.settings.token_file}: {exc.strerror}") from None
        if token:
            request.headers["authorization"] = f"Bearer {token}"
        yield request


@dataclass(frozen=True)
class ResourceType:
    """One collection: `v1` `Pod` `pods`, `discovery.k8s.io/v1` `EndpointSlice` `endpointslices`."""

    api_version: str
    kind: str
    plural: str
    namespace: str | None = None  # None: all namespaces (or a cluster-scoped kind)

    @property
    def path(self) -> str:
        root = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        scope = f"/namespaces/{self.namespace}" if self.namespace else ""
        return f"{root}{scope}/{self.plural}"


class Gone(Exception):
    """The watch's resourceVersion is too old (HTTP 410): list again."""


@dataclass
class Watcher:
    """Keeps `store` equal to the API server's objects of one resource type."""

    client: httpx.AsyncClient
    resource: ResourceType
    on_change: Callable[[ResourceType], None]
    settings: ApiSettings
    store: dict[Key, dict[str, Any]] = field(default_factory=dict)
    resource_version: str = ""
    synced: asyncio.Event = field(default_factory=asyncio.Event)  # set after the first list
    lists: int = 0  # how many times the collection was listed (a 410 makes one more)
    problem: str | None = None  # why the collection cannot be listed or watched now (None: it can)
    absent: bool = False  # the API server does not serve the kind (404): no CRD installed

    def objects(self) -> list[dict[str, Any]]:
        return [self.store[key] for key in sorted(self.store)]

    async def run(self) -> None:
        """List, then watch, forever (cancel the task to stop)."""
        delay = self.settings.backoff_s
        while True:
            try:
                await self._list()
                if self.absent:
                    await asyncio.sleep(delay)  # not served: look again later, never watch
                    delay = min(delay * 2, self.settings.max_backoff_s)
                    continue
                delay = self.settings.backoff_s
                while True:
                    await self._watch()
            except Gone:
                log.info("%s: resourceVersion %s expired (410 Gone); listing again", self._name, self.resource_version)
            except (httpx.HTTPError, TemporaryError, ValueError) as exc:
                problem = _describe(exc)
                if problem != self.problem:
                    log.error("cannot read %s: %s; retrying in %.1fs", self._name, problem, delay)
                self.problem = problem
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.max_backoff_s)

    @property
    def _name(self) -> str:
        return f"{self.resource.plural}.{self.resource.api_version}"

    async def _list(self) -> None:
        items: dict[Key, dict[str, Any]] = {}
        params: dict[str, str] = {"limit": str(self.settings.page_size)}
        while True:
            response = await self.client.get(self.resource.path, params=params)
            if response.status_code == 410:  # a `continue` token expired: start over
                params.pop("continue", None)
                items.clear()
                continue
            if response.status_code == 404:
                self._not_served()
                return
            _raise_for_status(response)
            body = response.json()
            for item in body.get("items") or []:
                obj = self._typed(item)
                items[_key(obj)] = obj
            metadata = body.get("metadata") or {}
            if not metadata.get("continue"):
                break
            params["continue"] = str(metadata["continue"])
        self.lists += 1
        self.resource_version = str(metadata.get("resourceVersion", ""))
        if self.problem is not None or self.absent:
            log.info("%s: listed (%d objects)", self._name, len(items))
        self.problem, self.absent = None, False
        self._replace(items)

    def _not_served(self) -> None:
        if not self.absent:
            log.warning(
                "%s is not served by the API server (404): no objects of kind %s until its "
                "CustomResourceDefinition is installed (`interstate manifests crds`)",
                self._name,
                self.resource.kind,
            )
        self.problem = (
            f"not served by the API server (404): is the CustomResourceDefinition for {self.resource.kind} installed?"
        )
        self.absent = True
        self._replace({})

    def _replace(self, items: dict[Key, dict[str, Any]]) -> None:
        """The store is `items` now; the first time, or when they differ, say so (`on_change`)."""
        changed = items != self.store or not self.synced.is_set()
        self.store = items
        self.synced.set()
        if changed:
            self.on_change(self.resource)

    async def _watch(self) -> None:
        params = {
            "watch": "1",
            "resourceVersion": self.resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(self.settings.watch_timeout_s),
        }
        timeout = httpx.Timeout(10.0, read=self.settings.watch_timeout_s + 30.0)
        async with self.client.stream("GET", self.resource.path, params=params, timeout=timeout) as response:
            if response.status_code == 410:
                raise Gone()
            if response.status_code >= 400:
                await response.aread()
                _raise_for_status(response)
            async for event in _lines(response):
                self._apply(event)

    def _apply(self, event: Mapping[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object")
        if not isinstance(obj, dict):
            raise ValueError(f"watch event without an object: {str(event)[:200]}")
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone()
            raise TemporaryError(f"watch error {obj.get('code')} {obj.get('reason')}: {obj.get('message')}")
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if kind in ("ADDED", "MODIFIED"):
            obj = self._typed(obj)
            self.store[_key(obj)] = obj
        elif kind == "DELETED":
            self.store.pop(_key(obj), None)
        elif kind != "BOOKMARK":
            raise ValueError(f"unknown watch event type {kind!r}")
        if version:
            self.resource_version = str(version)
        if kind != "BOOKMARK":
            self.on_change(self.resource)

    def _typed(self, obj: dict[str, Any]) -> dict[str, Any]:
        """List items of built-in kinds come without apiVersion/kind; give them theirs."""
        if obj.get("kind") and obj.get("apiVersion"):
            return obj
        return {**obj, "apiVersion": self.resource.api_version, "kind": self.resource.kind}


def _key(obj: Mapping[str, Any]) -> Key:
    metadata = obj.get("metadata") or {}
    name = metadata.get("name")
    if not isinstance(name, str):
        raise ValueError(f"an object without metadata.name: {str(obj)[:200]}")
    return (str(metadata.get("namespace") or ""), name)


async def _lines(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    async for line in response.aiter_lines():
        if line.strip():
            event = json.loads(line)
            if not isinstance(event, dict):
                raise ValueError(f"a watch event is a JSON object, got {line[:200]}")
            yield event


def _raise_for_status(response: httpx.Response) -> None:
    if response.status_code >= 400:
        try:
            message = response.json().get("message", "")
        except ValueError:
            message = response.text[:200]
        raise TemporaryError(f"{response.request.method} {response.request.url.path}: {response.status_code} {message}")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, httpx.HTTPError):
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return str(exc)
