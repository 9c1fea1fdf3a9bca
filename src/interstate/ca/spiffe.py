"""SPIFFE IDs of workloads: `spiffe://<trust domain>/ns/<namespace>/sa/<service>`."""

from __future__ import annotations

import re

DEFAULT_NAMESPACE = "default"  # standalone mode has one namespace
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
    """Identities of the mesh's own parts (control plane, ingress), apart from any workload."""
    return workload_id(trust_domain, name, SYSTEM_NAMESPACE)
