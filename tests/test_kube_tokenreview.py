"""kube/tokenreview.py: a side-car's service-account token, checked with a TokenReview, decides
whether its ADS stream is served and for which node.

The API server is the fake of tests/helpers_kube.py (real HTTPS on 127.0.0.1), which vouches for
the tokens each test defines. What the proven pod may then have is the binding's to say (the
controller's, tests/test_kube_identity.py); here it is `only(...)` or `anyone`. The last test runs
the real core (`ControlPlane`: ADS over TLS, server certificate only) with the reviewer as its
authenticator and scripted gRPC clients that send (or do not send) a bearer token: a refused
stream is aborted before it receives anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from helpers_kube import TOKEN, FakeApiServer, ServiceAccountToken, TokenAdsClient, fake_apiserver
from helpers_xds import MESH, free_port, metric, run

from interstate.compile.proxy import Proxy, Role
from interstate.config.loader import decode_sources
from interstate.core.identity import IdentitySettings
from interstate.core.plane import ControlPlane
from interstate.errors import TemporaryError
from interstate.kube.tokenreview import (
    Binding,
    PodIdentity,
    ReviewSettings,
    TokenRefused,
    TokenReviewer,
    bearer_token,
    pod_identity,
)
from interstate.kube.watch import ApiSettings
from interstate.model.index import MeshIndex
from interstate.xds import resources as rt

POD = "results-5f7d8-x2x9q"
NODE = f"sidecar~{POD}.elections"
GOOD = "eyJhbGciOiJSUzI1NiJ9.results-pod-token.sig"


@dataclass
class StreamContext:
    """The one thing an Authenticator reads from a gRPC stream's context: its metadata."""

    metadata: Sequence[tuple[str, str]]

    def invocation_metadata(self) -> Sequence[tuple[str, str]]:
        return self.metadata


def bearer(token: str) -> Any:
    return StreamContext([("user-agent", "envoy"), ("authorization", f"Bearer {token}")])


def with_tokens(api: FakeApiServer) -> None:
    api.tokens[GOOD] = ServiceAccountToken("elections", "results", POD)
    api.tokens["stats-token"] = ServiceAccountToken("elections", "stats", "stats-6d9f7c-abcde")
    api.tokens["legacy-secret-token"] = ServiceAccountToken("elections", "results", None)
    api.tokens["vault-token"] = ServiceAccountToken("elections", "results", POD, audiences=("vault",))
    # bound to the results pod's name but another service account (a pod re-created under another)
    api.tokens["intruder-token"] = ServiceAccountToken("elections", "intruder", POD)


def api_settings(api: FakeApiServer, token: str = TOKEN) -> ApiSettings:
    return ApiSettings(api.url, token=token, ca_file=api.ca_file)


def anyone(node_id: str, pod: PodIdentity) -> str | None:
    """A binding that lets any proven pod have its node's configuration: the review alone."""
    return None


def only(namespace: str, service_account: str) -> Binding:
    """A binding that serves the pods of one service account only."""

    def bind(node_id: str, pod: PodIdentity) -> str | None:
        if (pod.namespace, pod.service_account) == (namespace, service_account):
            return None
        return f"node {node_id!r}: service account {pod.namespace}/{pod.service_account} may not have it"

    return bind


def test_a_pods_token_serves_its_own_node_only(tmp_path: Path) -> None:
    async def body() -> None:
        async with fake_apiserver(tmp_path) as api, TokenReviewer(api_settings(api), bind=anyone) as reviewer:
            with_tokens(api)
            assert await reviewer(bearer(GOOD), NODE) is None

            # what was asked, and with whose credentials: the controller's, not the side-car's
            [review] = api.token_reviews
            assert review["spec"] == {"token": GOOD, "audiences": ["interstate-xds"]}
            assert api.requests[-1].authorization == f"Bearer {TOKEN}"

            # the same token claiming another pod's node (or another namespace's): refused, saying why
            refusal = await reviewer(bearer(GOOD), "sidecar~stats-6d9f7c-abcde.elections")
            assert refusal is not None and "is not the token's pod" in refusal
            assert f"pod {POD!r} in namespace 'elections'" in refusal and GOOD not in refusal
            assert await reviewer(bearer(GOOD), f"sidecar~{POD}.default") is not None
            assert await reviewer(bearer(GOOD), f"ingress~{POD}.elections") is not None

    run(body())


