"""Frozen domain types of the mesh. `KINDS` lists every resource kind the config layer decodes.

To add a kind: write its module (a `Resource` subclass with `references`/`claims`), then add
the class to `KINDS` below. Validation and the index pick it up from there. A rule that needs
two kinds at once (an autoscaler's CPU metric needs its workload's CPU request) goes in
`MESH_RULES`: it yields (resource, field, message) and the config layer reports it like any issue.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from interstate.model.access_policy import AccessPolicy
from interstate.model.autoscaler import HorizontalPodAutoscaler, check_cpu_requests
from interstate.model.base import API_VERSION, Resource
from interstate.model.external_service import ExternalService
from interstate.model.gateway import Gateway
from interstate.model.mesh import Mesh
from interstate.model.token_policy import TokenPolicy
from interstate.model.traffic_policy import TrafficPolicy
from interstate.model.traffic_split import TrafficSplit
from interstate.model.workload import Workload

KINDS: dict[tuple[str, str], type[Resource]] = {
    (cls.API_VERSION, cls.KIND): cls
    for cls in (
        Mesh,
        Workload,
        Gateway,
        TrafficPolicy,
        AccessPolicy,
        TokenPolicy,
        TrafficSplit,
        ExternalService,
        HorizontalPodAutoscaler,
    )
}

MeshRule = Callable[[Sequence[Resource]], Iterable[tuple[Resource, str, str]]]
MESH_RULES: tuple[MeshRule, ...] = (check_cpu_requests,)

__all__ = [
    "API_VERSION",
    "KINDS",
    "MESH_RULES",
    "AccessPolicy",
    "ExternalService",
    "Gateway",
    "HorizontalPodAutoscaler",
    "Mesh",
    "MeshRule",
    "Resource",
    "TokenPolicy",
    "TrafficPolicy",
    "TrafficSplit",
    "Workload",
]
