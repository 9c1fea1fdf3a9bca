"""Kubernetes mode: what a cluster needs from the mesh, built from the same model.

- `autoscale`: HorizontalPodAutoscalers / KEDA ScaledObjects (`interstate manifests autoscale`);
- `crds`: a CustomResourceDefinition per mesh kind (`interstate manifests crds`);
- `inject` (pure) and `bootstrap`: the JSON patch that adds the Envoy side-car to a pod;
- `webhook`: the mutating admission webhook serving `inject` over HTTPS (`interstate webhook`),
  and its MutatingWebhookConfiguration (`interstate manifests webhook`);
- `cluster` (pure): mesh CRs, EndpointSlices and injected Pods -> MeshConfig, Endpoints, Proxies;
- `watch`: list+watch of the kube-apiserver's REST API into in-memory stores;
- `controller`: watch -> cluster -> SnapshotBuilder -> SnapshotCache, debounced.

Standalone mode never imports this package.
"""