def test_the_binding_decides_what_a_proven_pod_may_have_every_time(tmp_path: Path) -> None:
    async def body() -> None:
        asked: list[tuple[str, PodIdentity]] = []
        results_only = only("elections", "results")

        def bind(node_id: str, pod: PodIdentity) -> str | None:
            asked.append((node_id, pod))
            if pod.pod == "later":
                raise TemporaryError("not known yet")
            return results_only(node_id, pod)

        async with fake_apiserver(tmp_path) as api, TokenReviewer(api_settings(api), bind=bind) as reviewer:
            with_tokens(api)
            api.tokens["later-token"] = ServiceAccountToken("elections", "results", "later")
            assert await reviewer(bearer(GOOD), NODE) is None
            assert asked == [(NODE, PodIdentity("elections", "results", POD, f"uid-of-{POD}"))]  # the pod-uid extra too
            assert PodIdentity("elections", "results", POD).spiffe_id("fec.gov.local") == (
                "spiffe://fec.gov.local/ns/elections/sa/results"
            )

            # proven (the node is the token's pod), but the binding says no: its reason is the refusal
            refusal = await reviewer(bearer("intruder-token"), NODE)
            assert refusal == f"node {NODE!r}: service account elections/intruder may not have it"
            # a kept answer is bound again: the binding is asked on every stream
            assert await reviewer(bearer("intruder-token"), NODE) == refusal
            assert len(api.token_reviews) == 2 and len(asked) == 3
            # a token that does not prove the node never reaches the binding
            assert await reviewer(bearer("stats-token"), NODE) is not None
            assert len(asked) == 3
            # "cannot tell yet" is not a refusal: the ADS server answers UNAVAILABLE
            with pytest.raises(TemporaryError, match="not known yet"):
                await reviewer(bearer("later-token"), "sidecar~later.elections")

    run(body())


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("forged.jwt.token", "the API server did not authenticate the token: [invalid bearer token"),
        ("vault-token", 'token audiences ["vault"] is invalid for the target audiences ["interstate-xds"]'),
        ("legacy-secret-token", "is not bound to a pod (no authentication.kubernetes.io/pod-name)"),
    ],
)
def test_tokens_the_api_server_does_not_vouch_for_as_a_pods_are_refused(
    tmp_path: Path, token: str, reason: str
) -> None:
    async def body() -> None:
        async with fake_apiserver(tmp_path) as api, TokenReviewer(api_settings(api), bind=anyone) as reviewer:
            with_tokens(api)
            refusal = await reviewer(bearer(token), NODE)
            assert refusal is not None and reason in refusal, refusal
            assert token not in refusal
            # refusals are not remembered: the next try asks again (the token may have become valid)
            assert await reviewer(bearer(token), NODE) is not None
            assert len(api.token_reviews) == 2

    run(body())


def test_the_answer_must_name_our_audience_a_service_account_and_one_pod() -> None:
    ours = ("interstate-xds",)
    user = {
        "username": "system:serviceaccount:elections:results",
        "extra": {"authentication.kubernetes.io/pod-name": [POD]},
    }
    vouched = {"authenticated": True, "user": user, "audiences": ["interstate-xds"]}
    identity = pod_identity(vouched, ours)
    assert (identity.namespace, identity.service_account, identity.pod, identity.node_id) == (
        "elections",
        "results",
        POD,
        NODE,
    )
    # an API server that is not audience-aware answers no audiences: the token was not checked as ours
    for status, reason in [
        ({**vouched, "audiences": []}, "not for the control plane"),
        ({**vouched, "audiences": ["https://kubernetes.default.svc"]}, "not for the control plane"),
        ({**vouched, "user": {**user, "username": "alice@example.org"}}, "not a service account's"),
        ({**vouched, "user": {**user, "username": "system:serviceaccount:elections"}}, "not a service account's"),
        ({**vouched, "user": {**user, "extra": {}}}, "not bound to a pod"),
        ({"user": user, "audiences": ["interstate-xds"]}, "did not authenticate"),
    ]:
        with pytest.raises(TokenRefused, match=reason):
            pod_identity(status, ours)


def test_the_bearer_token_is_read_from_the_streams_metadata() -> None:
    assert bearer_token([("authorization", "Bearer abc.def")]) == "abc.def"
    assert bearer_token([("authorization", b"bearer  abc.def ")]) == "abc.def"
    for metadata, reason in [
        (None, "no bearer token"),
        ([("x-token", "abc")], "no bearer token"),
        ([("authorization", "Basic YWxpY2U6c2VjcmV0")], "is not 'Bearer <token>'"),
        ([("authorization", "Bearer ")], "is not 'Bearer <token>'"),
        ([("authorization", "Bearer a"), ("authorization", "Bearer b")], "more than one"),
        ([("authorization", "Bearer " + "x" * 20000)], "longer than"),
    ]:
        with pytest.raises(TokenRefused, match=reason) as caught:
            bearer_token(metadata)
        assert "YWxpY2U6c2VjcmV0" not in str(caught.value)


