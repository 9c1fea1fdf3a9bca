"""A cluster's objects -> the mesh core's inputs: MeshConfig, Endpoints and the Proxies to compile.

Pure (dicts in, model out); called by `kube/controller.py` with what `kube/watch.py` holds.

- **Custom resources** (`mesh.codifyhq.io/v1`, as the API server returns them) go through the
  same loader as mesh files (`config.loader.decode_sources`, `kubernetes=True`), one source per
  object named `namespace/name` (cluster-scoped: `name`), so a bad CR is reported like a bad
  file: `elections/stats-breaker: document 1 (TrafficPolicy stats-breaker): spec...: ...`.
  Only `apiVersion`, `kind`, `spec` and `metadata.name/labels/annotations` are passed on: the
  rest of `metadata` and `status` belong to the API server. Names are mesh-wide: a service
  `stats` is one service whatever namespace its objects live in (two Workloads `stats` are a
  duplicate, reported with both objects).
- **A Workload in Kubernetes** describes the service, not how to run it: a Deployment runs its
  pods and a Service of the same name selects them, so `spec.run` may be omitted (and is
  ignored). `spec.port` is the Service's port (what callers write), `spec.calls`, policies,
  mTLS and the annotations mean what they mean in standalone mode; `spec.replicas` is the
  Deployment's business (or its HPA's) and is not read here.
- **EndpointSlices** (`discovery.k8s.io/v1`, label `kubernetes.io/service-name`, in the namespace
  of the service's Workload: a `stats` Service elsewhere is another service) -> `Endpoint`s
  of that service: endpoints whose `conditions.ready` is not false (the API defines a missing
  `ready` as unknown, to be taken as ready), first address of each, deduplicated across slices.
  Callers reach an injected workload's pods through their side-cars (`pod IP : ProxyPorts.inbound`,
  mutual TLS, as the compiler's cluster for it expects); a workload with
  `mesh.codifyhq.io/inject: "disabled"` (or a service without a Workload) at the slice's port
  named `http`, else its first TCP port.
- **Pods** carrying `mesh.codifyhq.io/injected` (set by the webhook) -> side-car `Proxy`s with
  node ID `sidecar~<pod>.<namespace>`, the ID `kube/bootstrap.py` has Envoy present, the service
  from the `app` label (else `app.kubernetes.io/name`), the pod IP and the side-car's ports; the
  app's port is its container port named `http`, else its first, else the Workload's `spec.port`.
  The outbound listener goes where the pod's apps were told it is: the loopback port of their
  `HTTP_PROXY` (which the injector wrote), else `ProxyPorts.outbound`. It is pod-local, so a
  webhook and a controller configured with different ports still agree; the inbound port is how
  other pods reach this one (EndpointSlices), so it stays `ProxyPorts.inbound` for every pod.
- **Who may carry a workload's identity.** A label is not a proof: any pod can say `app: results`.
  Workload `results`' certificate belongs to one service account, `results` (or its
  `spec.serviceAccount`) in the namespace of the Workload object (`PodClaim.entitled`), whose
  identity is `spiffe://<td>/ns/<namespace>/sa/results`: the SPIFFE ID its certificate names
  and its callers check (`MeshIndex.account`), and what the injector writes in the node metadata. A
  pod running as any other service account, or in another namespace, or labelled as a service
  that has no Workload, gets no Proxy (so no configuration and no certificate), and
  `kube/controller.py` refuses its side-car's ADS stream when its token proves another account.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from interstate.compile.proxy import Proxy, Role
from interstate.config.loader import decode_sources
from interstate.core.status import ReplicaState, ReplicaStatus, SidecarProcess
from interstate.kube.bootstrap import ProxyPorts
from interstate.kube.inject import (
    INJECTED_ANNOTATION,
    LOOPBACK,
    PROXY_CONTAINER,
    PROXY_ENV,
    READY_PORT_NAME,
    SERVICE_LABELS,
    service_account,
)
from interstate.model.index import Endpoint, MeshConfig
from interstate.model.workload import Workload
from interstate.xds.sync import NodeSync

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
PORT_NAME = "http"  # the slice / container port preferred when there are several
_METADATA_KEYS = ("name", "namespace", "labels", "annotations")
DEFAULT_PORTS = ProxyPorts()  # frozen


# ---- custom resources ---------------------------------------------------------------------


def object_name(obj: Mapping[str, Any]) -> str:
    """`namespace/name`, or `name` for a cluster-scoped object (how errors name the object)."""
    metadata = obj.get("metadata") or {}
    name, namespace = str(metadata.get("name", "?")), metadata.get("namespace")
    return f"{namespace}/{name}" if namespace else name


def mesh_document(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a custom resource the mesh reads: what a mesh file would say."""
    metadata = obj.get("metadata")
    document = {key: obj[key] for key in ("apiVersion", "kind", "spec") if key in obj}
    if isinstance(metadata, Mapping):
        document["metadata"] = {key: metadata[key] for key in _METADATA_KEYS if key in metadata}
    else:
        document["metadata"] = metadata
    return document


