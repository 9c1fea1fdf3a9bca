"""The running mesh's config as rehearsal commands change it: pure functions, config in, config out.

`with_fault` gives a service's TrafficPolicy a `fault` section (creating `<service>-rehearsal`
when it has none) or removes it; `with_split` sets a service's TrafficSplit backends (creating
`<service>-split`), keeping its pin while the pinned backend stays. Called by `standalone.mesh`.
"""

from __future__ import annotations

from interstate.model.base import Metadata
from interstate.model.index import MeshConfig, MeshIndex
from interstate.model.traffic_policy import Destination, Fault, TrafficPolicy, TrafficPolicySpec
from interstate.model.traffic_split import Backend, TrafficSplit, TrafficSplitSpec


def with_fault(config: MeshConfig, service: str, fault: Fault | None) -> MeshConfig:
    policy = MeshIndex(config).traffic_policies.get(service)
    if policy is not None:
        spec = policy.spec.model_copy(update={"fault": fault})
        return config.replace(policy, policy.model_copy(update={"spec": spec}))
    if fault is None:
        return config  # nothing to end
    return config.add(
        TrafficPolicy(
            api_version=TrafficPolicy.API_VERSION,
            kind=TrafficPolicy.KIND,
            metadata=Metadata(name=f"{service}-rehearsal"),
            spec=TrafficPolicySpec(destination=Destination(service=service), fault=fault),
        )
    )


def with_split(config: MeshConfig, service: str, weights: dict[str, int]) -> MeshConfig:
    """Raises pydantic's ValidationError for weights that do not add up to 100."""
    backends = [Backend(service=b, weight=w) for b, w in weights.items()]
    split = MeshIndex(config).traffic_splits.get(service)
    if split is not None:
        pin = split.spec.pin if split.spec.pin and split.spec.pin.backend in weights else None
        spec = TrafficSplitSpec(service=service, backends=backends, pin=pin, sticky_by=split.spec.sticky_by)
        return config.replace(split, split.model_copy(update={"spec": spec}))
    return config.add(
        TrafficSplit(
            api_version=TrafficSplit.API_VERSION,
            kind=TrafficSplit.KIND,
            metadata=Metadata(name=f"{service}-split"),
            spec=TrafficSplitSpec(service=service, backends=backends),
        )
    )
