"""SPIFFE IDs of workloads: `spiffe://<trust domain>/ns/<namespace>/sa/<service>`."""

from __future__ import annotations

import re

from interstate.model.base import DEFAULT_NAMESPACE

_ID = re.compile(r"^spiffe://([a-z0-9.-]+)/ns/([a-z0-9-]+)/sa/([a-z0-9-]+)$")


def workload_id(trust_domain: str, service: str, namespace: str = DEFAULT_NAMESPACE) -> str:
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service}"


def parse(spiffe_id: str) -> tuple[str, str, str]:
    """(trust domain, namespace, service), or ValueError for anything that is not a workload ID."""
    match = _ID.match(spiffe_id)
    if not match:
        raise ValueError(f"{spiffe_id!r} is not a workload SPIFFE ID (spiffe://<domain>/ns/<ns>/sa/<name>)")
    return match.group(1), match.group(2), match.group(3)


SYSTEM_NAMESPACE = "interstate-system"


def system_id(trust_domain: str, name: str) -> str:
    """Data-plane identities of the mesh's own parts (the ingress), apart from any workload."""
    return workload_id(trust_domain, name, SYSTEM_NAMESPACE)


def control_plane_id(trust_domain: str) -> str:
    """The control plane's xDS server identity. Not of the workload form, so no side-car ever
    accepts it as a caller."""
    return f"spiffe://{trust_domain}/interstate/control-plane"


def xds_client_id(trust_domain: str, node_id: str, run: str = "") -> str:
    """An Envoy's identity towards the control plane only (its bootstrap certificate), bound to
    the mesh run that issued it (`run`) so no other run accepts it. Not of the workload form
    either: a long-lived bootstrap certificate must not pass for a workload."""
    return f"spiffe://{trust_domain}/interstate/xds-client/{run + '/' if run else ''}{node_id}"
