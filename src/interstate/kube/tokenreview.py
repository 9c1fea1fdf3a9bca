"""Who is on an ADS stream, in Kubernetes: the side-car's pod, proven by its service-account token.

An injected side-car (`kube/bootstrap.py`) sends its pod's projected token (audience
`interstate-xds`) as `authorization: Bearer <token>` on its ADS stream. `TokenReviewer` is the
`xds.server.Authenticator` that `kube/controller.py` gives the core (`ControlPlane.start`): for
each new stream it POSTs an `authentication.k8s.io/v1` TokenReview with that token to the API
server, with the controller's own credentials (`kube.watch.ApiSettings`; its service account
needs `create` on `tokenreviews`, e.g. the `system:auth-delegator` ClusterRole), and serves
the stream only when the API server says the token is authenticated, for one of our audiences,
a service account's (`system:serviceaccount:<namespace>:<name>`) and bound to a pod whose node
ID (`sidecar~<pod>.<namespace>`) is the one the stream claims, and then only when `bind` (the
controller's) agrees that this pod's namespace and service account may have what the node is
to receive: a workload's certificate goes to the workload's service account only. Who the
side-car is therefore comes from the API server's answer, never from what the node metadata or
the pod's labels say.

Refusals say why in words and never carry the token. Positive answers are kept for a short
while (`ReviewSettings.cache_ttl_s`, at most `cache_size` of them, keyed by the token's SHA-256),
so a side-car reconnecting does not cost a review each time; refusals are not kept. Every
review is bounded in time and in number at once (`timeout_s`, `max_in_flight`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import httpx

from interstate.ca import spiffe
from interstate.errors import PermanentError, TemporaryError
from interstate.kube.watch import ApiSettings

log = logging.getLogger(__name__)

AUDIENCE = "interstate-xds"  # what the injector asks the kubelet to put in the projected token
REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
MAX_TOKEN_CHARS = 16 * 1024  # service-account JWTs are ~1 KiB; anything far bigger is not one


@dataclass(frozen=True)
class ReviewSettings:
    audiences: tuple[str, ...] = (AUDIENCE,)
    cache_ttl_s: float = 30.0  # how long an accepted token is trusted without asking again
    cache_size: int = 1024  # accepted tokens kept (least recently used go first)
    timeout_s: float = 5.0  # one TokenReview
    max_in_flight: int = 8  # TokenReviews at once (a reconnect storm queues, bounded by timeout_s)


class TokenRefused(PermanentError):
    """The API server does not vouch for this token as a pod's; the message says why."""


@dataclass(frozen=True)
class PodIdentity:
    """What a TokenReview proved: the pod the token is bound to and its service account."""

    namespace: str
    service_account: str
    pod: str
    uid: str = ""  # the pod's uid the token is bound to (the API server's `pod-uid` extra)

    @property
    def node_id(self) -> str:
        """The node ID the pod's side-car presents (`kube.cluster.node_id`)."""
        return f"sidecar~{self.pod}.{self.namespace}"

    def spiffe_id(self, trust_domain: str) -> str:
        """The pod's Kubernetes identity, as the injector writes it in the node metadata."""
        return spiffe.workload_id(trust_domain, self.service_account, self.namespace)


Binding = Callable[[str, PodIdentity], str | None]
"""(a node ID, the pod its stream's token proves) -> None when that pod may have what the node is
served, else why not; raises TemporaryError when that cannot be told yet (UNAVAILABLE, retried)."""


