"""The control-plane core, the same in every mode: identity (CA, SVIDs over SDS, xDS client
authentication), the snapshot builder, cache and ADS server, NACK handling, the audit trail and
the metrics registry (`plane.ControlPlane`); the narrow interface the edges use (`control`); the
typed facts they report (`status`). A mode (standalone, Kubernetes) feeds it a mesh index and the
proxies to serve; it never learns how workloads run.
"""
