"""Type URLs of the xDS resource types we serve, and their make-before-break send order."""

from __future__ import annotations

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

# Clusters before their endpoints, listeners before their routes: a new reference always
# arrives after what it refers to exists (make before break). Secrets go first: a rotated
# certificate never waits behind other updates.
ORDER = (SECRET, CLUSTER, ENDPOINT, LISTENER, ROUTE)
# State-of-the-world types whose every response carries the full set (absent = deleted).
WILDCARD = frozenset({CLUSTER, LISTENER})

SHORT = {CLUSTER: "CDS", ENDPOINT: "EDS", LISTENER: "LDS", ROUTE: "RDS", SECRET: "SDS"}
