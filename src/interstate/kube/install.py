"""What `interstate manifests install` prints for `kubectl apply`: the mesh's objects in a cluster.

Pure: settings in, a list of JSON-able objects out, in the order they may be applied (CRDs and
the namespace first). Today: the namespace, the CustomResourceDefinitions (`kube.crds`), and
the controller's ServiceAccount with least-privilege RBAC: exactly the verbs `kube.controller`
uses (list and watch of pods, EndpointSlices and every mesh kind; patch of the mesh kinds'
status subresources; create of TokenReviews, to check side-cars' tokens; and, in its own
namespace only, get/create/update of the Lease its replicas elect a leader with and get/create of
the Secret holding the mesh CA). The controller Deployment, its Services, the webhooks and the ingress
are to join them (issue 24).
"""

from __future__ import annotations

from typing import Any

from interstate.kube import crds
from interstate.kube.webhook import SYSTEM_NAMESPACE
from interstate.model.base import API_GROUP

CONTROLLER = "interstate-controller"  # its ServiceAccount, ClusterRole and ClusterRoleBinding
LABELS = {"app.kubernetes.io/part-of": "interstate"}


def controller_rules() -> list[dict[str, Any]]:
    """The controller's ClusterRole rules: what it reads and the one thing it creates."""
    return [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
        {
            "apiGroups": [API_GROUP],
            "resources": [crds.plural_of(cls.KIND) for cls in crds.mesh_kinds()],
            "verbs": ["list", "watch"],
        },
        {  # each mesh resource's status: Accepted, or Invalid with why (`kube.accept`)
            "apiGroups": [API_GROUP],
            "resources": [f"{crds.plural_of(cls.KIND)}/status" for cls in crds.mesh_kinds()],
            "verbs": ["patch"],
        },
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
    ]


def controller_rbac(namespace: str = SYSTEM_NAMESPACE) -> list[dict[str, Any]]:
    """The controller's ServiceAccount, its ClusterRole (`controller_rules`) and the binding."""
    metadata = {"name": CONTROLLER, "labels": dict(LABELS)}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {**metadata, "namespace": namespace}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": metadata,
            "rules": controller_rules(),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": metadata,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": CONTROLLER},
            "subjects": [{"kind": "ServiceAccount", "name": CONTROLLER, "namespace": namespace}],
        },
        {  # its replicas' Lease (`kube.lease`) and the mesh CA's Secret (`kube.ca_secret`), its namespace only
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {**metadata, "namespace": namespace},
            "rules": [
                {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]},
                {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create"]},  # the mesh CA's
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {**metadata, "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": CONTROLLER},
            "subjects": [{"kind": "ServiceAccount", "name": CONTROLLER, "namespace": namespace}],
        },
    ]


def manifests(namespace: str = SYSTEM_NAMESPACE) -> list[dict[str, Any]]:
    """Everything `interstate manifests install` prints, in the order to apply it."""
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": dict(LABELS)}}
    return [*crds.crds(), ns, *controller_rbac(namespace)]
