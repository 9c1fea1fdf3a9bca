"""SnapshotBuilder: the snapshots of an incremental push are byte for byte those of compiling every
proxy from scratch, while only what a change touches is recompiled or re-serialized."""

from __future__ import annotations

from collections.abc import Mapping

from helpers_xds import make_credentials
from hypothesis import given, settings
from hypothesis import strategies as st

from interstate.compile import Credentials, Proxy, compile_proxy
from interstate.config.loader import decode_sources
from interstate.model.index import Endpoint, MeshConfig, MeshIndex
from interstate.xds import resources as rt
from interstate.xds.incremental import SnapshotBuilder
from interstate.xds.snapshot import Snapshot

N = 6


def mesh(n: int = N, extra: str = "") -> MeshConfig:
    docs = ["apiVersion: mesh.codifyhq.io/v1\nkind: Mesh\nmetadata: {name: m}\nspec: {defaultPolicy: FEC-F101}\n"]
    for i in range(n):
        calls = ", ".join(f"svc-{(i + k) % n}" for k in (1, 2))
        docs.append(
            "apiVersion: mesh.codifyhq.io/v1\nkind: Workload\n"
            f"metadata: {{name: svc-{i}}}\nspec: {{port: 8080, run: {{command: [x]}}, calls: [{calls}]}}\n"
        )
    docs.append(
        "apiVersion: mesh.codifyhq.io/v1\nkind: Gateway\nmetadata: {name: g}\n"
        "spec: {routes: [{pathPrefix: /a, service: svc-0}]}\n"
    )
    return decode_sources({"mesh.yaml": "---\n".join(docs) + extra})


PROXIES = [Proxy.sidecar(f"svc-{i}", 0, inbound_port=15006, outbound_port=15001, app_port=8080) for i in range(N)]
PROXIES.append(Proxy.ingress(8080))
CREDS = {p.node_id: make_credentials(p.service or "ingress") for p in PROXIES}


def endpoints(counts: Mapping[int, int]) -> dict[str, tuple[Endpoint, ...]]:
    return {
        f"svc-{i}": tuple(Endpoint(f"svc-{i}", r, f"127.0.{i}.{r + 1}", 15006) for r in range(count))
        for i, count in counts.items()
    }


def from_scratch(index: MeshIndex, creds: Mapping[str, Credentials]) -> dict[str, Snapshot]:
    return {p.node_id: Snapshot.from_resources(compile_proxy(index, p, creds[p.node_id])) for p in PROXIES}


def same(a: Mapping[str, Snapshot], b: Mapping[str, Snapshot]) -> None:
    assert a.keys() == b.keys()
    for node in a:
        for type_url, typeset in a[node].types.items():
            other = b[node].types[type_url]
            assert (typeset.version, dict(typeset.resources)) == (other.version, dict(other.resources)), (
                node,
                type_url,
            )
            assert typeset.body(None) == other.body(None)


def build(builder: SnapshotBuilder, index: MeshIndex, creds: Mapping[str, Credentials]) -> dict[str, Snapshot]:
    return builder.build(index, PROXIES, lambda p: creds[p.node_id])


@settings(max_examples=30, deadline=None)
@given(st.lists(st.dictionaries(st.integers(0, N - 1), st.integers(0, 3)), min_size=1, max_size=6))
def test_a_sequence_of_endpoint_changes_gives_the_same_snapshots_as_compiling_from_scratch(
    changes: list[dict[int, int]],
) -> None:
    config = mesh()
    builder = SnapshotBuilder()
    counts = dict.fromkeys(range(N), 1)
    for change in changes:
        counts.update(change)
        index = MeshIndex(config).with_endpoints(endpoints(counts))
        same(build(builder, index, CREDS), from_scratch(index, CREDS))


def test_an_endpoint_change_recompiles_nothing_and_changes_only_its_callers_endpoints() -> None:
    config = mesh()
    builder = SnapshotBuilder()
    before = build(builder, MeshIndex(config).with_endpoints(endpoints(dict.fromkeys(range(N), 1))), CREDS)
    assert builder.compiled == len(PROXIES)
    after = build(builder, MeshIndex(config).with_endpoints(endpoints({**dict.fromkeys(range(N), 1), 3: 2})), CREDS)
    assert builder.compiled == 0
    changed = {node for node in after if after[node].versions != before[node].versions}
    # svc-3 is called by svc-1 and svc-2 (each calls the next two)
    assert changed == {"sidecar~svc-1-0", "sidecar~svc-2-0"}
    for node in changed:
        differs = {t for t in rt.ORDER if after[node].version(t) != before[node].version(t)}
        assert differs == {rt.ENDPOINT}
        for t in (rt.CLUSTER, rt.LISTENER, rt.ROUTE, rt.SECRET):
            assert after[node].types[t] is before[node].types[t]  # reused, not re-serialized


def test_new_credentials_recompile_only_that_proxy_and_a_new_config_recompiles_all() -> None:
    config = mesh()
    index = MeshIndex(config).with_endpoints(endpoints(dict.fromkeys(range(N), 1)))
    builder = SnapshotBuilder()
    build(builder, index, CREDS)
    rotated = {**CREDS, "sidecar~svc-4-0": make_credentials("svc-4")}
    snaps = build(builder, index, rotated)
    assert builder.compiled == 1
    same(snaps, from_scratch(index, rotated))
    changed_config = mesh(
        extra="---\napiVersion: mesh.codifyhq.io/v1\nkind: TrafficPolicy\nmetadata: {name: p}\n"
        "spec: {destination: {service: svc-1}, timeout: 2s}\n"
    )
    index = MeshIndex(changed_config).with_endpoints(endpoints(dict.fromkeys(range(N), 1)))
    same(build(builder, index, rotated), from_scratch(index, rotated))
    assert builder.compiled == len(PROXIES)


def test_a_removed_proxy_is_forgotten() -> None:
    config = mesh()
    index = MeshIndex(config).with_endpoints(endpoints(dict.fromkeys(range(N), 1)))
    builder = SnapshotBuilder()
    snaps = build(builder, index, CREDS)
    builder.forget(n for n in snaps if n != "sidecar~svc-5-0")
    build(builder, index, CREDS)
    assert builder.compiled == 1  # svc-5's side-car was compiled again
