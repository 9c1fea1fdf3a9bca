"""End-to-end: a side-car's bootstrap certificate works only for the mesh run that issued it
(issue 25, item 4).

Two runs of the example on one CA folder: the first run's bootstrap certificate and key for
`sidecar~stats-0`, presented to the second run's xDS server as that node, are refused with
PERMISSION_DENIED before any secret is sent; the second run's own certificate for the same node
is served (the second run's side-cars run on theirs, or it would not be ready).
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from helpers_xds import TlsAdsClient, run
from mesh_runner import EXAMPLE, MeshRun, running_mesh

from interstate.ca import spiffe
from interstate.compile import names
from interstate.xds import resources as rt

pytestmark = pytest.mark.e2e

NODE = "sidecar~stats-0"


def bootstrap_of(mesh: MeshRun) -> tuple[bytes, bytes]:
    chain, key = mesh.bootstrap_files(NODE)
    return chain.read_bytes(), key.read_bytes()


async def first_answer(port: int, bundle: bytes, chain: bytes, key: bytes) -> str:
    """What the xDS server does with a stream from `NODE` with this certificate: the type of its
    first response, or the refusal's status code and details."""
    credentials = grpc.ssl_channel_credentials(root_certificates=bundle, private_key=key, certificate_chain=chain)
    async with TlsAdsClient(port, NODE, credentials=credentials) as client:
        await client.send(rt.SECRET, names=[names.SECRET_CERT, names.SECRET_ROOT])
        try:
            response = await client.recv(timeout=10)
        except grpc.aio.AioRpcError as error:
            return f"{error.code().name}: {error.details()}"
        return response.type_url


def test_a_bootstrap_certificate_of_an_earlier_run_is_refused(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    with running_mesh(EXAMPLE, tmp_path / "first", "--ca-dir", str(ca)) as first:
        old_chain, old_key = bootstrap_of(first)
    with running_mesh(EXAMPLE, tmp_path / "second", "--ca-dir", str(ca)) as second:
        port = second.status()["xds"]["port"]
        bundle = (tmp_path / "second" / "certs" / "bundle.pem").read_bytes()
        new_chain, new_key = bootstrap_of(second)
        assert old_chain != new_chain
        refused = run(first_answer(port, bundle, old_chain, old_key))
        assert refused.startswith("PERMISSION_DENIED: ") and "not issued by this run" in refused, refused
        assert run(first_answer(port, bundle, new_chain, new_key)) == rt.SECRET
    # the run is named in the certificate: spiffe://<trust domain>/interstate/xds-client/<run>/<node>
    assert (
        spiffe.xds_client_id("fec.gov.local", NODE, "r1") == "spiffe://fec.gov.local/interstate/xds-client/r1/" + NODE
    )
