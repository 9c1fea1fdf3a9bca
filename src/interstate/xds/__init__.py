"""xDS: immutable snapshots, a per-node cache, and the ADS gRPC server that streams them to Envoy.

Knows nothing of YAML or Kubernetes: it takes compiled resources and serves them.
"""