class TokenReviewer:
    """An `xds.server.Authenticator` backed by the API server's TokenReview (see the module
    docstring). Owns an httpx client: close it with `aclose()` (or use `async with`)."""

    def __init__(
        self,
        api: ApiSettings,
        settings: ReviewSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        bind: Binding,
    ) -> None:
        self.settings = settings or ReviewSettings()
        self.clock = clock
        self.bind = bind
        self.reviews = 0  # TokenReviews sent (tests and status)
        self._api = api
        self._client: httpx.AsyncClient | None = None
        self._accepted: OrderedDict[str, tuple[float, PodIdentity]] = OrderedDict()
        self._in_flight = asyncio.Semaphore(self.settings.max_in_flight)

    async def __aenter__(self) -> TokenReviewer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # ---- the Authenticator -------------------------------------------------------------------
    async def __call__(self, context: grpc.aio.ServicerContext, node_id: str) -> str | None:
        """None to serve the stream claiming `node_id`, else why it is refused."""
        try:
            identity = await self.review(bearer_token(context.invocation_metadata()))
        except TokenRefused as exc:
            return str(exc)  # TemporaryError (the API server cannot be asked) -> UNAVAILABLE
        if identity.node_id != node_id:
            return (
                f"node {node_id!r} is not the token's pod: the token is pod {identity.pod!r} in namespace "
                f"{identity.namespace!r} (service account {identity.service_account!r}), whose node is "
                f"{identity.node_id!r}"
            )
        return self.bind(node_id, identity)

    # ---- the review --------------------------------------------------------------------------
    async def review(self, token: str) -> PodIdentity:
        """The pod `token` is bound to, as the API server says; TokenRefused saying why not, or
        TemporaryError when the API server could not be asked."""
        key = hashlib.sha256(token.encode()).hexdigest()
        now = self.clock()
        kept = self._accepted.get(key)
        if kept is not None:
            if kept[0] > now:
                self._accepted.move_to_end(key)
                return kept[1]
            del self._accepted[key]
        async with self._in_flight:
            status = await self._post(token)
        identity = pod_identity(status, self.settings.audiences)
        self._accepted[key] = (self.clock() + self.settings.cache_ttl_s, identity)
        self._accepted.move_to_end(key)
        while len(self._accepted) > self.settings.cache_size:
            self._accepted.popitem(last=False)
        return identity

    async def _post(self, token: str) -> dict[str, Any]:
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": list(self.settings.audiences)},
        }
        if self._client is None:
            self._client = self._api.client()
        self.reviews += 1
        try:
            response = await self._client.post(REVIEW_PATH, json=body, timeout=self.settings.timeout_s)
        except httpx.HTTPError as exc:
            raise TemporaryError(f"cannot check the token: TokenReview failed ({type(exc).__name__})") from None
        if response.status_code not in (200, 201):
            raise TemporaryError(
                f"cannot check the token: TokenReview answered HTTP {response.status_code} "
                "(the controller's service account needs create on tokenreviews, e.g. system:auth-delegator)"
            )
        try:
            status = response.json().get("status")
        except (ValueError, AttributeError):
            status = None
        if not isinstance(status, dict):
            raise TemporaryError("cannot check the token: the TokenReview answer has no status")
        return _without(status, token)


def bearer_token(metadata: Any) -> str:
    """The token of the one `authorization: Bearer <token>` in a stream's invocation metadata
    (pairs of key and value, or None); TokenRefused when there is none, several, or no token."""
    values = [value for key, value in metadata or () if str(key).lower() == "authorization"]
    if not values:
        raise TokenRefused(
            "no bearer token: a side-car proves its pod with its service-account token, sent as "
            "'authorization: Bearer <token>' (the injected bootstrap does this)"
        )
    if len(values) > 1:
        raise TokenRefused("more than one authorization header: send exactly one bearer token")
    value = values[0].decode("ascii", "replace") if isinstance(values[0], bytes) else str(values[0])
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise TokenRefused("the authorization header is not 'Bearer <token>'")
    if len(token) > MAX_TOKEN_CHARS:
        raise TokenRefused(f"the bearer token is longer than {MAX_TOKEN_CHARS} characters: not a service-account token")
    return token


def pod_identity(status: dict[str, Any], audiences: tuple[str, ...]) -> PodIdentity:
    """A TokenReview's status -> the pod it vouches for, or TokenRefused saying why not."""
    if status.get("authenticated") is not True:
        error = str(status.get("error") or "no reason given")[:300]
        raise TokenRefused(f"the API server did not authenticate the token: {error}")
    # An audience-aware API server answers with the audiences the token is valid for among ours;
    # an empty list would mean the API server's own audience: not a token meant for us.
    granted = [a for a in status.get("audiences") or [] if a in audiences]
    if not granted:
        raise TokenRefused(f"the token is not for the control plane (audience {' or '.join(audiences)})")
    user = status.get("user") or {}
    username = str(user.get("username") or "")
    namespace, _, account = username.removeprefix(SERVICE_ACCOUNT_PREFIX).partition(":")
    if not username.startswith(SERVICE_ACCOUNT_PREFIX) or not namespace or not account or ":" in account:
        raise TokenRefused(f"the token is not a service account's (user {username[:100]!r})")
    pods = (user.get("extra") or {}).get(POD_NAME_EXTRA) or []
    if len(pods) != 1 or not isinstance(pods[0], str) or not pods[0]:
        raise TokenRefused(
            f"the token of service account {namespace}/{account} is not bound to a pod "
            f"(no {POD_NAME_EXTRA}): use the projected token the injector mounts"
        )
    uids = (user.get("extra") or {}).get(POD_UID_EXTRA) or []
    uid = uids[0] if len(uids) == 1 and isinstance(uids[0], str) else ""
    return PodIdentity(namespace, account, pods[0], uid)


def _without(status: dict[str, Any], token: str) -> dict[str, Any]:
    """The status, with the token scrubbed from its error (which is repeated in refusals)."""
    error = status.get("error")
    if isinstance(error, str) and token in error:
        return {**status, "error": error.replace(token, "<token>")}
    return status
