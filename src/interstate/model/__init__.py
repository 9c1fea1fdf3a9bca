"""Frozen domain types of the mesh. `KINDS` lists every resource kind the config layer decodes.

To add a kind: write its module (a `Resource` subclass with `references`/`claims`), then add
the class to `KINDS` below. Validation and the index pick it up from there.
"""

from __future__ import annotations

from interstate.model.access_policy import AccessPolicy
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
    for cls in (Mesh, Workload, Gateway, TrafficPolicy, AccessPolicy, TokenPolicy, TrafficSplit, ExternalService)
}

__all__ = [
    "API_VERSION",
    "KINDS",
    "AccessPolicy",
    "ExternalService",
    "Gateway",
    "Mesh",
    "Resource",
    "TokenPolicy",
    "TrafficPolicy",
    "TrafficSplit",
    "Workload",
]
