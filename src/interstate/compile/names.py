"""Names of generated Envoy resources, in one place so listeners, routes and clusters agree."""

from __future__ import annotations

INBOUND_LISTENER = "inbound"
OUTBOUND_LISTENER = "outbound"
INGRESS_LISTENER = "ingress"

SECRET_CERT = "default"  # a proxy's own certificate and key (SDS)
SECRET_ROOT = "ROOTCA"  # the mesh trust bundle (SDS)

INBOUND_ROUTE = "inbound"
OUTBOUND_ROUTE = "outbound"
INGRESS_ROUTE = "ingress"


def outbound_cluster(service: str) -> str:
    """The cluster a caller uses to reach `service`; its endpoints come over EDS."""
    return f"outbound|{service}"


def inbound_cluster(service: str) -> str:
    """A side-car's cluster for its own app on 127.0.0.1."""
    return f"inbound|{service}"


def service_of(cluster: str) -> str:
    return cluster.split("|", 1)[1]