def test_accepted_tokens_are_kept_briefly_and_boundedly(tmp_path: Path) -> None:
    async def body() -> None:
        now = [0.0]
        settings = ReviewSettings(cache_ttl_s=30, cache_size=2)
        async with fake_apiserver(tmp_path) as api:
            for i in range(3):
                api.tokens[f"token-{i}"] = ServiceAccountToken("elections", "results", f"results-{i}")
            async with TokenReviewer(api_settings(api), settings, clock=lambda: now[0], bind=anyone) as reviewer:
                assert await reviewer(bearer("token-0"), "sidecar~results-0.elections") is None
                assert await reviewer(bearer("token-0"), "sidecar~results-0.elections") is None
                # a cached answer still has to match the node claimed
                assert await reviewer(bearer("token-0"), "sidecar~results-1.elections") is not None
                assert len(api.token_reviews) == 1

                now[0] = 31.0  # past the TTL: asked again
                assert await reviewer(bearer("token-0"), "sidecar~results-0.elections") is None
                assert len(api.token_reviews) == 2

                # at most two kept: token-0, the least recently used, goes when token-2 comes
                await reviewer(bearer("token-1"), "sidecar~results-1.elections")
                await reviewer(bearer("token-2"), "sidecar~results-2.elections")
                assert len(api.token_reviews) == 4
                await reviewer(bearer("token-2"), "sidecar~results-2.elections")
                assert len(api.token_reviews) == 4
                await reviewer(bearer("token-0"), "sidecar~results-0.elections")
                assert len(api.token_reviews) == 5

    run(body())


def test_when_the_api_server_cannot_be_asked_the_stream_cannot_be_served_yet(tmp_path: Path) -> None:
    """Not a refusal of the side-car (PERMISSION_DENIED) but TemporaryError, which the ADS server
    answers with UNAVAILABLE: Envoy retries, and is served once the API server answers."""

    async def body() -> None:
        async with fake_apiserver(tmp_path) as api:
            with_tokens(api)
            # the controller's own credentials are refused (RBAC or a wrong token): 401
            async with TokenReviewer(api_settings(api, token="not-the-controllers"), bind=anyone) as reviewer:
                with pytest.raises(TemporaryError, match="cannot check the token: TokenReview answered HTTP 401"):
                    await reviewer(bearer(GOOD), NODE)
        # nobody listens there any more
        unreachable = ApiSettings(f"https://127.0.0.1:{free_port()}", token=TOKEN, ca_file=api.ca_file)
        async with TokenReviewer(unreachable, ReviewSettings(timeout_s=2), bind=anyone) as reviewer:
            with pytest.raises(TemporaryError, match=r"^cannot check the token: TokenReview failed") as caught:
                await reviewer(bearer(GOOD), NODE)
            assert GOOD not in str(caught.value)

    run(body())


# ---- the real ADS server over TLS, with the reviewer as its authenticator --------------------


def test_the_core_serves_a_stream_only_when_its_token_proves_its_node(tmp_path: Path) -> None:
    async def body() -> None:
        binding = only("elections", "results")
        async with fake_apiserver(tmp_path) as api, TokenReviewer(api_settings(api), bind=binding) as reviewer:
            with_tokens(api)
            core = ControlPlane(IdentitySettings(tmp_path / "certs", tmp_path / "ca"), tmp_path / "audit.jsonl")
            port = await core.start("127.0.0.1", 0, "interstate.local", reviewer)
            try:
                proxy = Proxy(NODE, Role.SIDECAR, "results", inbound_port=15006, outbound_port=15001, app_port=8081)
                assert core.push(MeshIndex(decode_sources({"mesh.yaml": MESH})), [proxy]) == 1
                assert core.identity is not None
                bundle = core.identity.authority.bundle_pem

                async def first_response(token: str | None) -> Any:
                    client = TokenAdsClient(port, NODE)
                    client.bundle_pem, client.token = bundle, token
                    async with client:
                        await client.send(rt.CLUSTER)
                        return await client.recv(5)

                response = await first_response(GOOD)
                assert response.type_url == rt.CLUSTER and response.resources

                for token, reason in [
                    (None, "no bearer token"),
                    ("stats-token", "is not the token's pod"),
                    ("forged.jwt.token", "did not authenticate the token"),
                    ("intruder-token", "service account elections/intruder may not have it"),
                ]:
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await first_response(token)  # aborted before anything was sent
                    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
                    assert reason in str(refused.value.details())
                    if token is not None:
                        assert token not in str(refused.value.details())
                assert metric(core.ads, "interstate_xds_refused_streams_total") == 4
                assert metric(core.ads, "interstate_xds_pushes_total", type="CDS") == 1
            finally:
                await core.stop()

    run(body(), timeout=30)
