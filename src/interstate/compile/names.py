"""Names of generated Envoy resources, in one place so listeners, routes and clusters agree."""

from __future__ import annotations

INBOUND_LISTENER = "inbound"
OUTBOUND_LISTENER = "outbound"
INGRESS_LISTENER = "ingress"
TUNNEL_LISTENER = "outbound-tunnel"  # internal: what apps send through a CONNECT tunnel
TUNNEL_CLUSTER = "tunnel|outbound"  # the outbound listener's way into TUNNEL_LISTENER

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


def inbound_h2_cluster(service: str) -> str:
    """A side-car's cluster for its own HTTP/1.1 app's gRPC requests: the same port, over h2c."""
    return f"inbound|{service}|h2"


def local_port_listener(service: str) -> str:
    """A caller's listener on the local port it gave a tcp service."""
    return f"tcp|{service}"


def service_of(cluster: str) -> str:
    return cluster.split("|")[1]
