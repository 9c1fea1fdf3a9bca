"""Kubernetes mode: what a cluster needs from the mesh, built from the same model.

- `autoscale`: HorizontalPodAutoscalers / KEDA ScaledObjects (`interstate manifests autoscale`);
- `crds`: a CustomResourceDefinition per mesh kind (`interstate manifests crds`);
- `inject` (pure) and `bootstrap`: the JSON patch that adds the Envoy side-car to a pod;
- `webhook`: the mutating admission webhook serving `inject` over HTTPS (`interstate webhook`),
  and its MutatingWebhookConfiguration (`interstate manifests webhook`).

Nothing here talks to a kube-apiserver yet. Standalone mode never imports this package.
"""
