"""Follow one HTTP request through a proxy's compiled resources, the way Envoy would route it.

Tests phrase compiler behaviour as calls ("results -> http://stats:8080/x reaches outbound|stats")
instead of comparing proto shapes (as Istio's pilot simulation tests do). Reads a
`ProxyResources` from `compile`; pure, no I/O. Covers what we compile: listener -> HTTP connection
manager -> RDS -> virtual host (Envoy's domain rules) -> first matching route -> cluster, endpoints.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Protocol, TypeVar

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import duration_pb2

from interstate.compile import ProxyResources


class _Named(Protocol):
    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=_Named)
Append = base_pb2.HeaderValueOption.HeaderAppendAction
# Envoy's defaults for fields we may leave unset.
DEFAULT_TIMEOUT = timedelta(seconds=15)
DEFAULT_PANIC_PERCENT = 50.0


@dataclass(frozen=True)
class Retry:
    retry_on: str
    num_retries: int


@dataclass(frozen=True)
class EjectionRule:
    """Outlier detection as Envoy applies it: its defaults filled in where a field is unset."""

    consecutive_5xx: int
    base_ejection_time: timedelta
    interval: timedelta
    max_ejection_percent: int


@dataclass(frozen=True)
class Outcome:
    """What Envoy does with one request. `status` is set only when Envoy answers by itself: a
    direct response, or one of its own errors, named by its access-log response `flag`."""

    request: str
    virtual_host: str | None = None
    route: str | None = None
    cluster: str | None = None
    status: int | None = None
    body: str = ""
    flag: str = ""  # NR no route, NC no cluster, UH no healthy upstream
    headers_added: Mapping[str, str] = field(default_factory=dict)
    timeout: timedelta | None = None
    retry: Retry | None = None
    ejection: EjectionRule | None = None
    panic_threshold: float | None = None  # percent of healthy hosts; below it Envoy ignores health
    endpoints: tuple[str, ...] = ()
    split: tuple[tuple[str, int], ...] = ()  # a weighted route's (cluster, weight); `cluster` is the one drawn

    def describe(self) -> str:
        if self.status is not None:
            why = f" ({self.flag})" if self.flag else ""
            body = f": {self.body.strip()}" if self.body else ""
            return f"{self.request}: Envoy answers {self.status}{why}{body}"
        lines = [f"{self.request}: route {self.route!r} of virtual host {self.virtual_host!r}"]
        if self.split:
            lines.append("  split " + ", ".join(f"{name} {weight}" for name, weight in self.split))
        lines.append(f"  -> cluster {self.cluster}: {', '.join(self.endpoints)}")
        lines += [f"  adds {k}: {v}" for k, v in self.headers_added.items()]
        lines.append(f"  timeout {_seconds(self.timeout)}" if self.timeout is not None else "  no total timeout")
        if self.retry is not None:
            lines.append(f"  retries {self.retry.num_retries}x on {self.retry.retry_on}")
        if (e := self.ejection) is not None:
            lines.append(
                f"  ejects a replica after {e.consecutive_5xx} consecutive 5xx for "
                f"{_seconds(e.base_ejection_time)}, at most {e.max_ejection_percent}%"
            )
        if self.panic_threshold is not None:
            lines.append(f"  panic threshold {self.panic_threshold:g}%")
        return "\n".join(lines)


def simulate(
    resources: ProxyResources,
    listener: str,
    host: str,
    path: str,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    draw: float = 0.0,
) -> Outcome:
    """Route `method http://host/path` arriving on `listener`. LookupError if it is not there.
    `draw` in [0, 1) is the random number a weighted route (a TrafficSplit) picks its cluster
    by, as Envoy does: the first cluster whose running total of weights passes draw x total."""
    if not 0.0 <= draw < 1.0:
        raise ValueError(f"draw must be in [0, 1), got {draw}")
    if not path.startswith("/"):
        raise ValueError(f"path must start with '/', got {path!r}")
    manager = _connection_manager(_named(resources.listeners, listener, "listener"))
    config = _named(resources.routes, manager.rds.route_config_name, "route configuration")
    if manager.normalize_path.value:
        path = _normalize(path)
    if manager.merge_slashes:
        bare, sep, query = path.partition("?")
        path = re.sub("/{2,}", "/", bare) + sep + query
    request = f"{method} http://{host}{path} on {listener}"
    vhost = select_virtual_host(config, host)
    if vhost is None:
        return Outcome(request, status=404, flag="NR")
    request_headers = {k.lower(): v for k, v in (headers or {}).items()} | {":method": method}
    route = next((r for r in vhost.routes if route_matches(r.match, path, request_headers)), None)
    if route is None:
        return Outcome(request, vhost.name, status=404, flag="NR")
    if route.HasField("direct_response"):
        response = route.direct_response
        body = response.body.inline_string or response.body.inline_bytes.decode()
        return Outcome(request, vhost.name, route.name, status=response.status, body=body)
    action = route.route
    specifier = action.WhichOneof("cluster_specifier") if route.HasField("route") else None
    split: tuple[tuple[str, int], ...] = ()
    if specifier == "cluster":
        chosen = action.cluster
    elif specifier == "weighted_clusters":
        split = tuple((w.name, w.weight.value) for w in action.weighted_clusters.clusters)
        chosen = _drawn(split, draw)
    else:
        raise NotImplementedError(f"route {route.name!r} is not a route to a cluster or to weighted clusters")
    # Envoy applies route, then virtual host, then route configuration headers (or the reverse).
    groups = [route.request_headers_to_add, vhost.request_headers_to_add, config.request_headers_to_add]
    if config.most_specific_header_mutations_wins:
        groups.reverse()
    options = [option for group in groups for option in group]
    retry = None
    if action.HasField("retry_policy"):
        policy = action.retry_policy
        retry = Retry(policy.retry_on, policy.num_retries.value if policy.HasField("num_retries") else 1)
    outcome = Outcome(
        request,
        vhost.name,
        route.name,
        chosen,
        headers_added=_add_headers({k.lower() for k in headers or {}}, options),
        timeout=_route_timeout(action),
        retry=retry,
        split=split,
    )
    cluster = next((c for c in resources.clusters if c.name == chosen), None)
    if cluster is None:
        return replace(outcome, status=503, flag="NC")
    lb = cluster.common_lb_config
    outcome = replace(
        outcome,
        ejection=_ejection(cluster),
        panic_threshold=lb.healthy_panic_threshold.value
        if lb.HasField("healthy_panic_threshold")
        else DEFAULT_PANIC_PERCENT,
        endpoints=_endpoints(resources, cluster),
    )
    if not outcome.endpoints:
        return replace(outcome, status=503, body="no healthy upstream", flag="UH")
    return outcome


def _drawn(split: tuple[tuple[str, int], ...], draw: float) -> str:
    """The cluster a weighted route sends a request with random number `draw` to."""
    total = sum(weight for _, weight in split)
    point, running = draw * total, 0
    for name, weight in split:
        running += weight
        if point < running:
            return name
    return split[-1][0]


def select_virtual_host(config: route_pb2.RouteConfiguration, host: str) -> rc.VirtualHost | None:
    """Envoy's order: exact domain, longest `*suffix`, longest `prefix*`, then `*`; any case.
    The port stays part of the host unless the configuration says to ignore it."""
    if config.ignore_port_in_host_matching:
        head, sep, port = host.rpartition(":")
        host = head if sep and port.isdigit() and not head.endswith(":") else host
    host = host.lower()
    exact: dict[str, rc.VirtualHost] = {}
    wild: list[tuple[int, str, rc.VirtualHost]] = []  # (rank, fixed part, vhost); rank 0 = suffix
    default = None
    for vhost in config.virtual_hosts:
        for domain in (d.lower() for d in vhost.domains):
            if domain == "*":
                default = default or vhost
            elif domain.startswith("*"):
                wild.append((0, domain[1:], vhost))
            elif domain.endswith("*"):
                wild.append((1, domain[:-1], vhost))
            else:
                exact.setdefault(domain, vhost)
    if host in exact:
        return exact[host]
    for rank, part, vhost in sorted(wild, key=lambda w: (w[0], -len(w[1]))):
        matches = host.endswith(part) if rank == 0 else host.startswith(part)
        if matches and len(host) > len(part):  # the `*` stands for at least one character
            return vhost
    return default


def route_matches(match: rc.RouteMatch, path: str, headers: Mapping[str, str] | None = None) -> bool:
    """Path matching as Envoy does it; `path` and `path_separated_prefix` ignore the query.
    Header matchers (exact, prefix or regex on one value, e.g. `:method`) must all match."""
    if match.query_parameters or match.HasField("runtime_fraction"):
        raise NotImplementedError("query and runtime route matches are not simulated")
    if not all(_header_matches(h, (headers or {}).get(h.name.lower())) for h in match.headers):
        return False
    kind = match.WhichOneof("path_specifier")
    connect = (headers or {}).get(":method") == "CONNECT"
    if kind == "connect_matcher" or connect:  # a CONNECT has no path: only a CONNECT matcher takes it
        return kind == "connect_matcher" and connect
    sensitive = match.case_sensitive.value if match.HasField("case_sensitive") else True
    fold = str if sensitive else str.lower
    bare = fold(path.partition("?")[0])
    if kind == "prefix":
        return fold(path).startswith(fold(match.prefix))
    if kind == "path":
        return bare == fold(match.path)
    if kind == "path_separated_prefix":
        prefix = fold(match.path_separated_prefix)
        return bare == prefix or bare.startswith(prefix + "/")
    raise NotImplementedError(f"route match {kind!r} is not simulated")


def _header_matches(matcher: rc.HeaderMatcher, value: str | None) -> bool:
    if matcher.WhichOneof("header_match_specifier") == "present_match":
        return ((value is not None) == bool(matcher.present_match)) != bool(matcher.invert_match)
    kind = matcher.string_match.WhichOneof("match_pattern") if matcher.HasField("string_match") else None
    if kind is None:
        raise NotImplementedError(f"header matcher on {matcher.name!r} is not simulated")
    if value is None:
        return bool(matcher.invert_match)
    pattern = matcher.string_match
    if kind == "exact":
        found = value == pattern.exact
    elif kind == "prefix":
        found = value.startswith(pattern.prefix)
    elif kind == "contains":
        found = pattern.contains in value
    elif kind == "safe_regex":
        found = re.fullmatch(pattern.safe_regex.regex, value) is not None
    else:
        raise NotImplementedError(f"header match {kind!r} is not simulated")
    return bool(found) != bool(matcher.invert_match)


def _named(items: Iterable[T], name: str, what: str) -> T:
    found = {item.name: item for item in items}
    if name not in found:
        raise LookupError(f"no {what} {name!r}; have: {', '.join(sorted(found)) or 'none'}")
    return found[name]


def _connection_manager(listener: listener_pb2.Listener) -> hcm_pb2.HttpConnectionManager:
    for chain in listener.filter_chains:
        for flt in chain.filters:
            manager = hcm_pb2.HttpConnectionManager()
            if flt.typed_config.Unpack(manager) and manager.HasField("rds"):
                return manager
    raise LookupError(f"listener {listener.name!r} has no RDS connection manager")


def _add_headers(present: set[str], options: Iterable[base_pb2.HeaderValueOption]) -> dict[str, str]:
    added: dict[str, str] = {}
    for option in options:
        key = option.header.key.lower()
        action = option.append_action
        if (action == Append.ADD_IF_ABSENT and key in present) or (
            action == Append.OVERWRITE_IF_EXISTS and key not in present
        ):
            continue
        added[key] = option.header.value
        present.add(key)
    return added


def _endpoints(resources: ProxyResources, cluster: cluster_pb2.Cluster) -> tuple[str, ...]:
    assignment = cluster.load_assignment
    if cluster.type == cluster_pb2.Cluster.EDS:
        name = cluster.eds_cluster_config.service_name or cluster.name
        assignment = next((e for e in resources.endpoints if e.cluster_name == name), assignment)
    addresses = (lb.endpoint.address.socket_address for group in assignment.endpoints for lb in group.lb_endpoints)
    return tuple(f"{a.address}:{a.port_value}" for a in addresses)


def _ejection(cluster: cluster_pb2.Cluster) -> EjectionRule | None:
    if not cluster.HasField("outlier_detection"):
        return None
    od = cluster.outlier_detection

    def number(name: str, default: int) -> int:
        return int(getattr(od, name).value) if od.HasField(name) else default

    def span(name: str, default: int) -> timedelta:
        return _timedelta(getattr(od, name)) if od.HasField(name) else timedelta(seconds=default)

    return EjectionRule(
        number("consecutive_5xx", 5),
        span("base_ejection_time", 30),
        span("interval", 10),
        number("max_ejection_percent", 10),
    )


def _normalize(path: str) -> str:
    """RFC 3986 dot-segment removal on the path (not the query), as Envoy's normalize_path."""
    bare, sep, query = path.partition("?")
    segments = bare.split("/")[1:]
    out: list[str] = []
    for segment in segments:
        if segment == "..":
            out = out[:-1]
        elif segment != ".":
            out.append(segment)
    trailing = "/" if out and segments[-1] in (".", "..") else ""
    return "/" + "/".join(out) + trailing + sep + query


def _route_timeout(action: rc.RouteAction) -> timedelta | None:
    """The route's total timeout; None when it has none (0s: a stream's route)."""
    if not action.HasField("timeout"):
        return DEFAULT_TIMEOUT
    value = _timedelta(action.timeout)
    return value if value else None


def _timedelta(value: duration_pb2.Duration) -> timedelta:
    return timedelta(microseconds=value.ToMicroseconds())


def _seconds(value: timedelta) -> str:
    return f"{value.total_seconds():g}s"