def mesh_sources(objects: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """{`namespace/name`: the objects' documents as YAML text} for `decode_sources`, sorted.
    Objects of different kinds with the same namespace/name are documents of one source."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        grouped.setdefault(object_name(obj), []).append(mesh_document(obj))
    return {
        name: "\n---\n".join(json.dumps(doc, ensure_ascii=False, sort_keys=True) for doc in sorted(docs, key=_kind))
        for name, docs in sorted(grouped.items())
    }


def mesh_config(objects: Iterable[Mapping[str, Any]]) -> MeshConfig:
    """Validated MeshConfig from the cluster's mesh custom resources, or ConfigError with every
    issue (each naming `namespace/name`, the kind and the field) exactly as for mesh files."""
    return decode_sources(mesh_sources(objects), kubernetes=True)


def _kind(document: Mapping[str, Any]) -> str:
    return str(document.get("kind", ""))


# ---- EndpointSlices -----------------------------------------------------------------------


def endpoints(
    slices: Iterable[Mapping[str, Any]], config: MeshConfig | None, ports: ProxyPorts = DEFAULT_PORTS
) -> dict[str, tuple[Endpoint, ...]]:
    """{service: its ready endpoints, sorted} from EndpointSlices (see the module docstring)."""
    workloads = {w.name: w for w in config.of_kind(Workload)} if config is not None else {}
    found: dict[str, set[tuple[str, int]]] = {}
    for item in slices:
        metadata = item.get("metadata") or {}
        service = (metadata.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if not service or item.get("addressType") not in ("IPv4", "IPv6"):
            continue
        workload = workloads.get(service)
        if workload is not None and metadata.get("namespace") != workload.account[0]:
            continue  # a Service of the same name in another namespace: not this workload's pods
        port = ports.inbound if workload is not None and workload.injected else slice_port(item)
        if port is None:
            continue
        addresses = found.setdefault(service, set())
        for endpoint in item.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready") is False or not endpoint.get("addresses"):
                continue
            addresses.add((str(endpoint["addresses"][0]), port))
    out: dict[str, tuple[Endpoint, ...]] = {}
    for service, addresses in sorted(found.items()):
        workload = workloads.get(service)
        version = workload.spec.version if workload is not None else "v1"
        out[service] = tuple(
            Endpoint(service, i, address, port, version) for i, (address, port) in enumerate(sorted(addresses))
        )
    return out


def slice_port(item: Mapping[str, Any]) -> int | None:
    """The slice's TCP port named `http`, else its first TCP port; None when it has none."""
    tcp = [p for p in item.get("ports") or [] if p.get("protocol", "TCP") == "TCP" and isinstance(p.get("port"), int)]
    named = [p for p in tcp if p.get("name") == PORT_NAME]
    chosen = (named or tcp or [None])[0]
    return None if chosen is None else int(chosen["port"])


# ---- Pods ---------------------------------------------------------------------------------


def node_id(pod: Mapping[str, Any]) -> str:
    """The xDS node ID an injected pod's side-car presents (`--service-node`, see kube/inject.py)."""
    metadata = pod.get("metadata") or {}
    return f"sidecar~{metadata.get('name')}.{metadata.get('namespace')}"


Account = tuple[str, str]  # (namespace, service account): what a pod runs as, what its token proves


@dataclass(frozen=True)
class PodClaim:
    """An injected pod's side-car as the workload it says it serves (its service label), the
    service account the pod runs as, and the one entitled to that workload's identity."""

    service: str
    account: Account
    entitled: Account | None  # None: no Workload of that name, so nobody
    uid: str = ""  # the pod's metadata.uid: a token bound to an earlier pod of the same name is not its

    @property
    def refusal(self) -> str | None:
        """Why the pod may not carry the service's identity, or None when it may."""
        namespace, account = self.account
        if self.entitled is None:
            return (
                f"labelled as service {self.service!r}, which has no Workload: no service account may carry "
                f"its identity (create the Workload, and run its pods as service account {self.service!r} "
                "in the Workload's namespace)"
            )
        if self.account != self.entitled:
            return (
                f"labelled as workload {self.service!r}, whose identity belongs to service account "
                f"{self.entitled[1]!r} in namespace {self.entitled[0]!r} (the Workload's), but runs as "
                f"service account {account!r} in namespace {namespace!r}"
            )
        return None


def entitled(config: MeshConfig | None, service: str) -> Account | None:
    """Who may carry `service`'s identity: its Workload's service account (`spec.serviceAccount`,
    else the Workload's name) in the Workload object's namespace (`Workload.account`); None when
    there is no such Workload (or it has no namespace)."""
    if config is None:
        return None
    workload = next((w for w in config.of_kind(Workload) if w.name == service), None)
    if workload is None or workload.metadata.namespace is None:
        return None
    return workload.account


def service_of(pod: Mapping[str, Any]) -> str | None:
    """The service a pod says it serves: its `app` label, else `app.kubernetes.io/name`."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return next((str(labels[key]) for key in SERVICE_LABELS if labels.get(key)), None)


def claim_of(pod: Mapping[str, Any], config: MeshConfig | None) -> PodClaim | None:
    """The claim of an injected pod with a service label; None for any other pod."""
    metadata = pod.get("metadata") or {}
    if INJECTED_ANNOTATION not in (metadata.get("annotations") or {}):
        return None
    service = service_of(pod)
    if service is None:
        return None
    account = (str(metadata.get("namespace") or ""), service_account(pod.get("spec") or {}))
    return PodClaim(service, account, entitled(config, service), str(metadata.get("uid") or ""))


def claims(pods: Iterable[Mapping[str, Any]], config: MeshConfig | None) -> dict[str, PodClaim]:
    """{node ID: claim} of every injected pod with a service label."""
    found = ((node_id(pod), claim_of(pod, config)) for pod in pods)
    return {node: claim for node, claim in found if claim is not None}


def proxy_of(pod: Mapping[str, Any], config: MeshConfig | None, ports: ProxyPorts = DEFAULT_PORTS) -> Proxy | str:
    """The side-car Proxy of an injected pod, or why there is none (a sentence)."""
    metadata = pod.get("metadata") or {}
    status = pod.get("status") or {}
    if INJECTED_ANNOTATION not in (metadata.get("annotations") or {}):
        return "not injected"
    claim = claim_of(pod, config)
    if claim is None:
        return f"no service label ({' or '.join(SERVICE_LABELS)})"
    service = claim.service
    if claim.refusal is not None:
        return claim.refusal
    if status.get("phase") in ("Succeeded", "Failed"):
        return f"pod has finished ({status['phase']})"
    if not status.get("podIP"):
        return "no pod IP yet"
    workloads = {w.name: w for w in config.of_kind(Workload)} if config is not None else {}
    app_port = _app_port(pod)
    if app_port is None and service in workloads:
        app_port = workloads[service].spec.port
    if app_port is None:
        return f"no container port and no Workload {service!r} to take the app's port from"
    return Proxy(
        node_id=node_id(pod),
        role=Role.SIDECAR,
        service=str(service),
        address=str(status["podIP"]),
        inbound_port=ports.inbound,
        outbound_port=_outbound_port(pod) or ports.outbound,
        app_port=app_port,
        host_addresses=_own_addresses(status),
    )


def _own_addresses(status: Mapping[str, Any]) -> tuple[str, ...]:
    """The pod's IPs and its node's (`hostIP`, `hostIPs`): what its side-car never forwards to."""
    found = {str(status["podIP"])}
    found.update(str(p["ip"]) for key in ("podIPs", "hostIPs") for p in status.get(key) or [] if p.get("ip"))
    if status.get("hostIP"):
        found.add(str(status["hostIP"]))
    return tuple(sorted(found))


def proxies(
    pods: Iterable[Mapping[str, Any]], config: MeshConfig | None, ports: ProxyPorts = DEFAULT_PORTS
) -> list[Proxy]:
    """The side-car proxies to compile for, sorted by node ID."""
    found = (proxy_of(pod, config, ports) for pod in pods)
    return sorted((p for p in found if isinstance(p, Proxy)), key=lambda p: p.node_id)


def _app_containers(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [c for c in (pod.get("spec") or {}).get("containers") or [] if c.get("name") != PROXY_CONTAINER]


def _outbound_port(pod: Mapping[str, Any]) -> int | None:
    """The loopback port of the first app container's `HTTP_PROXY` (the injector sets every one
    alike), or None when no app container has one."""
    for container in _app_containers(pod):
        for variable in container.get("env") or []:
            if variable.get("name") not in PROXY_ENV or not isinstance(variable.get("value"), str):
                continue
            try:
                url = urlsplit(str(variable["value"]))
                port = url.port
            except ValueError:
                continue
            if url.hostname in LOOPBACK and port:
                return port
    return None


def _app_port(pod: Mapping[str, Any]) -> int | None:
    containers = _app_containers(pod)
    declared = [p for c in containers for p in c.get("ports") or [] if isinstance(p.get("containerPort"), int)]
    tcp = [p for p in declared if p.get("protocol", "TCP") == "TCP"]
    named = [p for p in tcp if p.get("name") == PORT_NAME]
    chosen = (named or tcp or [None])[0]
    return None if chosen is None else int(chosen["containerPort"])


# ---- status -------------------------------------------------------------------------------


def replica_state(pod: Mapping[str, Any]) -> ReplicaState:
    """A pod as a replica: draining once deleted, stopped once finished, ready when its Ready
    condition is true (the kubelet's verdict, which includes the side-car's startup probe)."""
    metadata, status = pod.get("metadata") or {}, pod.get("status") or {}
    if metadata.get("deletionTimestamp"):
        return ReplicaState.DRAINING
    if status.get("phase") in ("Succeeded", "Failed"):
        return ReplicaState.STOPPED
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or [] if isinstance(c, Mapping)}
    return ReplicaState.READY if conditions.get("Ready") == "True" else ReplicaState.STARTING


def metrics_url(pod: Mapping[str, Any], ports: ProxyPorts = DEFAULT_PORTS) -> str | None:
    """Where the side-car of an injected pod serves `/stats/prometheus`: its ready port (the
    proxy container's port `mesh-ready`, else `ports.ready`) at the pod IP; None without an IP."""
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return None
    proxy = [c for c in (pod.get("spec") or {}).get("initContainers") or [] if c.get("name") == PROXY_CONTAINER]
    proxy += [c for c in (pod.get("spec") or {}).get("containers") or [] if c.get("name") == PROXY_CONTAINER]
    declared = [p for c in proxy for p in c.get("ports") or [] if p.get("name") == READY_PORT_NAME]
    port = int(declared[0]["containerPort"]) if declared else ports.ready
    host = f"[{ip}]" if ":" in str(ip) else str(ip)
    return f"http://{host}:{port}"


def _restarts(pod: Mapping[str, Any], container: str) -> int:
    status = pod.get("status") or {}
    statuses = [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
    return sum(int(s.get("restartCount") or 0) for s in statuses if s.get("name") == container)


def replicas(
    pods: Iterable[Mapping[str, Any]], xds: Mapping[str, NodeSync], ports: ProxyPorts = DEFAULT_PORTS
) -> dict[str, list[ReplicaStatus]]:
    """{service: its pods as replicas, by name}: every pod with a service label, its side-car
    (when injected) with its node, ports, metrics URL and restarts, and its xDS sync."""
    out: dict[str, list[ReplicaStatus]] = {}
    for pod in pods:
        metadata = pod.get("metadata") or {}
        labels = metadata.get("labels") or {}
        service = service_of(pod)
        if service is None:
            continue
        sidecar = None
        node = node_id(pod)
        if INJECTED_ANNOTATION in (metadata.get("annotations") or {}):
            sidecar = SidecarProcess(
                None,
                node,
                ports.inbound,
                _outbound_port(pod) or ports.outbound,
                metrics_url(pod, ports) or "",
                "",
                _restarts(pod, PROXY_CONTAINER),
            )
        name = str(metadata.get("name"))
        version = str(labels.get("version") or "v1")
        replica = ReplicaStatus(name, replica_state(pod), version, None, sidecar, xds.get(node) if sidecar else None)
        out.setdefault(service, []).append(replica)
    return {service: sorted(found, key=lambda r: r.name) for service, found in sorted(out.items())}


def replica_names(pods: Iterable[Mapping[str, Any]], ports: ProxyPorts = DEFAULT_PORTS) -> dict[str, str]:
    """{"pod IP:inbound port": pod name}: how callers' ejections name the replica they ejected."""
    out = {}
    for pod in pods:
        ip = (pod.get("status") or {}).get("podIP")
        if ip and INJECTED_ANNOTATION in ((pod.get("metadata") or {}).get("annotations") or {}):
            out[f"{ip}:{ports.inbound}"] = str((pod.get("metadata") or {}).get("name"))
    return out
